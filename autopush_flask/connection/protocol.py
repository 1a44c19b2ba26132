"""Parsing client messages and building server messages (SPEC §2.3–§2.12).

Plain functions rather than schemas: they run for every frame of every
client, and each rule maps to one exact reply.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from autopush_flask.db.models import Notification

UAID_PATTERN = re.compile(r"^[0-9a-f]{32}$")
INVALID_UUID = "Invalid UUID specified"
BAD_UUID_FORMAT = "Bad UUID format, use lower case, dashed format"
NACK_CODES = frozenset({301, 302, 303})


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


def is_canonical_uaid(value: Any) -> bool:
    """Only the exact simple form the server issues (SPEC §2.4.1, A.12)."""
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


def error_reply(message_type: str, status: int, reason: str | None = None, channel_id: Any = None) -> dict:
    reply: dict[str, Any] = {"messageType": message_type, "status": status}
    if reason:
        reply["reason"] = reason
    if isinstance(channel_id, str):
        reply["channelID"] = channel_id
    return reply


def notification_message(notification: Notification) -> dict[str, Any]:
    """SPEC §2.7: never TTL, topic or timestamps; data and headers only with a body."""
    message: dict[str, Any] = {
        "messageType": "notification",
        "channelID": notification.channel_id,
        "version": notification.version,
    }
    if notification.data:
        message["data"] = notification.data
        message["headers"] = notification.headers or {}
    return message
