"""What FCM and APNs delivery share (docs/protocol.md#bridges), and bridges left unconfigured.

A bridge router turns a notification into a platform message, sends it, and
maps the platform's answer to the protocol's status and errno. When the platform
says the device is gone, the record is deleted and the app server gets 410.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Protocol

from autopush_flask.db import Notification, Storage, StorageError, User
from autopush_flask.logging import log_fields
from autopush_flask.push_errors import (
    NO_SUCH_SUBSCRIPTION,
    UNKNOWN_FCM_APP,
    UNKNOWN_RELEASE_CHANNEL,
    UNSENDABLE_RECORD,
    ErrorKind,
    PushError,
)
from autopush_flask.routers.delivery import DIRECT, Deliverer

TOKEN_PATTERN = r"^[^ ]{8,}$"
# Client JSON kept in a router record must fit DynamoDB (32 levels of nesting
# in all, 38 significant digits, magnitudes 1e-130..1e126) and be sendable as
# UTF-8 later: refused at registration, it can never fail a push.
INTEGER_LIMIT = 10**38
NUMBER_RANGE = (1e-130, 1e126)
# What serialising stored client JSON can raise (json.dumps, quote, str.encode).
UNSENDABLE = (RecursionError, TypeError, ValueError)
UNCONFIGURED = {"fcm": UNKNOWN_FCM_APP, "apns": UNKNOWN_RELEASE_CHANNEL}

log = logging.getLogger("autopush.router")


class BridgeRouter(Deliverer, Protocol):
    """A bridge: registration data validation plus delivery through the platform."""

    def router_data(self, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate a registration/token-update body into stored ``router_data``
        (docs/protocol.md#bridge-registration)."""
        ...


def valid_token(token: Any) -> bool:
    """8+ characters without spaces, and encodable as UTF-8 (no lone surrogates) to be sent at all."""
    return isinstance(token, str) and re.fullmatch(TOKEN_PATTERN, token) is not None and _utf8(token)


def storable_json(value: Any, max_depth: int) -> bool:
    """Whether parsed client JSON can be stored in a record and sent again as-is.

    Walked without recursion, so no nesting depth can raise RecursionError.
    """
    pending = [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (dict, list)):
            if depth > max_depth:
                return False
            if isinstance(item, dict):
                if not all(isinstance(key, str) and key and _utf8(key) for key in item):
                    return False
                item = item.values()
            pending.extend((child, depth + 1) for child in item)
        elif not _storable_scalar(item):
            return False
    return True


def _storable_scalar(value: Any) -> bool:
    if value is None or isinstance(value, bool):
        return True
    if isinstance(value, str):
        return _utf8(value)
    if isinstance(value, int):
        return abs(value) < INTEGER_LIMIT
    if isinstance(value, float):
        low, high = NUMBER_RANGE
        return value == 0 or low <= abs(value) < high  # also refuses NaN and infinities
    return False


def _utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def unsendable_record(metrics: Any, platform: str, app_id: str) -> PushError:
    """A stored record no platform message can be built from: 400, never a 500.

    Registration refuses such data now; records written before (or by other
    servers) can still hold it.
    """
    return bridge_failure(metrics, platform, app_id, "invalid_record", UNSENDABLE_RECORD)


def bridge_data(notification: Notification) -> dict[str, str]:
    """The flat string map every bridged message carries (docs/protocol.md#bridges)."""
    data = {"chid": notification.channel_id}
    if notification.data:
        headers = notification.headers or {}
        data["body"] = notification.data
        data["con"] = headers.get("encoding", "")
        if "encryption" in headers:
            data["enc"] = headers["encryption"]
        if "crypto_key" in headers:
            data["cryptokey"] = headers["crypto_key"]
    return data


def device_gone(storage: Storage, metrics: Any, user: User, platform: str, app_id: str) -> PushError:
    """The platform no longer knows the device: drop the record, answer 410 errno 106."""
    try:
        storage.drop_user(user.uaid)
    except StorageError as error:
        log.warning("drop after device gone failed", extra=log_fields(error=str(error), uaid_hash=user.uaid))
    metrics.increment("updates.drop_user", tags={"errno": 106})
    log.debug("Dropping User", extra=log_fields(code=100, uaid_hash=user.uaid))
    return bridge_failure(metrics, platform, app_id, "unregistered", NO_SUCH_SUBSCRIPTION)


def bridge_failure(
    metrics: Any, platform: str, app_id: str, reason: str, kind: ErrorKind, **details: object
) -> PushError:
    """Count a failed delivery under ``reason`` and return the error for the caller to raise."""
    metrics.increment(
        "notification.bridge.error",
        tags={"platform": platform, "app_id": app_id, "reason": reason, "error": kind.status, "errno": kind.errno},
    )
    return PushError(kind, **details)


def bridge_sent(metrics: Any, platform: str, app_id: str) -> str:
    """Count a delivery; the endpoint counts the payload bytes for every router."""
    metrics.increment("notification.bridge.sent", tags={"platform": platform, "app_id": app_id})
    return DIRECT


class UnconfiguredBridge:
    """A router type whose platform has no credentials on this node (docs/protocol.md#bridges)."""

    def __init__(self, router_type: str) -> None:
        self._refusal = UNCONFIGURED[router_type]

    def route(self, user: User, notification: Notification) -> str:
        raise PushError(self._refusal)
