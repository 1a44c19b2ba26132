"""The ``apns`` bridge: release-channel registration data and delivery to iOS devices (docs/protocol.md#bridges)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import httpx

from autopush_flask import urgency
from autopush_flask.config import Settings
from autopush_flask.db import Notification, Storage, User
from autopush_flask.logging import log_fields
from autopush_flask.push_errors import (
    APNS_REFUSED,
    APNS_TIMEOUT,
    APNS_UNREACHABLE,
    BRIDGE_DATA_TOO_LARGE,
    INVALID_APS,
    INVALID_DEVICE_TOKEN,
    NO_SUCH_SUBSCRIPTION,
    UNKNOWN_RELEASE_CHANNEL,
    ErrorKind,
    PushError,
)
from autopush_flask.routers.apns.channel import ApnsChannel
from autopush_flask.routers.apns.client import ApnsClient
from autopush_flask.routers.bridge import (
    UNSENDABLE,
    bridge_data,
    bridge_failure,
    bridge_sent,
    device_gone,
    storable_json,
    unsendable_record,
    valid_token,
)

PLATFORM = "apns"
# apns-priority: 10 sends at once, 5 lets the device wait for a convenient
# moment (power); a sender's very-low and low urgency ask for the latter.
PRIORITY = "10"
POWER_SAVING_PRIORITY = "5"
PUSH_TYPE = "alert"
DEFAULT_APS = {
    "mutable-content": 1,
    "alert": {
        "loc-key": "SentTab.NoTabArrivingNotification.body",
        "title-loc-key": "SentTab.NoTabArrivingNotification.title",
    },
}
# Apple's own aps keys nest three deep (aps → alert → loc-args).
APS_MAX_DEPTH = 8
GONE_REASONS = frozenset({"BadDeviceToken", "Unregistered"})

log = logging.getLogger("autopush.router")


class ApnsRouter:
    """The ``apns`` bridge: registration data for release channels, and delivery."""

    def __init__(
        self, settings: Settings, storage: Storage, metrics: Any, clock: Callable[[], float] = time.time
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._max_data = settings.apns_max_data
        timeout = settings.apns_timeout or None  # 0 means no limit
        self._clients = {
            name: ApnsClient(ApnsChannel.from_config(name, config, clock), timeout)
            for name, config in (settings.apns_channels or {}).items()
        }

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def router_data(self, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``{"token", "rel_channel"}`` plus ``"aps"`` when given (docs/protocol.md#bridge-registration)."""
        token = body.get("token")
        if not valid_token(token):
            raise PushError(INVALID_DEVICE_TOKEN)
        if app_id not in self._clients:
            raise PushError(UNKNOWN_RELEASE_CHANNEL)
        data: dict[str, Any] = {"token": token, "rel_channel": app_id}
        if body.get("aps") is not None:
            aps = _parse_aps(body["aps"])
            if aps is None:
                raise PushError(INVALID_APS)
            data["aps"] = aps
        return data

    def route(self, user: User, notification: Notification) -> str:
        router_data = user.router_data or {}
        token, channel = router_data.get("token"), router_data.get("rel_channel")
        if not token or not channel:
            reason = "no_token" if not token else "no_rel_channel"
            raise self._failure(str(channel or ""), reason, NO_SUCH_SUBSCRIPTION)
        client = self._clients.get(channel)
        if client is None:
            raise self._failure(channel, "invalid_channel", UNKNOWN_RELEASE_CHANNEL)
        try:
            path, body = device_path(token), _payload(notification, router_data.get("aps"))
        except UNSENDABLE as error:
            raise unsendable_record(self._metrics, PLATFORM, channel) from error
        if len(body) > self._max_data:
            raise self._failure(channel, "too_much_data", BRIDGE_DATA_TOO_LARGE, excess=len(body) - self._max_data)
        response = self._post(client, user, path, _headers(client.channel, notification), body)
        if response.status_code == 200:
            return bridge_sent(self._metrics, PLATFORM, channel)
        raise self._refusal(user, channel, response)

    def _post(self, client: ApnsClient, user: User, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        channel = client.channel.name
        try:
            return client.post(path, headers, body)
        except httpx.TimeoutException as error:
            log.warning("APNs timeout", extra=log_fields(error=repr(error), uaid_hash=user.uaid))
            raise self._failure(channel, "timeout", APNS_TIMEOUT) from error
        except httpx.TransportError as error:
            log.warning("APNs unreachable", extra=log_fields(error=repr(error), uaid_hash=user.uaid))
            raise self._failure(channel, "connection_unavailable", APNS_UNREACHABLE) from error

    def _refusal(self, user: User, channel: str, response: httpx.Response) -> PushError:
        """Apple's non-200 answer: the device is gone (410 errno 106), else 502."""
        reason = _reason(response)
        if response.status_code == 410 or reason in GONE_REASONS:
            return device_gone(self._storage, self._metrics, user, PLATFORM, channel)
        log.warning(
            "APNs refused the notification",
            extra=log_fields(status=response.status_code, reason=reason, uaid_hash=user.uaid),
        )
        return self._failure(channel, reason, APNS_REFUSED, answer=reason)

    def _failure(self, channel: str, reason: str, kind: ErrorKind, **details: object) -> PushError:
        return bridge_failure(self._metrics, PLATFORM, channel, reason, kind, **details)


def _headers(channel: ApnsChannel, notification: Notification) -> dict[str, str]:
    """Urgency sets the priority, and a Topic the collapse id (docs/protocol.md#bridges)."""
    headers = {
        "apns-topic": channel.topic,
        "apns-priority": POWER_SAVING_PRIORITY if urgency.is_low(notification.urgency) else PRIORITY,
        "apns-expiration": str(notification.timestamp + notification.ttl),
        "apns-id": str(uuid.uuid4()),
        "apns-push-type": PUSH_TYPE,
        "content-type": "application/json",
    }
    if notification.topic:
        headers["apns-collapse-id"] = notification.topic
    return headers


def _parse_aps(value: Any) -> dict | None:
    """An object, or a string holding one (docs/protocol.md#bridge-registration),
    that can be stored and sent; else ``None``.

    ``aps`` comes from the client: a deep one would otherwise raise
    RecursionError while stored or serialised (a 500), NaN or a lone
    surrogate would fail DynamoDB or the UTF-8 payload of every push.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) and storable_json(value, APS_MAX_DEPTH) else None


def device_path(token: str) -> str:
    return f"/3/device/{quote(token, safe='')}"


def _payload(notification: Notification, stored_aps: Any) -> bytes:
    payload: dict[str, Any] = dict(bridge_data(notification))
    payload["ver"] = notification.version
    aps = _parse_aps(stored_aps) if stored_aps is not None else None
    payload["aps"] = DEFAULT_APS if aps is None else aps
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _reason(response: httpx.Response) -> str:
    try:
        reason = response.json().get("reason")
    except (ValueError, AttributeError):
        reason = None
    return reason if isinstance(reason, str) and reason else f"upstream_{response.status_code}"
