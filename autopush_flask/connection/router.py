"""The private router of a connection node (SPEC §3), on its router port only.

Endpoint nodes and other connection nodes call these to hand over a
notification, ask a client to check storage, or drop a stale duplicate.
"""

from __future__ import annotations

import json
import uuid

import gevent
from flask import Blueprint, Response, current_app, request
from marshmallow import Schema, ValidationError, fields, validate

from autopush_flask.db import Notification

NODE_KEY = "autopush_node"
router = Blueprint("router", __name__)


class NotificationSchema(Schema):
    """The body of ``PUT /push/{uaid}`` (SPEC §3.1)."""

    channelID = fields.UUID(required=True)  # noqa: N815 - wire name
    version = fields.String(required=True, validate=validate.Length(min=1))
    ttl = fields.Integer(load_default=0, validate=validate.Range(min=0))
    topic = fields.String(load_default=None, allow_none=True)
    timestamp = fields.Integer(load_default=0)
    data = fields.String(load_default=None, allow_none=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None, allow_none=True)


NOTIFICATION_SCHEMA = NotificationSchema()


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _client(uaid: str):
    """The identified client for a UAID in either spelling, or ``None``."""
    try:
        canonical = uuid.UUID(uaid).hex
    except ValueError:
        return None
    client = current_app.extensions[NODE_KEY].registry.get(canonical)
    if client is None or not client.session.identified:
        return None
    return client


NOT_CONNECTED = ("Client not connected.", 404)


@router.put("/push/<uaid>")
def push(uaid: str) -> Response:
    client = _client(uaid)
    if client is None:
        return _text(*NOT_CONNECTED)
    try:
        body = NOTIFICATION_SCHEMA.load(json.loads(request.get_data()) or {})
    except (ValueError, RecursionError, TypeError, ValidationError):
        return _text("Invalid notification", 400)
    notification = Notification(
        channel_id=str(body["channelID"]), version=body["version"], ttl=body["ttl"],
        timestamp=body["timestamp"], topic=body["topic"] or None, data=body["data"] or None,
        headers=body["headers"],
    )
    if not client.deliver(notification):
        return _text("Client busy.", 503)
    return _text("Client accepted for delivery", 200)


@router.put("/notif/<uaid>")
def check_storage(uaid: str) -> Response:
    client = _client(uaid)
    if client is None:
        return _text(*NOT_CONNECTED)
    if client.session.draining:
        client.session.check_again = True
        return _text("Flagged for Notification check", 202)
    gevent.spawn(client.run, client.session.on_check_storage)
    return _text("Notification check started", 200)


@router.delete("/notif/<uaid>/<connected_at>")
def drop_duplicate(uaid: str, connected_at: str) -> Response:
    if not connected_at.isdigit():
        return _text("Not Found", 404)
    client = _client(uaid)
    if client is None or client.connected_at != int(connected_at):
        return _text("", 200)
    gevent.spawn(client.run, client.session.on_evict, int(connected_at))
    return _text("Terminated duplicate", 200)
