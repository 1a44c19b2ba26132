"""Push endpoint tokens (docs/protocol.md#push-endpoint-urls): who a push is for, and which key may send it.

A v1 token carries the UAID and channel id; a v2 token also binds the
subscription to the SHA-256 of one application server (VAPID) key.
"""

from __future__ import annotations

import hashlib
import hmac
import uuid
from dataclasses import dataclass

from autopush_flask.crypto.base64url import decode_base64_lenient
from autopush_flask.crypto.keys import CryptoKeys, InvalidTokenError
from autopush_flask.ids import channel_text, uaid_text

V1_PLAINTEXT_LENGTH = 32
V2_PLAINTEXT_LENGTH = 64


@dataclass(frozen=True)
class EndpointToken:
    uaid: uuid.UUID
    channel_id: uuid.UUID
    key_hash: bytes | None  # sha256 of the app server key; None for v1

    @property
    def uaid_text(self) -> str:
        """The UAID as the service writes it (``ids``)."""
        return uaid_text(self.uaid)

    @property
    def channel_text(self) -> str:
        return channel_text(self.channel_id)


def make_endpoint_token(
    keys: CryptoKeys,
    uaid: uuid.UUID,
    channel_id: uuid.UUID,
    app_server_key: bytes | None,
) -> tuple[str, str]:
    """A v2 token binds the subscription to one app server key."""
    plaintext = uaid.bytes + channel_id.bytes
    version = "v1"
    if app_server_key is not None:
        if not app_server_key:
            raise ValueError("empty application server key")
        plaintext += hashlib.sha256(app_server_key).digest()
        version = "v2"
    return version, keys.encrypt(plaintext).rstrip("=")


def make_endpoint_url(
    keys: CryptoKeys,
    endpoint_url: str,
    uaid: uuid.UUID,
    channel_id: uuid.UUID,
    app_server_key: bytes | None,
) -> str:
    """The full URL is what app servers store (endpoints are opaque)."""
    version, token = make_endpoint_token(keys, uaid, channel_id, app_server_key)
    return f"{endpoint_url.rstrip('/')}/wpush/{version}/{token}"


def parse_endpoint_token(keys: CryptoKeys, token: str, api_version: str) -> EndpointToken:
    """Every failure here is the same 404 errno 102, so one exception type."""
    expected = {"v1": V1_PLAINTEXT_LENGTH, "v2": V2_PLAINTEXT_LENGTH}.get(api_version)
    if expected is None:
        raise InvalidTokenError(f"unknown api version {api_version!r}")
    plaintext = keys.decrypt(token)
    if len(plaintext) != expected:
        raise InvalidTokenError(f"{api_version} token has {len(plaintext)} bytes")
    return EndpointToken(
        uaid=uuid.UUID(bytes=plaintext[:16]),
        channel_id=uuid.UUID(bytes=plaintext[16:32]),
        key_hash=plaintext[32:] or None,
    )


def decode_app_server_key(text: str) -> bytes:
    """Firefox sends padded base64url; others may not (docs/protocol.md#register)."""
    key = decode_base64_lenient(text)
    if not key:
        raise ValueError("empty application server key")
    return key


def vapid_key_hash(public_key_text: str) -> bytes:
    """Padded and unpadded spellings of one key must bind the same v2 endpoint."""
    return hashlib.sha256(decode_base64_lenient(public_key_text)).digest()


def key_hash_matches(expected: bytes, public_key_text: str) -> bool:
    """Constant time, so the bound key hash cannot be probed byte by byte."""
    try:
        actual = vapid_key_hash(public_key_text)
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)
