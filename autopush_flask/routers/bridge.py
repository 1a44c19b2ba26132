"""What FCM and APNs delivery share (SPEC §6.1), and bridges left unconfigured.

A bridge router turns a notification into a platform message, sends it, and
maps the platform's answer to the SPEC's status and errno. When the platform
says the device is gone, the record is deleted and the app server gets 410.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

from autopush_flask.db import Notification, Storage, StorageError, User
from autopush_flask.endpoint.errors import PushError
from autopush_flask.logging import log_fields

TOKEN_PATTERN = r"^[^ ]{8,}$"
UNCONFIGURED = {
    "fcm": (106, "Unknown FCM app id"),
    "apns": (None, "Unknown release channel"),
}

log = logging.getLogger("autopush.router")


class BridgeRouter(Protocol):
    """A bridge: registration data validation plus delivery."""

    def router_data(self, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Validate a registration/token-update body into stored ``router_data`` (SPEC §5.3)."""
        ...

    def route(self, user: User, notification: Notification) -> str:
        """Deliver through the platform; returns the destination label for metrics."""
        ...


def bridge_data(notification: Notification) -> dict[str, str]:
    """The flat string map every bridged message carries (SPEC §6.1)."""
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
        storage.router.drop_user(user.uaid)
    except StorageError as error:
        log.warning("drop after device gone failed", extra=log_fields(error=str(error), uaid_hash=user.uaid))
    metrics.increment("updates.drop_user", tags={"errno": 106})
    log.debug("Dropping User", extra=log_fields(code=100, uaid_hash=user.uaid))
    bridge_error(metrics, platform, app_id, "unregistered", 410, 106)
    return PushError(410, 106, "No such subscription")


def bridge_error(metrics: Any, platform: str, app_id: str, reason: str, status: int, errno: int | None) -> None:
    metrics.increment(
        "notification.bridge.error",
        tags={"platform": platform, "app_id": app_id, "reason": reason, "error": status, "errno": errno},
    )


def bridge_sent(metrics: Any, platform: str, app_id: str) -> str:
    """Count a delivery; the endpoint counts the payload bytes for every router."""
    metrics.increment("notification.bridge.sent", tags={"platform": platform, "app_id": app_id})
    return "Direct"


class UnconfiguredBridge:
    """A router type whose platform has no credentials on this node (SPEC §6.2, §6.3)."""

    def __init__(self, router_type: str) -> None:
        self.errno, self.message = UNCONFIGURED[router_type]

    def route(self, user: User, notification: Notification) -> str:
        raise PushError(400, self.errno, self.message)
