"""``POST /wpush/…``: accept a Web Push message (docs/protocol.md#push, docs/protocol.md#push-response).

The handler reads like docs/protocol.md#push: each step either passes or raises the
``PushError`` the protocol names, in the protocol's order.
"""

from __future__ import annotations

import hmac
import logging
import time
from typing import Any

from flask import Blueprint, Response, request
from werkzeug.datastructures import Headers

from autopush_flask import tracking
from autopush_flask.crypto.base64url import encode_base64url
from autopush_flask.crypto.endpoints import EndpointToken, parse_endpoint_token, vapid_key_hash
from autopush_flask.crypto.keys import InvalidTokenError
from autopush_flask.crypto.vapid import VapidError, VapidResult
from autopush_flask.db import Notification, StorageError, User
from autopush_flask.db.models import WEBPUSH
from autopush_flask.endpoint.body_limits import read_body
from autopush_flask.endpoint.errors import authorization_header
from autopush_flask.endpoint.schemas import PushHeaders, parse_push_headers
from autopush_flask.endpoint.state import EndpointState, endpoint_state
from autopush_flask.logging import log_fields
from autopush_flask.push_errors import (
    ENDPOINT_UNAVAILABLE,
    EXPIRED_ENDPOINT,
    INVALID_ENDPOINT,
    INVALID_VAPID,
    MISSING_AUTHORIZATION,
    NO_SUCH_SUBSCRIPTION,
    PAYLOAD_TOO_LARGE,
    VAPID_KEY_MISMATCH,
    PushError,
)
from autopush_flask.routers.delivery import DIRECT, EXPIRED, STORED, Delivery

BRIDGE_TYPES = ("fcm", "apns", "stub")
LEGACY_DROPPED = "gcm"

webpush = Blueprint("webpush", __name__)
log = logging.getLogger("autopush.endpoint")


@webpush.post("/wpush/<token>")
def push_unversioned(token: str) -> Response:
    """The version segment is optional and means v1 (docs/protocol.md#endpoint-routes)."""
    return push("v1", token)


@webpush.post("/wpush/<api_version>/<token>")
def push(api_version: str, token: str) -> Response:
    state = endpoint_state()  # looked up once: each lookup goes through Flask's context locals
    state.metrics.increment("notification.received")
    subscription = _decrypt_token(state, token, api_version)
    vapid = _check_vapid(state, subscription)
    state.publisher_controls.check(subscription, vapid, state.metrics)  # before any storage read
    user, channels = _load_user(state, subscription.uaid_text)
    _check_subscription(state, user, channels, subscription)
    body = read_body(state.settings.max_data, PAYLOAD_TOO_LARGE)
    headers = parse_push_headers(request.environ, bool(body), state.settings.max_notification_ttl)
    sender = _sender(state, vapid)
    delivery = state.dispatcher.dispatch(user, _notification(subscription, headers, body, sender))
    if user.router_type != WEBPUSH:
        _keep_bridge_record(state, user)
    _count_success(state, delivery, user, vapid, len(body), headers)
    _track(state, delivery, sender)
    return _created(state, delivery.message_id, headers.ttl)


def _decrypt_token(state: EndpointState, token: str, api_version: str) -> EndpointToken:
    try:
        return parse_endpoint_token(state.crypto_keys, token, api_version)
    except InvalidTokenError as error:
        raise PushError(INVALID_ENDPOINT) from error


def _check_vapid(state: EndpointState, subscription: EndpointToken) -> VapidResult | None:
    """VAPID when present (v1) or required (v2), bound to the key for v2 (docs/protocol.md#vapid)."""
    authorization = authorization_header()
    if authorization is None:
        if subscription.key_hash is not None:
            raise PushError(MISSING_AUTHORIZATION)
        return None
    try:
        result = state.vapid.verify(authorization, request.headers.get("Crypto-Key"), state.vapid_audience)
    except VapidError as error:
        state.metrics.increment("notification.auth.error", tags={"error": error.reason})
        raise PushError(INVALID_VAPID, reason=error.reason) from error
    if subscription.key_hash is not None and not _key_matches(subscription.key_hash, result.public_key):
        state.metrics.increment("notification.auth.error", tags={"error": "key_mismatch"})
        raise PushError(VAPID_KEY_MISMATCH)
    _count_vapid(state.metrics, result)
    return result


def _key_matches(expected: bytes, public_key: str) -> bool:
    try:
        return hmac.compare_digest(expected, vapid_key_hash(public_key))
    except ValueError:
        return False


def _count_vapid(metrics: Any, result: VapidResult) -> None:
    metrics.increment("notification.auth", tags={"vapid": result.version, "scheme": result.scheme})
    metrics.increment("notification.auth.ok")
    metrics.increment("updates.vapid.draft02" if result.version == 2 else "updates.vapid.draft01")
    if result.sub_problem:
        metrics.increment("notification.auth.error", tags={"error": result.sub_problem})


def _load_user(state: EndpointState, uaid: str) -> tuple[User, list[str] | None]:
    """The record and, where the store reads both at once, its channels.

    A ``StorageError`` here and below is left to the app's handler, which
    answers 503 errno 201 or 202 (``push_errors.storage_error``).
    """
    user, channels = state.storage.get_user_with_channels(uaid)
    if user is None:
        raise PushError(EXPIRED_ENDPOINT)
    return user, channels


def _check_subscription(
    state: EndpointState, user: User, channels: list[str] | None, subscription: EndpointToken
) -> None:
    """docs/protocol.md#push: the record must be usable and, for webpush, hold the channel."""
    if user.router_type not in (WEBPUSH, *BRIDGE_TYPES):
        if user.router_type == LEGACY_DROPPED:
            state.metrics.increment("notification.bridge.error", tags={"reason": "gcm_kill"})
        raise _dropped_user(state, user.uaid)
    if user.critical_failure:
        raise PushError(ENDPOINT_UNAVAILABLE)
    if user.router_type != WEBPUSH:
        return
    if not state.storage.holds_data_of(user):
        raise _dropped_user(state, user.uaid)
    if channels is None:
        channels = state.storage.get_channels(user)
    if subscription.channel_text not in channels:
        raise PushError(NO_SUCH_SUBSCRIPTION)


def _keep_bridge_record(state: EndpointState, user: User) -> None:
    """A mobile device that still receives keeps its record (a browser refreshes its own at hello)."""
    try:
        state.storage.refresh_user(user)
    except StorageError as error:
        log.info("record refresh failed", extra=log_fields(error=str(error), uaid_hash=user.uaid))


def _dropped_user(state: EndpointState, uaid: str) -> PushError:
    """Delete a record no push can use; the caller raises the 410 errno 106 returned."""
    state.storage.drop_user(uaid)
    state.metrics.increment("updates.drop_user", tags={"errno": 106})
    return PushError(NO_SUCH_SUBSCRIPTION)


def _notification(subscription: EndpointToken, headers: PushHeaders, body: bytes, sender: str | None) -> Notification:
    """The message as accepted; the dispatcher gives it its version."""
    return Notification(
        channel_id=subscription.channel_text,
        version="",
        ttl=headers.ttl,
        timestamp=int(time.time()),
        topic=headers.topic,
        data=encode_base64url(body) if body else None,
        headers=headers.crypto_headers if body else None,
        urgency=headers.urgency,
        sender=sender,
    )


def _count_success(
    state: EndpointState, delivery: Delivery, user: User, vapid: VapidResult | None, size: int, headers: PushHeaders
) -> None:
    destination = delivery.destination
    metrics = state.metrics
    tags = {"destination": destination, "router": user.router_type, "vapid": vapid is not None}
    metrics.increment("notification.message.success", tags=tags)
    if size:
        metrics.increment("notification.message_data", size, tags={"destination": destination})
    if size and headers.crypto_headers:  # a body always comes with its crypto headers
        metrics.increment(f"updates.notification.encoding.{headers.crypto_headers['encoding']}")
    log.debug(
        "Successful delivery" if destination == DIRECT else "Router miss, message stored.",
        extra=log_fields(uaid_hash=user.uaid, message_size=size, message_ttl=headers.ttl, router_key=user.router_type),
    )


DESTINATION_MILESTONES = {DIRECT: tracking.DELIVERED_DIRECT, STORED: tracking.STORED, EXPIRED: tracking.EXPIRED}


def _sender(state: EndpointState, vapid: VapidResult | None) -> str | None:
    """The sender's VAPID ``sub`` domain, only while milestones are tagged with it: it is
    otherwise read by nobody, and would cost bytes in every stored message."""
    if vapid is None or not state.milestones.tracks_senders:
        return None
    return tracking.sender_domain(vapid.claims.get("sub"))


def _track(state: EndpointState, delivery: Delivery, sender: str | None) -> None:
    """Accepted, then where it went (docs/operations.md#delivery-tracking)."""
    milestones = state.milestones
    milestones.milestone(tracking.ACCEPTED, sender)
    milestones.milestone(DESTINATION_MILESTONES[delivery.destination], sender)


class Created(Response):
    """The 201 of a push, whose ``Location`` is a URI already (``EndpointState.location_prefix``).

    werkzeug converts every ``Location`` from an IRI when it writes a response
    (``iri_to_uri``: a URL split, three quotings and an IDNA encoding), which
    was 3 % of the endpoint worker's CPU per push. The rest of what
    ``get_wsgi_headers`` does is for bodies that are not set yet, 1xx, 204 and
    304 answers, none of which this is: the constructor already set
    ``Content-Length``. And werkzeug copies the headers first so that its
    changes stay off the response; with none to make, the response's own
    headers are written as they are.
    """

    def get_wsgi_headers(self, environ: dict) -> Headers:
        return self.headers


def _created(state: EndpointState, message_id: str, ttl: int) -> Response:
    location = state.location_prefix + message_id
    return Created(b"", status=201, headers=[("Location", location), ("TTL", str(ttl))])
