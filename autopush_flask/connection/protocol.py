"""Parsing client messages and building server messages (docs/protocol.md#messages).

Each client frame becomes one typed value (``Hello``, ``Register``…), so the
session deals with checked fields rather than a dict; a message that is
invalid in itself becomes ``Rejected`` with the exact reply the protocol asks
for. Plain functions rather than schemas: they run for every frame of every
client, and each rule maps to one exact reply.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from autopush_flask import urgency
from autopush_flask.crypto.endpoints import decode_app_server_key
from autopush_flask.db.models import Notification

UAID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
INVALID_UUID = "Invalid UUID specified"
BAD_UUID_FORMAT = "Bad UUID format, use lower case, dashed format"
NACK_CODES = frozenset({301, 302, 303})
# Ack codes a client may send per update (docs/protocol.md#ack): 100 delivered,
# 101 decryption failed, 102 not delivered. Anything else is tagged "other", so
# a client cannot mint metric tag values.
ACK_CODES = frozenset({100, 101, 102})
ACK_CODE_DECRYPTION_FAILED = "101"


class ProtocolError(Exception):
    """The frame breaks the protocol; the session closes with 1011."""


def parse_message(text: str) -> dict[str, Any]:
    """A JSON object, or ``ProtocolError``."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError) as error:  # RecursionError: absurdly deep nesting
        raise ProtocolError("invalid JSON") from error
    if not isinstance(message, dict):
        raise ProtocolError("not a JSON object")
    return message


@dataclass(frozen=True, slots=True)
class Hello:
    """``uaid`` is the one the client sent, when it sent a string."""

    uaid: str | None
    use_webpush: bool
    broadcasts: dict


@dataclass(frozen=True, slots=True)
class Register:
    """A valid register: a dashed lower-case channel id, and the decoded
    application server key (``None``: an unrestricted endpoint)."""

    channel_id: str
    key: bytes | None


@dataclass(frozen=True, slots=True)
class Unregister:
    """``channel_id`` in canonical form; ``sent`` as sent, for the reply."""

    channel_id: str
    sent: str
    code: int


@dataclass(frozen=True, slots=True)
class AckedUpdate:
    """One well-formed update of an ack; ``code`` is already a bounded metric tag (``ack_code_tag``)."""

    channel_id: str
    version: str
    code: str


@dataclass(frozen=True, slots=True)
class Ack:
    """The well-formed updates (possibly none)."""

    updates: tuple[AckedUpdate, ...]


@dataclass(frozen=True, slots=True)
class Nack:
    code: int


@dataclass(frozen=True, slots=True)
class Ping:
    """``{}``."""


@dataclass(frozen=True, slots=True)
class BroadcastSubscribe:
    broadcasts: dict


@dataclass(frozen=True, slots=True)
class Urgency:
    """``{"messageType": "urgency", "min": …}`` with a valid level (docs/protocol.md#urgency)."""

    minimum: str


@dataclass(frozen=True, slots=True)
class Rejected:
    """A message invalid in itself: answered with ``reply``, or ignored (``None``)."""

    reply: dict | None


ClientMessage = Hello | Register | Unregister | Ack | Nack | Ping | BroadcastSubscribe | Urgency | Rejected


def parse_client_message(text: str) -> ClientMessage | None:
    """The typed message; ``None`` for an unknown ``messageType``; ``ProtocolError`` if not a JSON object."""
    message = parse_message(text)
    message_type = message.get("messageType")
    if message_type is None and not message:
        return Ping()
    parse = _PARSERS.get(message_type) if isinstance(message_type, str) else None
    return parse(message) if parse is not None else None


def _hello(message: dict) -> Hello:
    uaid = message.get("uaid")
    return Hello(
        uaid=uaid if isinstance(uaid, str) else None,
        use_webpush=message.get("use_webpush") is True,
        broadcasts=_broadcasts(message),
    )


def _register(message: dict) -> Register | Rejected:
    channel_id = message.get("channelID")
    if not isinstance(channel_id, str):
        return Rejected(error_reply("register", 401))
    problem = register_channel_problem(channel_id)
    if problem:
        return Rejected(error_reply("register", 401, problem, channel_id))
    try:
        key = app_server_key(message.get("key"))
    except ValueError:
        return Rejected(error_reply("register", 400, "Invalid key", channel_id))
    return Register(channel_id, key)


def _unregister(message: dict) -> Unregister | Rejected:
    sent = message.get("channelID")
    if sent is None:
        return Rejected(error_reply("unregister", 401, "Missing ChannelID"))
    parsed = parse_uuid(sent)
    if parsed is None:
        return Rejected(error_reply("unregister", 401, "Invalid ChannelID", sent))
    return Unregister(str(parsed), sent, integer_code(message.get("code"), 200))


def _ack(message: dict) -> Ack | Rejected:
    updates = message.get("updates")
    if not isinstance(updates, list) or not updates:
        return Rejected(None)
    return Ack(
        tuple(
            AckedUpdate(update["channelID"], update["version"], ack_code_tag(update.get("code")))
            for update in updates
            if isinstance(update, dict) and all(isinstance(update.get(key), str) for key in ("channelID", "version"))
        )
    )


def _nack(message: dict) -> Nack | Rejected:
    """Only a nack naming a version counts."""
    if not isinstance(message.get("version"), str):
        return Rejected(None)
    return Nack(nack_tag(integer_code(message.get("code"), 0)))


def _broadcast_subscribe(message: dict) -> BroadcastSubscribe:
    return BroadcastSubscribe(_broadcasts(message))


def _urgency(message: dict) -> Urgency | Rejected:
    minimum = message.get("min")
    level = urgency.parse(minimum) if isinstance(minimum, str) else None
    if level is None:
        return Rejected(error_reply("urgency", 400, "min must be very-low, low, normal or high"))
    return Urgency(level)


def _broadcasts(message: dict) -> dict:
    requested = message.get("broadcasts")
    return requested if isinstance(requested, dict) else {}


_PARSERS: dict[str, Callable[[dict], ClientMessage]] = {
    "hello": _hello,
    "register": _register,
    "unregister": _unregister,
    "ack": _ack,
    "nack": _nack,
    "broadcast_subscribe": _broadcast_subscribe,
    "urgency": _urgency,
}


def app_server_key(key: Any) -> bytes | None:
    """Absent, null or "" mean an unrestricted endpoint; anything else must decode (docs/protocol.md#register)."""
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise ValueError("key must be a string")
    return decode_app_server_key(key)


def is_canonical_uaid(value: Any) -> TypeGuard[str]:
    """Only the exact simple form the server issues (docs/protocol.md#hello, docs/protocol.md#identifiers)."""
    return isinstance(value, str) and UAID_PATTERN.match(value) is not None


def parse_uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def register_channel_problem(value: Any) -> str | None:
    """Why ``channelID`` is unusable for register, or ``None`` when it is fine."""
    parsed = parse_uuid(value)
    if parsed is None:
        return INVALID_UUID
    if str(parsed) != value:
        return BAD_UUID_FORMAT
    return None


def integer_code(value: Any, default: int) -> int:
    """Codes from clients: absent → default, anything not an integer → 0."""
    if value is None:
        return default
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def nack_tag(code: int) -> int:
    return code if code in NACK_CODES else 0


def ack_code_tag(value: Any) -> str:
    """An update's ``code`` as a metric tag: "100"–"102", "none" when absent, "other" for anything else."""
    if value is None:
        return "none"
    if isinstance(value, int) and not isinstance(value, bool) and value in ACK_CODES:
        return str(value)
    return "other"


def error_reply(message_type: str, status: int, reason: str | None = None, channel_id: Any = None) -> dict:
    reply: dict[str, Any] = {"messageType": message_type, "status": status}
    if reason:
        reply["reason"] = reason
    if isinstance(channel_id, str):
        reply["channelID"] = channel_id
    return reply


def notification_message(notification: Notification) -> dict[str, Any]:
    """docs/protocol.md#notification: never TTL, topic or timestamps; data and headers only with a body."""
    message: dict[str, Any] = {
        "messageType": "notification",
        "channelID": notification.channel_id,
        "version": notification.version,
    }
    if notification.data:
        message["data"] = notification.data
        message["headers"] = notification.headers or {}
    return message
