"""Delivery to browsers: straight to their connection node, else storage (docs/architecture.md#how-a-push-travels).

A direct notification costs one batched read (router record and channel
list) and one internal HTTP PUT; the message table is written only when the
browser is away, or for every message with a TTL when
``AUTOPUSH_DURABLE_DIRECT`` is on (then the node's ack deletes it).

A message keeps the one version it was stamped with when the endpoint
accepted it, whichever way it goes. A ``PUT /push`` that timed out or lost
its answer may still have reached the browser, and the 201's ``Location``
names the message: storing it, or sending it again, under that same version
lets the node and the browser recognise a repeat instead of seeing a second
message.
"""

from __future__ import annotations

import logging
from typing import Any, cast

from autopush_flask import json_codec, urgency
from autopush_flask.db import Notification, Storage, StorageError, User
from autopush_flask.http_client import HTTPFailure, HTTPTimeout, PoolManager
from autopush_flask.logging import log_fields
from autopush_flask.node_auth import RouterRequestKeys
from autopush_flask.push_errors import GONE_DURING_REQUEST, STORE_FAILED, PushError
from autopush_flask.routers.delivery import DIRECT, EXPIRED, STORED

NODE_POOL_SIZE = 100  # connection nodes (origins) a worker keeps a pool for
NODE_CONCURRENCY = 100  # connections to one node at once; more requests wait, within the deadline
JSON_HEADERS = [("Content-Type", "application/json")]
NODE_TOOK_IT = 200

log = logging.getLogger("autopush.router")


class NodeUnreachable(Exception):
    """The connection node could not be reached at the network level."""


def node_pool(connect_timeout: float, request_timeout: float, router_ca: str | None = None) -> PoolManager:
    """Pooled keep-alive HTTP to connection nodes, one per worker process.

    This call is on every push's path (``http_client``; docs/architecture.md#dependency-notes).
    https routers are verified against ``router_ca`` (a CA bundle path), else
    the system trust store. Never through a proxy: node_ids are private
    addresses (docs/operations.md#http-proxies).
    """
    return PoolManager(
        connect_timeout, request_timeout, max_pools=NODE_POOL_SIZE, ca_file=router_ca, concurrency=NODE_CONCURRENCY
    )


class WebPushRouter:
    """The ``webpush`` deliverer: the browser's connection node, else the message table."""

    def __init__(
        self,
        storage: Storage,
        metrics: Any,
        http: PoolManager,
        router_keys: RouterRequestKeys,
        durable: bool = False,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._http = http
        self._router_keys = router_keys
        self._durable = durable

    def route(self, user: User, notification: Notification) -> str:
        """Deliver, discard (TTL 0) or store; returns ``DIRECT``, ``EXPIRED`` or ``STORED``.

        ``notification`` comes stamped and keeps its version. In durable mode
        a message with a TTL is stored first and offered to the node as
        already stored; "Direct" then means the node took it. A message below
        the browser's minimum urgency is held: stored, never offered (a TTL 0
        one is discarded), until the browser lowers its minimum (docs/protocol.md#urgency).
        """
        held = urgency.is_below(notification.urgency, user.urgency)
        durable = self._durable and notification.ttl > 0
        if durable:
            self._store(user, notification)
        offered = bool(user.node_id) and not held
        status = self._offer_to_node(user, notification) if offered else None
        if status == NODE_TOOK_IT:
            return DIRECT
        unreachable = offered and status is None
        if notification.ttl == 0:
            self._forget_if_unreachable(user, unreachable)
            self._metrics.increment("notification.message.expired")
            return EXPIRED
        if not durable:
            self._store(user, notification)
        self._forget_if_unreachable(user, unreachable)
        self._notify_node_after_store(user.uaid, notification)
        return STORED

    def _offer_to_node(self, user: User, notification: Notification) -> int | None:
        """``PUT /push``: the node's status, or ``None`` when it could not be reached.

        The node is forgotten only after the store (``_forget_if_unreachable``),
        so nothing but this request lies between the stamp and the write.
        """
        try:
            # only called for a user with a node_id (``route``)
            status = self._put(cast(str, user.node_id), f"/push/{user.uaid}", _node_payload(notification))
        except NodeUnreachable:
            return None
        self._metrics.increment("notification.direct.delivery_status", tags={"status": status})
        return status

    def _forget_if_unreachable(self, user: User, unreachable: bool) -> None:
        if user.node_id and unreachable:
            self._forget_node(user.uaid, user.node_id, user.connected_at)

    def _store(self, user: User, notification: Notification) -> None:
        """Write the message under the version it was stamped with."""
        try:
            self._storage.save_message(user, notification)
        except StorageError as error:
            log.warning("store failed", extra=log_fields(error=str(error), uaid_hash=user.uaid))
            raise PushError(STORE_FAILED) from error
        notification.stored = True
        self._metrics.increment("notification.message.stored", tags={"topic": bool(notification.topic)})

    def _notify_node_after_store(self, uaid: str, notification: Notification) -> None:
        """Catch a client that connected while we were storing (docs/architecture.md#stored-delivery).

        Raises 410 errno 105 when the record was deleted meanwhile: the
        message is stored for a browser that will never fetch it. A message
        still held by the browser's minimum urgency, as read now, needs no
        check: a browser lowers its minimum before it looks at storage.
        """
        try:
            user = self._storage.get_user(uaid)
        except StorageError:
            return  # the message is safely stored
        if user is None:
            self._metrics.increment("updates.client.deleted")
            raise PushError(GONE_DURING_REQUEST)
        if user.node_id and not urgency.is_below(notification.urgency, user.urgency):
            try:
                self._put(user.node_id, f"/notif/{uaid}", None)
            except NodeUnreachable:
                self._forget_node(uaid, user.node_id, user.connected_at)

    def _put(self, node_id: str, path: str, payload: dict | None) -> int:
        """A signed ``PUT`` to a connection node's router; its status (401: keys disagree)."""
        body = json_codec.encode(payload) if payload is not None else b""
        headers = JSON_HEADERS + self._router_keys.sign("PUT", path, body)
        try:
            response = self._http.request("PUT", node_id + path, headers, body)
        except HTTPTimeout as error:
            self._metrics.increment("error.node.timeout")
            raise NodeUnreachable(str(error)) from error
        except HTTPFailure as error:
            self._metrics.increment("error.node.connect")
            raise NodeUnreachable(str(error)) from error
        return response.status

    def _forget_node(self, uaid: str, node_id: str, connected_at: int | None) -> None:
        """Conditional removal; losing the race is fine (docs/architecture.md#stored-delivery)."""
        self._metrics.increment("updates.client.host_gone")
        try:
            self._storage.remove_node_id(uaid, node_id, connected_at or 0)
        except StorageError as error:
            log.info("node_id removal failed", extra=log_fields(error=str(error), uaid_hash=uaid))


def _node_payload(notification: Notification) -> dict:
    """The body of ``PUT /push`` (docs/protocol.md#put-push): data and headers only with a body.

    ``sortkey_timestamp`` lets a node that stores the message (its browser
    left before acking) keep this version; ``stored`` tells it the message is
    already in the table, to delete on ack rather than store again.
    """
    payload = {
        "channelID": notification.channel_id,
        "version": notification.version,
        "ttl": notification.ttl,
        "topic": notification.topic,
        "timestamp": notification.timestamp,
    }
    if notification.sortkey_timestamp is not None:
        payload["sortkey_timestamp"] = notification.sortkey_timestamp
    if notification.stored:
        payload["stored"] = True
    if notification.urgency:
        payload["urgency"] = notification.urgency
    if notification.sender:
        payload["sender"] = notification.sender
    if notification.data:
        payload["data"] = notification.data
        payload["headers"] = notification.headers
    return payload
