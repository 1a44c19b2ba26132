"""Bridge registration API for mobile clients (docs/protocol.md#bridge-registration):
``/v1/{type}/{app_id}/registration…``.

Checks for authenticated calls run in the protocol's order: router type (400/108),
UAID (410/103), bearer secret (401/109), router record (410/103), then the
call's own validation.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify, request
from marshmallow import ValidationError

from autopush_flask.crypto.bridge_secrets import make_bridge_secret, verify_bridge_secret
from autopush_flask.crypto.endpoints import decode_app_server_key, make_endpoint_url
from autopush_flask.db import User
from autopush_flask.endpoint.body_limits import read_body
from autopush_flask.endpoint.errors import authorization_header
from autopush_flask.endpoint.schemas import SubscriptionSchema
from autopush_flask.endpoint.state import EndpointState, endpoint_state
from autopush_flask.ids import channel_text, uaid_text
from autopush_flask.push_errors import (
    BODY_NOT_AN_OBJECT,
    EXPIRED_ENDPOINT,
    INVALID_AUTHENTICATION,
    INVALID_KEY,
    INVALID_ROUTER_TYPE,
    INVALID_SUBSCRIPTION,
    NO_SUCH_SUBSCRIPTION,
    REQUEST_BODY_TOO_LARGE,
    UAID_COLLISION,
    ErrorKind,
    PushError,
)
from autopush_flask.routers.bridge import BridgeRouter

AUTH_SCHEMES = ("bearer", "webpush")
# A registration body is a device token (FCM's are ~160 characters), a
# channel id, a VAPID key and for APNs an ``aps`` object: well under 8 KiB.
MAX_BODY = 8192
PREFIX = "/v1/<router_type>/<app_id>/registration"

registration = Blueprint("registration", __name__)


SUBSCRIPTION = SubscriptionSchema()


# ---- routes ---------------------------------------------------------------


@registration.post(PREFIX, strict_slashes=False)
def register(router_type: str, app_id: str) -> Response:
    """New registration: a new UAID with one channel (no auth)."""
    state = endpoint_state()
    router = _bridge(router_type)
    body = _json_body(required=True)
    router_data = router.router_data(app_id, body)
    channel_id, key = _subscription_fields(body)
    uaid = uuid.uuid4()
    user = state.storage.new_user(
        uaid_text(uaid), None, _now_ms(), router_type=router_type.lower(), router_data=router_data
    )
    if not state.storage.add_user(user):
        raise PushError(UAID_COLLISION)
    endpoint = _add_channel(state, user, channel_id, key)
    state.metrics.increment("ua.command.register", tags=_client_tags())
    secret = make_bridge_secret(state.settings.auth_keys[0], uaid_text(uaid))
    return jsonify(uaid=str(uaid), channelID=str(channel_id), endpoint=endpoint, secret=secret)


@registration.put(f"{PREFIX}/<uaid>", strict_slashes=False)
def update_token(router_type: str, app_id: str, uaid: str) -> Response:
    router, user = _authenticated(router_type, uaid)
    router_data = router.router_data(app_id, _json_body(required=True))
    if not endpoint_state().storage.update_router_data(user.uaid, router_type.lower(), router_data, _now_ms()):
        raise PushError(EXPIRED_ENDPOINT)
    return jsonify({})


@registration.get(f"{PREFIX}/<uaid>", strict_slashes=False)
def list_channels(router_type: str, app_id: str, uaid: str) -> Response:
    _, user = _authenticated(router_type, uaid)
    state = endpoint_state()
    channels = state.storage.get_channels(user)
    state.metrics.increment("ua.connection.check", tags=_client_tags())
    return jsonify(uaid=str(uuid.UUID(user.uaid)), channelIDs=sorted(channels))


@registration.delete(f"{PREFIX}/<uaid>", strict_slashes=False)
def unregister_uaid(router_type: str, app_id: str, uaid: str) -> Response:
    _, user = _authenticated(router_type, uaid)
    endpoint_state().storage.drop_user(user.uaid)
    return jsonify({})


@registration.post(f"{PREFIX}/<uaid>/subscription", strict_slashes=False)
def new_subscription(router_type: str, app_id: str, uaid: str) -> Response:
    _, user = _authenticated(router_type, uaid)
    channel_id, key = _subscription_fields(_json_body(required=False))
    state = endpoint_state()
    endpoint = _add_channel(state, user, channel_id, key)
    state.metrics.increment("ua.command.register", tags=_client_tags())
    return jsonify(channelID=str(channel_id), endpoint=endpoint)


@registration.delete(f"{PREFIX}/<uaid>/subscription/<chid>", strict_slashes=False)
def unsubscribe(router_type: str, app_id: str, uaid: str, chid: str) -> Response:
    _, user = _authenticated(router_type, uaid)
    channel_id = _parse_uuid(chid, NO_SUCH_SUBSCRIPTION)
    state = endpoint_state()
    if not state.storage.remove_channel(user, channel_text(channel_id)):
        raise PushError(NO_SUCH_SUBSCRIPTION)
    state.metrics.increment("ua.command.unregister", tags=_client_tags())
    return jsonify({})


# ---- the checks, in the protocol's order ----------------------------------------


def _bridge(router_type: str) -> BridgeRouter:
    router = endpoint_state().bridges.get(router_type.lower())
    if router is None:
        raise PushError(INVALID_ROUTER_TYPE)
    return router


def _authenticated(router_type: str, given_uaid: str) -> tuple[BridgeRouter, User]:
    router = _bridge(router_type)
    uaid = _parse_uuid(given_uaid, EXPIRED_ENDPOINT)
    _check_secret(uaid_text(uaid))
    user = endpoint_state().storage.get_user(uaid_text(uaid))
    if user is None:
        raise PushError(EXPIRED_ENDPOINT)
    return router, user


def _check_secret(uaid_hex: str) -> None:
    """``Authorization: Bearer <hex HMAC>``, any configured auth key (docs/protocol.md#bridge-registration)."""
    scheme, _, secret = (authorization_header() or "").strip().partition(" ")
    if scheme.lower() not in AUTH_SCHEMES or not secret.strip():
        raise PushError(INVALID_AUTHENTICATION)
    if not verify_bridge_secret(endpoint_state().settings.auth_keys, uaid_hex, secret.strip()):
        raise PushError(INVALID_AUTHENTICATION)


def _parse_uuid(text: str, malformed: ErrorKind) -> uuid.UUID:
    try:
        return uuid.UUID(text)
    except ValueError as error:
        raise PushError(malformed) from error


def _json_body(required: bool) -> dict[str, Any]:
    raw = read_body(MAX_BODY, REQUEST_BODY_TOO_LARGE)
    if not raw.strip() and not required:
        return {}
    try:
        body = json.loads(raw, parse_constant=_not_json)
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict):
        raise PushError(BODY_NOT_AN_OBJECT)
    return body


def _not_json(constant: str) -> None:
    """Python's json accepts NaN and Infinity; JSON (and DynamoDB) do not."""
    raise ValueError(f"{constant} is not JSON")


def _subscription_fields(body: dict[str, Any]) -> tuple[uuid.UUID, bytes | None]:
    try:
        values = SUBSCRIPTION.load(body)
    except ValidationError as error:
        raise PushError(INVALID_SUBSCRIPTION, messages=error.messages) from error
    key = None
    if values["key"]:
        try:
            key = decode_app_server_key(values["key"])
        except ValueError as error:
            raise PushError(INVALID_KEY) from error
    return values["channelID"] or uuid.uuid4(), key


def _add_channel(state: EndpointState, user: User, channel_id: uuid.UUID, key: bytes | None) -> str:
    state.storage.add_channel(user, channel_text(channel_id))
    return make_endpoint_url(state.crypto_keys, state.settings.endpoint_url, uuid.UUID(user.uaid), channel_id, key)


def _client_tags() -> dict[str, str]:
    return {"user_agent": request.headers.get("User-Agent", "")[:64], "host": request.host}


def _now_ms() -> int:
    return int(time.time() * 1000)
