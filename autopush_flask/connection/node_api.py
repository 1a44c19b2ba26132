"""The connection node's private HTTP API (docs/protocol.md#node-api, "the router"), on its router port only.

Endpoint nodes and other connection nodes call these to hand over a
notification, ask a client to check storage, or drop a stale duplicate.

Whoever reaches the port could do the same, so every request passes three
checks, cheapest first, before a handler runs:

1. ``RequestGate`` (WSGI middleware): at most ``AUTOPUSH_ROUTER_MAX_REQUESTS``
   requests in progress per worker; the next one gets 503 at once, which the
   endpoint takes as "store the message".
2. ``refuse_large_bodies`` (the whole API app): a declared body larger than a
   ``PUT /push`` can legitimately be gets 413 before any of it is read. A
   chunked body gets 411: nodes always send ``Content-Length``, and werkzeug
   would silently cut a chunked body at the cap rather than refuse it.
   Whatever the client still sends of a refused body, gevent reads and drops
   in 16 KiB pieces after the answer; it is never held in memory.
3. ``require_signature`` (the API's routes; the health routes stay open):
   the signature of ``node_auth`` is checked from the head alone, then the
   body is read and compared with the hash that was signed (401 otherwise).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.ssl
from flask import Blueprint, Flask, Response, current_app, request
from marshmallow import Schema, ValidationError, fields, validate

from autopush_flask import tracking, urgency
from autopush_flask.admin.workers import WORKER_PATH
from autopush_flask.config import Settings
from autopush_flask.db import Notification
from autopush_flask.ids import canonical_uaid
from autopush_flask.node_auth import RouterAuthError

NODE_KEY = "autopush_node"
AUTH_ERROR_METRIC = "router.auth.error"
REJECTED_METRIC = "router.request.rejected"
# A push body is JSON holding the base64 of at most max_data bytes (4/3 of
# it) plus the channel id, version (a Fernet token of ~200 bytes), topic,
# TTL, timestamp and the encryption headers: 4 KiB covers those with room.
BODY_OVERHEAD_BYTES = 4096
node_api = Blueprint("node_api", __name__)


def max_body_bytes(max_data: int) -> int:
    """The largest API request body a legitimate node sends for ``AUTOPUSH_MAX_DATA``."""
    return max_data * 4 // 3 + BODY_OVERHEAD_BYTES


class RequestGate:
    """WSGI middleware: at most ``limit`` API requests in progress per worker.

    Beyond that a request is answered 503 straight away instead of waiting
    (and holding memory) for a slot. Checking a signature never yields to
    another greenlet, so only requests that are reading a signed body or
    being handled occupy a slot: unsigned floods cannot fill the gate.
    """

    def __init__(self, app: Callable, limit: int, metrics: Any) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.active = 0

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if self.active >= self.limit:
            self.metrics.increment(REJECTED_METRIC, tags={"reason": "busy"})
            body = b"Router busy."
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "text/plain"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        self.active += 1
        try:
            return self.app(environ, start_response)
        finally:
            self.active -= 1


def protect(api_app: Flask, limit: int, max_data: int, metrics: Any) -> None:
    """Install the gate and the body cap on the API app (see the module doc)."""
    api_app.config["MAX_CONTENT_LENGTH"] = max_body_bytes(max_data)
    api_app.before_request(refuse_large_bodies)
    # Flask's documented way to wrap the WSGI app; typeshed sees a method
    api_app.wsgi_app = RequestGate(api_app.wsgi_app, limit, metrics)  # type: ignore[method-assign]


def refuse_large_bodies() -> Response | None:
    if request.content_length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _refuse_unread("length_required", "Content-Length required", 411)
    if (request.content_length or 0) > (request.max_content_length or 0):
        return _refuse_unread("too_large", "Request body too large", 413)
    return None


def _refuse_unread(reason: str, text: str, status: int) -> Response:
    """Refuse before reading the body, and close the connection rather than keep it alive."""
    _node().services.metrics.increment(REJECTED_METRIC, tags={"reason": reason})
    response = _text(text, status)
    response.headers["Connection"] = "close"
    return response


@node_api.before_request
def require_signature() -> Response | None:
    node = _node()
    if not node.settings.router_auth:
        return None
    return _refuse_unsigned(node)


def _refuse_unsigned(node: Any) -> Response | None:
    target = request.path + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
    try:
        signed_sha256 = node.request_keys.verify_head(request.method, target, request.headers)
        node.request_keys.verify_body(signed_sha256, request.get_data())
    except RouterAuthError as error:
        node.services.metrics.increment(AUTH_ERROR_METRIC, tags={"reason": error.reason})
        return _text("Invalid router signature", 401)
    return None


def _node() -> Any:
    return current_app.extensions[NODE_KEY]


def node_api_tls(settings: Settings) -> ssl.SSLContext | None:
    """The router's TLS context when ``AUTOPUSH_ROUTER_SSL_KEY``/``_CERT`` are set.

    Without it a https ``node_id`` would be announced while the port spoke
    plain HTTP, and every direct delivery would fail. gevent's context makes
    the handshakes cooperative even where ``ssl`` was not monkey-patched.
    """
    if not (settings.router_ssl_key and settings.router_ssl_cert):
        return None
    context = gevent.ssl.create_default_context(gevent.ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.router_ssl_cert, settings.router_ssl_key)
    return context


class NotificationSchema(Schema):
    """The body of ``PUT /push/{uaid}`` (docs/protocol.md#put-push)."""

    channelID = fields.UUID(required=True)  # noqa: N815 - wire name
    version = fields.String(required=True, validate=validate.Length(min=1))
    ttl = fields.Integer(load_default=0, validate=validate.Range(min=0))
    topic = fields.String(load_default=None, allow_none=True)
    timestamp = fields.Integer(load_default=0)
    data = fields.String(load_default=None, allow_none=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None, allow_none=True)
    # The endpoint's stamp (timestamp messages), so a copy the node stores
    # keeps the endpoint's version; ``stored``: the endpoint already stored it.
    sortkey_timestamp = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))
    stored = fields.Boolean(load_default=False)
    urgency = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(urgency.LEVELS))
    sender = fields.String(
        load_default=None,
        allow_none=True,
        validate=[validate.Length(max=tracking.SENDER_MAX_LENGTH), validate.Regexp(tracking.DOMAIN)],
    )


NOTIFICATION_SCHEMA = NotificationSchema()


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _client(uaid: str):
    """The identified client for a UAID in either spelling, or ``None``."""
    try:
        canonical = canonical_uaid(uaid)
    except ValueError:
        return None
    client = _node().registry.get(canonical)
    if client is None or not client.identified:
        return None
    return client


NOT_CONNECTED = ("Client not connected.", 404)


@node_api.put("/push/<uaid>")
def push(uaid: str) -> Response:
    client = _client(uaid)
    if client is None:
        return _text(*NOT_CONNECTED)
    try:
        body = NOTIFICATION_SCHEMA.load(json.loads(request.get_data()) or {})
    except (ValueError, RecursionError, TypeError, ValidationError):
        return _text("Invalid notification", 400)
    notification = Notification(
        channel_id=str(body["channelID"]),
        version=body["version"],
        ttl=body["ttl"],
        timestamp=body["timestamp"],
        topic=body["topic"] or None,
        data=body["data"] or None,
        headers=body["headers"],
        sortkey_timestamp=body["sortkey_timestamp"],
        stored=body["stored"],
        urgency=body["urgency"],
        sender=body["sender"],
    )
    if not client.deliver(notification):
        return _text("Client busy.", 503)
    return _text("Client accepted for delivery", 200)


@node_api.put("/notif/<uaid>")
def check_storage(uaid: str) -> Response:
    client = _client(uaid)
    if client is None:
        return _text(*NOT_CONNECTED)
    if client.check_storage():
        return _text("Flagged for Notification check", 202)
    return _text("Notification check started", 200)


@node_api.get(WORKER_PATH)
def admin_worker() -> Response:
    """This worker's part of the admin view (docs/operations.md#admin-view); 404 without one.

    Signed even with ``AUTOPUSH_ROUTER_AUTH=false``: only the admin view asks.
    """
    node = _node()
    if not node.settings.admin_token:
        return _text("Not Found", 404)
    if not node.settings.router_auth and (refused := _refuse_unsigned(node)) is not None:
        return refused
    return Response(json.dumps(node.admin_report()), mimetype="application/json")


@node_api.delete("/notif/<uaid>/<connected_at>")
def drop_duplicate(uaid: str, connected_at: str) -> Response:
    if not connected_at.isdigit():
        return _text("Not Found", 404)
    client = _client(uaid)
    if client is None or client.connected_at != int(connected_at):
        return _text("", 200)
    client.evict(int(connected_at))
    return _text("Terminated duplicate", 200)
