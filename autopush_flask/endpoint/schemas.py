"""Request and response schemas of the public API.

The same schemas validate requests and generate ``/openapi.json``. A field
that fails raises ``PushError`` with the protocol's status and errno at once, so
the first failure in declaration order (the docs/protocol.md#push order) decides.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from typing import Any

from marshmallow import EXCLUDE, Schema, fields, missing, validate

from autopush_flask import urgency
from autopush_flask.crypto.crypto_key_header import parse_crypto_params
from autopush_flask.push_errors import (
    AES128GCM_WITH_KEYS,
    AESGCM_WITHOUT_DH,
    AESGCM_WITHOUT_SALT,
    INVALID_TOPIC,
    INVALID_TTL,
    INVALID_URGENCY,
    MISSING_TTL,
    NEGATIVE_TTL,
    UNKNOWN_ENCODING,
    UNPARSEABLE_ENCODING,
    PushError,
)

SIGNED_INTEGER = re.compile(r"^[+-]?[0-9]+$")
BASE64URL_VALUE = re.compile(r"^[0-9A-Za-z_-]+=*$")
TRAILING_PADDING = re.compile(r"=+(?=[,;]|$)")
TOPIC_MAX_LENGTH = 32
MAX_TTL_DIGITS = 18
CURRENT_ENCODING = "aes128gcm"
LEGACY_ENCODING = "aesgcm"


class TTLField(fields.Field):
    """``TTL``: an optionally signed decimal integer, never negative (docs/protocol.md#push-headers)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        text = str(value).strip()
        if not SIGNED_INTEGER.match(text):
            raise PushError(INVALID_TTL)
        if text.startswith("-") and text.strip("-0"):
            raise PushError(NEGATIVE_TTL)
        digits = text.lstrip("+-").lstrip("0") or "0"
        # Past the cap every value means the same; never hand int() thousands of digits.
        return int(digits) if len(digits) <= MAX_TTL_DIGITS else sys.maxsize


class TopicField(fields.String):
    """``Topic``: up to 32 base64url characters (docs/protocol.md#push-headers)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        topic = str(value)
        if len(topic) > TOPIC_MAX_LENGTH or not BASE64URL_VALUE.match(topic):
            raise PushError(INVALID_TOPIC)
        return topic


class UrgencyField(fields.String):
    """``Urgency``: one of the four levels, any case (docs/protocol.md#urgency)."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        level = urgency.parse(str(value))
        if level is None:
            raise PushError(INVALID_URGENCY)
        return level


class PushHeadersSchema(Schema):
    """The headers of ``POST /wpush/…`` an application server sends."""

    class Meta:
        unknown = EXCLUDE

    ttl = TTLField(
        data_key="TTL",
        required=True,
        metadata={"description": "Seconds to keep the message (0 = deliver now or never); capped.", "type": "integer"},
    )
    topic = TopicField(
        data_key="Topic",
        load_default=None,
        metadata={
            "description": "Replaces an undelivered message with the same topic.",
            "maxLength": TOPIC_MAX_LENGTH,
            "pattern": BASE64URL_VALUE.pattern,
        },
    )
    urgency = UrgencyField(
        data_key="Urgency",
        load_default=None,
        metadata={
            "description": "very-low, low, normal (the default) or high. A browser may ask for nothing below "
            "a level: the message is then kept until it lowers its minimum. Bridges map it to their priority.",
            "enum": list(urgency.LEVELS),
        },
    )
    content_encoding = fields.String(
        data_key="Content-Encoding",
        load_default=None,
        metadata={"description": "Required with a body: aes128gcm (RFC 8291) or aesgcm (legacy)."},
    )
    encryption = fields.String(
        data_key="Encryption",
        load_default=None,
        metadata={"description": "aesgcm only: salt=…"},
    )
    crypto_key = fields.String(
        data_key="Crypto-Key",
        load_default=None,
        metadata={"description": "aesgcm: dh=…; VAPID draft-01: p256ecdsa=…"},
    )
    authorization = fields.String(
        data_key="Authorization",
        load_default=None,
        metadata={
            "description": "VAPID: 'vapid t=<JWT>, k=<key>' (or 'WebPush <JWT>' with Crypto-Key p256ecdsa). "
            "Required for /wpush/v2/."
        },
    )

    def load_headers(self, headers: dict[str, str]) -> dict[str, Any]:
        """The fields of ``headers`` (keyed by header name), loaded one by one in
        declaration order: the first failure raises its ``PushError``.

        What ``load`` would give, with ``TTL`` required first: every field
        here raises at once instead of collecting errors, and there is no
        other hook, so ``load``'s machinery around the fields (hooks, error
        store, unknown keys) had nothing to do but was 3 % of the endpoint's
        instructions per push (tests/unit/test_push_headers.py).
        """
        if "TTL" not in headers:
            raise PushError(MISSING_TTL)
        return {
            name: field.deserialize(headers.get(field.data_key or name, missing)) for name, field in self.fields.items()
        }


class PushPathSchema(Schema):
    api_version = fields.String(
        validate=validate.OneOf(["v1", "v2"]),
        metadata={"description": "v2 endpoints are bound to a VAPID key"},
    )
    token = fields.String(metadata={"description": "Opaque endpoint token"})


class MessageIdPathSchema(Schema):
    message_id = fields.String(metadata={"description": "The id from a push response's Location"})


class SubscriptionSchema(Schema):
    """Optional fields of a bridge registration or new-subscription body (docs/protocol.md#bridge-registration)."""

    class Meta:
        unknown = EXCLUDE

    channelID = fields.UUID(load_default=None, metadata={"description": "Chosen CHID; random when absent"})  # noqa: N815
    key = fields.String(load_default=None, metadata={"description": "VAPID public key: the endpoint becomes v2"})


class RegistrationSchema(SubscriptionSchema):
    """A bridge registration or token update body (docs/protocol.md#bridge-registration);
    the router validates ``token``."""

    token = fields.String(required=True, metadata={"description": "Device token: 8+ characters, no spaces"})
    aps = fields.Raw(load_default=None, metadata={"description": "APNs only: aps object (or JSON text)"})


class BridgePathSchema(Schema):
    router_type = fields.String(metadata={"description": "fcm, apns, or stub where AUTOPUSH_STUB_ROUTER is on"})
    app_id = fields.String(metadata={"description": "FCM app id, APNs release channel or stub outcome"})
    uaid = fields.String(metadata={"description": "UAID (any UUID spelling)"})
    chid = fields.String(metadata={"description": "Channel id (any UUID spelling)"})


class ErrorSchema(Schema):
    """The body of every error response (docs/protocol.md#error-responses)."""

    code = fields.Integer(required=True)
    errno = fields.Integer(allow_none=True, required=True)
    error = fields.String(required=True)
    message = fields.String(required=True)
    more_info = fields.String(required=True)


@dataclass(frozen=True)
class PushHeaders:
    ttl: int
    topic: str | None
    crypto_headers: dict[str, str] | None
    urgency: str | None = None


PUSH_HEADERS = PushHeadersSchema()


def parse_push_headers(environ: dict[str, Any], has_body: bool, max_ttl: int) -> PushHeaders:
    """Validate TTL, Topic, Urgency and, with a body, the encoding headers (docs/protocol.md#push-headers).

    Read from the WSGI environ, where the server put them (a repeated header
    joined with commas): what werkzeug's request headers would give, without
    the lookup object it builds for each name.
    """
    values = PUSH_HEADERS.load_headers({name: environ[key] for name, key in _HEADER_ENVIRON if key in environ})
    crypto_headers = _crypto_headers(values) if has_body else None
    return PushHeaders(min(values["ttl"], max_ttl), values["topic"], crypto_headers, values["urgency"])


_HEADER_ENVIRON = [
    (name, "HTTP_" + name.upper().replace("-", "_"))
    for name in (field.data_key or key for key, field in PUSH_HEADERS.fields.items())
]


def _params(header: str | None) -> list[dict[str, str]] | None:
    if header is None:
        return None
    try:
        return parse_crypto_params(header)
    except ValueError as error:
        raise PushError(UNPARSEABLE_ENCODING, error=error) from error


def _has(sections: list[dict[str, str]] | None, name: str) -> bool:
    return any(name in section for section in sections or [])


def _base64url_param(sections: list[dict[str, str]] | None, name: str) -> bool:
    values = [section[name] for section in sections or [] if name in section]
    return bool(values) and all(BASE64URL_VALUE.match(value) for value in values)


def _crypto_headers(values: dict) -> dict[str, str]:
    encoding = (values["content_encoding"] or "").strip().lower()
    encryption, crypto_key = _params(values["encryption"]), _params(values["crypto_key"])
    if encoding == CURRENT_ENCODING:
        if _has(encryption, "salt") or _has(crypto_key, "dh"):
            raise PushError(AES128GCM_WITH_KEYS)
    elif encoding == LEGACY_ENCODING:
        if not _base64url_param(encryption, "salt"):
            raise PushError(AESGCM_WITHOUT_SALT)
        if crypto_key is not None and not _base64url_param(crypto_key, "dh"):
            raise PushError(AESGCM_WITHOUT_DH)
    else:
        raise PushError(UNKNOWN_ENCODING)
    cleaned = {"encoding": encoding}
    if values["encryption"] is not None:
        cleaned["encryption"] = clean_crypto_header(values["encryption"])
    if values["crypto_key"] is not None:
        cleaned["crypto_key"] = clean_crypto_header(values["crypto_key"])
    return cleaned


def clean_crypto_header(value: str) -> str:
    """Drop quotes and trailing padding before storing/forwarding (docs/protocol.md#push-headers)."""
    return TRAILING_PADDING.sub("", value.replace('"', ""))
