"""Delivery to browsers: straight to their connection node, else storage (SPEC §4.8).

A direct notification costs one batched read (router record and channel
list) and one internal HTTP PUT; the message table is written only when the
browser is away.
"""

from __future__ import annotations

import json
import logging
import ssl
import uuid
from typing import Any

from autopush_flask.crypto import CryptoKeys, MessageId
from autopush_flask.db import Notification, Storage, StorageError, User
from autopush_flask.db.models import SortKeyClock
from autopush_flask.endpoint.errors import PushError, storage_error
from autopush_flask.keepalive import HTTPFailure, HTTPTimeout, PoolManager
from autopush_flask.logging import log_fields
from autopush_flask.node_auth import RouterRequestKeys

NODE_POOL_SIZE = 100
STORE_ERRNO = 201  # a failed store is always "back off" (SPEC §7.8)
JSON_HEADERS = [("Content-Type", "application/json")]

log = logging.getLogger("autopush.router")


class MessageStamper:
    """Gives a notification its message id and, unless it has a topic, its sort-key time.

    A stored message must be stamped right before it is written: a stamp
    taken earlier (before trying the connection node) can fall below the
    bookmark of a later message that was stored, delivered and acknowledged
    in between, and the drain would never read it (SPEC §2.15).
    """

    def __init__(self, crypto_keys: CryptoKeys, clock: SortKeyClock) -> None:
        self._keys = crypto_keys
        self._clock = clock

    def stamp(self, uaid: str, notification: Notification) -> None:
        ids = (uuid.UUID(uaid), uuid.UUID(notification.channel_id))
        if notification.topic:
            message_id = MessageId.for_topic(*ids, notification.topic)
        else:
            notification.sortkey_timestamp = self._clock.next()
            message_id = MessageId.for_timestamp(*ids, notification.sortkey_timestamp)
        notification.version = message_id.encode(self._keys)


class NodeUnreachable(Exception):
    """The connection node could not be reached at the network level."""


def node_pool(connect_timeout: float, request_timeout: float, router_ca: str | None = None) -> PoolManager:
    """Pooled keep-alive HTTP to connection nodes, one per worker process.

    This call is on every push's path; see ``keepalive`` for why it does not
    go through urllib3 or requests. https routers are verified against
    ``router_ca`` (a CA bundle path), else the system trust store.
    """
    tls = ssl.create_default_context(cafile=router_ca) if router_ca else None
    return PoolManager(connect_timeout, request_timeout, max_pools=NODE_POOL_SIZE, ssl_context=tls)


class WebPushRouter:
    def __init__(
        self,
        storage: Storage,
        metrics: Any,
        http: PoolManager,
        stamper: MessageStamper,
        router_keys: RouterRequestKeys,
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._http = http
        self._stamper = stamper
        self._router_keys = router_keys

    def route(self, user: User, notification: Notification) -> str:
        """Deliver, discard (TTL 0) or store; returns "Direct", "Expired" or "Stored".

        A stored message is stamped again, so ``notification.version`` is the
        id of what was stored.
        """
        if user.node_id and self._deliver_direct(user, notification):
            return "Direct"
        if notification.ttl == 0:
            self._metrics.increment("notification.message.expired")
            return "Expired"
        self._store(user, notification)
        self._notify_node_after_store(user.uaid)
        return "Stored"

    def _deliver_direct(self, user: User, notification: Notification) -> bool:
        try:
            status = self._put(user.node_id, f"/push/{user.uaid}", _node_payload(notification))
        except NodeUnreachable:
            self._forget_node(user.uaid, user.node_id, user.connected_at)
            return False
        self._metrics.increment("notification.direct.delivery_status", tags={"status": status})
        return status == 200

    def _store(self, user: User, notification: Notification) -> None:
        self._stamper.stamp(user.uaid, notification)
        table = self._storage.message_table_for(user)
        try:
            self._storage.messages(table).save_message(user.uaid, notification)
        except StorageError as error:
            log.warning("store failed", extra=log_fields(error=str(error), uaid_hash=user.uaid))
            raise storage_error(error, STORE_ERRNO) from error
        self._metrics.increment("notification.message.stored", tags={"topic": bool(notification.topic)})

    def _notify_node_after_store(self, uaid: str) -> None:
        """Catch a client that connected while we were storing (SPEC §1.4)."""
        try:
            user = self._storage.router.get_user(uaid)
        except StorageError:
            return  # the message is safely stored
        if user is None:
            self._metrics.increment("updates.client.deleted")
            raise PushError(410, 105, "Endpoint became unavailable during request")
        if user.node_id:
            try:
                self._put(user.node_id, f"/notif/{uaid}", None)
            except NodeUnreachable:
                self._forget_node(uaid, user.node_id, user.connected_at)

    def _put(self, node_id: str, path: str, payload: dict | None) -> int:
        """A signed ``PUT`` to a connection node's router; its status (401: keys disagree)."""
        body = json.dumps(payload).encode() if payload is not None else b""
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
        """Conditional removal; losing the race is fine (SPEC §1.4)."""
        self._metrics.increment("updates.client.host_gone")
        try:
            self._storage.router.remove_node_id(uaid, node_id, connected_at or 0)
        except StorageError as error:
            log.info("node_id removal failed", extra=log_fields(error=str(error), uaid_hash=uaid))


def _node_payload(notification: Notification) -> dict:
    """The body of ``PUT /push`` (SPEC §3.1): data and headers only with a body."""
    payload = {
        "channelID": notification.channel_id,
        "version": notification.version,
        "ttl": notification.ttl,
        "topic": notification.topic,
        "timestamp": notification.timestamp,
    }
    if notification.data:
        payload["data"] = notification.data
        payload["headers"] = notification.headers
    return payload
