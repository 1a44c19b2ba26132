"""``POST /wpush/…``: accept a Web Push message (SPEC §4.3–§4.9).

The handler reads like SPEC §4.3: each step either passes or raises the
``PushError`` the SPEC names, in the SPEC's order.
"""

from __future__ import annotations

import hmac
import logging
import time

from flask import Blueprint, Response, request

from autopush_flask.crypto import (
    EndpointToken,
    InvalidTokenError,
    VapidError,
    VapidResult,
    encode_base64url,
    parse_endpoint_token,
    vapid_key_hash,
)
from autopush_flask.db import Notification, StorageError, User
from autopush_flask.db.models import WEBPUSH
from autopush_flask.endpoint.body_limits import read_body
from autopush_flask.endpoint.errors import PushError, authorization_header, storage_error, unauthorized
from autopush_flask.endpoint.schemas import PushHeaders, parse_push_headers
from autopush_flask.endpoint.state import endpoint_state
from autopush_flask.logging import log_fields

BRIDGE_TYPES = ("fcm", "apns")
LEGACY_DROPPED = "gcm"

webpush = Blueprint("webpush", __name__)
log = logging.getLogger("autopush.endpoint")


@webpush.post("/wpush/<token>")
def push_unversioned(token: str) -> Response:
    """The version segment is optional and means v1 (SPEC §4.1)."""
    return push("v1", token)


@webpush.post("/wpush/<api_version>/<token>")
def push(api_version: str, token: str) -> Response:
    state = endpoint_state()
    state.metrics.increment("notification.received")
    subscription = _decrypt_token(token, api_version)
    vapid = _check_vapid(subscription)
    user, channels = _load_user(subscription.uaid.hex)
    _check_subscription(user, channels, subscription)
    max_data = state.settings.max_data
    body = read_body(max_data, f"Data payload must be smaller than {max_data} bytes")
    headers = parse_push_headers(request.headers, bool(body), state.settings.max_notification_ttl)
    notification = _notification(subscription, headers, body)
    destination = state.router_for(user).route(user, notification)
    if user.router_type != WEBPUSH:
        _keep_bridge_record(user)
    _count_success(destination, user, vapid, len(body), headers)
    return _created(notification.version, headers.ttl)


def _decrypt_token(token: str, api_version: str) -> EndpointToken:
    try:
        return parse_endpoint_token(endpoint_state().crypto_keys, token, api_version)
    except InvalidTokenError as error:
        raise PushError(404, 102, "Invalid URL endpoint") from error


def _check_vapid(subscription: EndpointToken) -> VapidResult | None:
    """VAPID when present (v1) or required (v2), bound to the key for v2 (SPEC §4.6)."""
    authorization = authorization_header()
    if authorization is None:
        if subscription.key_hash is not None:
            raise unauthorized("Missing Authorization header")
        return None
    state = endpoint_state()
    try:
        result = state.vapid.verify(authorization, request.headers.get("Crypto-Key"), state.vapid_audience)
    except VapidError as error:
        state.metrics.increment("notification.auth.error", tags={"error": error.reason})
        raise unauthorized(f"Invalid authentication: {error.reason}") from error
    if subscription.key_hash is not None and not _key_matches(subscription.key_hash, result.public_key):
        state.metrics.increment("notification.auth.error", tags={"error": "key_mismatch"})
        raise unauthorized("Key mismatch")
    _count_vapid(result)
    return result


def _key_matches(expected: bytes, public_key: str) -> bool:
    try:
        return hmac.compare_digest(expected, vapid_key_hash(public_key))
    except ValueError:
        return False


def _count_vapid(result: VapidResult) -> None:
    metrics = endpoint_state().metrics
    metrics.increment("notification.auth", tags={"vapid": result.version, "scheme": result.scheme})
    metrics.increment("notification.auth.ok")
    metrics.increment("updates.vapid.draft02" if result.version == 2 else "updates.vapid.draft01")
    if result.sub_problem:
        metrics.increment("notification.auth.error", tags={"error": result.sub_problem})


def _load_user(uaid: str) -> tuple[User, list[str] | None]:
    try:
        user, channels = endpoint_state().storage.get_user_with_channels(uaid)
    except StorageError as error:
        raise storage_error(error) from error
    if user is None:
        raise PushError(410, 103, "Expired URL endpoint")
    return user, channels


def _check_subscription(user: User, channels: list[str] | None, subscription: EndpointToken) -> None:
    """SPEC §4.7: the record must be usable and, for webpush, hold the channel."""
    state = endpoint_state()
    if user.router_type not in (WEBPUSH, *BRIDGE_TYPES):
        if user.router_type == LEGACY_DROPPED:
            state.metrics.increment("notification.bridge.error", tags={"reason": "gcm_kill"})
        _drop_user(user.uaid)
    if user.critical_failure:
        raise PushError(410, 105, "Endpoint became unavailable")
    if user.router_type != WEBPUSH:
        return
    if not state.storage.holds_data_of(user):
        _drop_user(user.uaid)
    if channels is None:
        try:
            channels = state.storage.get_channels(user)
        except StorageError as error:
            raise storage_error(error) from error
    if str(subscription.channel_id) not in channels:
        raise PushError(410, 106, "No such subscription")


def _keep_bridge_record(user: User) -> None:
    """A mobile device that still receives keeps its record (a browser refreshes its own at hello)."""
    try:
        endpoint_state().storage.refresh_user(user)
    except StorageError as error:
        log.info("record refresh failed", extra=log_fields(error=str(error), uaid_hash=user.uaid))


def _drop_user(uaid: str) -> None:
    state = endpoint_state()
    try:
        state.storage.drop_user(uaid)
    except StorageError as error:
        raise storage_error(error) from error
    state.metrics.increment("updates.drop_user", tags={"errno": 106})
    raise PushError(410, 106, "No such subscription")


def _notification(subscription: EndpointToken, headers: PushHeaders, body: bytes) -> Notification:
    notification = Notification(
        channel_id=str(subscription.channel_id),
        version="",
        ttl=headers.ttl,
        timestamp=int(time.time()),
        topic=headers.topic,
        data=encode_base64url(body) if body else None,
        headers=headers.crypto_headers if body else None,
    )
    # The one stamp the message keeps, delivered or stored (see ``MessageStamper``).
    endpoint_state().stamper.stamp(subscription.uaid.hex, notification)
    return notification


def _count_success(destination: str, user: User, vapid: VapidResult | None, size: int, headers: PushHeaders) -> None:
    metrics = endpoint_state().metrics
    tags = {"destination": destination, "router": user.router_type, "vapid": vapid is not None}
    metrics.increment("notification.message.success", tags=tags)
    if size:
        metrics.increment("notification.message_data", size, tags={"destination": destination})
        metrics.increment(f"updates.notification.encoding.{headers.crypto_headers['encoding']}")
    log.debug(
        "Successful delivery" if destination == "Direct" else "Router miss, message stored.",
        extra=log_fields(uaid_hash=user.uaid, message_size=size, message_ttl=headers.ttl,
                         router_key=user.router_type),
    )


def _created(message_id: str, ttl: int) -> Response:
    response = Response(b"", status=201)
    response.headers["Location"] = f"{endpoint_state().settings.endpoint_url}/m/{message_id}"
    response.headers["TTL"] = str(ttl)
    return response

