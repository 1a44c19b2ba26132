"""One connection node = one gunicorn worker process (docs/architecture.md#processes).

Holds what all of the worker's clients share: the client table, the
private HTTP API (``node_api``) on ``AUTOPUSH_ROUTER_PORT + slot``, the timers, Megaphone
polling and node-to-node HTTP.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import urlsplit

import gevent
import requests
from gevent.pool import Pool
from gevent.pywsgi import WSGIServer

from autopush_flask.admin import RecentErrors, admin_listener, worker_report
from autopush_flask.connection import greenlets
from autopush_flask.connection.broadcast import BroadcastRegistry
from autopush_flask.connection.megaphone import MegaphonePoller
from autopush_flask.connection.node_api import RouterHandler, node_api_tls
from autopush_flask.connection.registry import ClientRegistry
from autopush_flask.connection.retries import RetryQueue
from autopush_flask.connection.session import NodeContext, SessionLimits
from autopush_flask.connection.storage_ops import StorageOp, run_storage
from autopush_flask.connection.timers import TICK_SECONDS, TimerWheel
from autopush_flask.connection.transport import ClientConnection
from autopush_flask.connection.websocket import PushWebSocket
from autopush_flask.db import StorageError
from autopush_flask.logging import log_fields, uaid_hash_key
from autopush_flask.metrics import prometheus_app
from autopush_flask.node_auth import RouterRequestKeys
from autopush_flask.services import Services
from autopush_flask.tracking import DeliveryTracker

if TYPE_CHECKING:
    from flask import Flask

# Clients whose unacked direct notifications are stored at once during a
# graceful stop: enough to store a few thousand clients a second on a
# healthy table, few enough not to flood a slow one (every other client's
# store would time out together) or open more DynamoDB connections than the
# client keeps (100).
SHUTDOWN_STORE_CONCURRENCY = 32
# Of the stop deadline, what is kept for the 1012 closes after storing.
SHUTDOWN_CLOSE_SECONDS = 2.0
log = logging.getLogger("autopush.connection")


class ConnectionNode:
    def __init__(self, node_services: Services, slot: int = 0) -> None:
        settings = node_services.settings
        self.settings = settings
        self.services = node_services
        self.storage = node_services.storage
        self.api_port = settings.router_port + slot
        self.node_id = settings.node_id(self.api_port)
        self.registry = ClientRegistry()
        self.connections: set[ClientConnection] = set()
        self.timers = TimerWheel(time.monotonic())
        self.broadcasts = BroadcastRegistry()
        self.ctx = NodeContext(
            node_id=self.node_id,
            env=settings.env,
            endpoint_url=settings.endpoint_url,
            msg_limit=settings.msg_limit,
            auto_ping_interval=settings.auto_ping_interval,
            storage=self.storage,
            crypto_keys=node_services.crypto_keys,
            metrics=node_services.metrics,
            broadcasts=self.broadcasts,
            limits=SessionLimits.from_settings(settings),
            bookmark_margin=settings.bookmark_margin,
            tracker=DeliveryTracker(node_services.metrics, settings.sender_tags),
        )
        self.encode = json.JSONEncoder(separators=(",", ":")).encode
        self.http = requests.Session()
        self.request_keys = RouterRequestKeys.from_crypto_keys(node_services.crypto_keys)
        # Built here, at worker boot, so a bad key or certificate stops start-up.
        self._api_tls = node_api_tls(settings)
        self._peer_ca_verify: str | bool = settings.router_ca or True
        self.retries = RetryQueue(
            self.call_storage,
            self.check_storage_of,
            node_services.metrics,
            settings.retry_queue_size,
            tracker=self.ctx.milestones,
        )
        self.stopping = False
        self._api_server: WSGIServer | None = None
        # The admin view (docs/operations.md#admin-view): every worker keeps its recent errors,
        # and with AUTOPUSH_ADMIN_TOKEN every worker offers to serve the view.
        self.slot = slot
        self.recent_errors = RecentErrors(uaid_hash_key(node_services.crypto_keys))
        self.admin = (
            admin_listener(
                settings,
                self.storage,
                node_services.crypto_keys,
                self.request_keys,
                self.http,
                self._peer_ca_verify,
                slot,
                self.admin_report,
            )
            if settings.admin_token
            else None
        )
        # The worker's own Prometheus registry, on AUTOPUSH_METRICS_PORT + slot (docs/operations.md#metrics).
        self.metrics_port = settings.metrics_port + slot
        self._metrics_server: WSGIServer | None = None
        self._greenlets: list[gevent.Greenlet] = []
        node_services.client_count = lambda: len(self.registry)

    def admin_report(self) -> dict[str, Any]:
        """This worker's part of the admin view (``GET /admin/worker``): counts, versions, recent errors."""
        return worker_report(
            self.slot,
            self.node_id,
            len(self.registry),
            len(self.connections),
            self.stopping,
            self.broadcasts.versions,
            self.recent_errors,
        )

    def at_capacity(self) -> bool:
        limit = self.settings.max_connections
        return self.stopping or bool(limit and len(self.connections) >= limit)

    # ---- lifecycle

    def start(self, api_app: Flask, host: str | None = None) -> None:
        """Serve the private API (``node_api``) and start the timers (in the worker, after fork).

        The API listens on ``AUTOPUSH_ROUTER_BIND`` unless ``host`` is given,
        over TLS when ``AUTOPUSH_ROUTER_SSL_KEY``/``_CERT`` are set. With
        Prometheus metrics, the worker's registry is served on
        ``AUTOPUSH_METRICS_BIND:AUTOPUSH_METRICS_PORT + slot``.
        """
        address = (host or self.settings.router_bind, self.api_port)
        tls = {"ssl_context": self._api_tls} if self._api_tls is not None else {}
        self._api_server = WSGIServer(address, api_app, log=None, handler_class=RouterHandler, **tls)
        self._api_server.start()
        metrics_app = prometheus_app(self.services.metrics)
        if metrics_app is not None:
            self._metrics_server = WSGIServer((self.settings.metrics_bind, self.metrics_port), metrics_app, log=None)
            self._metrics_server.start()
        self.recent_errors.attach()
        if self.admin is not None:
            self.admin.start()
        self._greenlets.append(gevent.spawn(self._tick_forever))
        self._greenlets.append(self.retries.start())
        if self.settings.megaphone_api_url:
            poller = MegaphonePoller(
                self.broadcasts,
                self.settings.megaphone_api_url,
                self.settings.megaphone_api_token,
                self.settings.megaphone_poll_interval,
                self.services.metrics,
            )
            self._greenlets.append(poller.start())
        log.info("Connection node started", extra=log_fields(node_id=self.node_id))

    def shutdown(self, timeout: float) -> None:
        """Stop taking work, store every unacked direct notification, close with 1012.

        Everything happens within ``timeout`` seconds, in order: the private API
        stops (no new direct notifications); the clients holding unacked
        direct notifications are stored, ``SHUTDOWN_STORE_CONCURRENCY`` at a
        time, and the retry queue tried once more, until
        ``SHUTDOWN_CLOSE_SECONDS`` before the deadline; then every client is
        closed with 1012. What could not be stored by then is counted
        (``storage.retry.given_up``, reason ``shutdown``) and logged with its
        message ids. Clients are closed after the stores so that their
        reconnections (hellos, drains) do not compete with them for storage.
        """
        deadline = time.monotonic() + timeout
        self.stopping = True
        if self.admin is not None:  # first, so that a sibling takes the admin port over
            self.admin.stop()
        if self._api_server is not None:
            self._api_server.stop(timeout=1)
        clients = list(self.connections)
        store_until = deadline - min(SHUTDOWN_CLOSE_SECONDS, timeout / 4)
        self._store_unacked([c for c in clients if c.has_unacked_direct], store_until)
        self.retries.flush(store_until - time.monotonic())
        closing = [greenlets.spawn(c.shut_down, max(0.0, deadline - time.monotonic())) for c in clients]
        gevent.joinall(closing, timeout=max(0.0, deadline - time.monotonic()))
        gevent.killall(self._greenlets, block=False)
        if self._metrics_server is not None:  # served to the end: the stop's own counts are scraped too
            self._metrics_server.stop(timeout=1)
        log.info("Connection node stopped", extra=log_fields(node_id=self.node_id, clients=len(clients)))
        self.recent_errors.detach()

    def _store_unacked(self, clients: list[ClientConnection], until: float) -> None:
        """Store the clients' unacked direct notifications, a bounded number at a time, until ``until``.

        A store still running then is interrupted: its client keeps the
        notifications as unstored, and ``shut_down`` gives them up.
        """
        pool = Pool(SHUTDOWN_STORE_CONCURRENCY)

        def feed() -> None:
            for client in clients:
                pool.spawn(client.store_unacked)
            pool.join()

        feeder = gevent.spawn(feed)
        feeder.join(timeout=max(0.0, until - time.monotonic()))
        feeder.kill(block=True, timeout=1)
        pool.kill(block=True, timeout=1)

    def _tick_forever(self) -> None:
        """Each second, the timer duties that have fallen due (``timers.TimerWheel``).

        Only the clients with a duty due are visited, so an idle worker's
        timer work does not grow with its clients. Nothing in this loop may
        wait: not for a client (``tick`` hands due duties to side greenlets)
        nor for storage (its periodic duties run in their own greenlet,
        ``services``), or every client of the worker would miss its hello
        and pong deadlines while it waits.
        """
        while True:
            gevent.sleep(TICK_SECONDS)
            self.timers.run(time.monotonic())

    # ---- clients' lifecycle

    def serve_client(self, ws: PushWebSocket, user_agent: str) -> None:
        """Run one client's connection until it ends (in the WSGI handler's greenlet)."""
        ClientConnection(self, ws, user_agent).serve()

    def add(self, connection: ClientConnection) -> None:
        """A client connected (identified or not, it has timer duties and counts against the limit)."""
        self.connections.add(connection)
        self.timers.schedule(connection, connection.next_duty())

    def identify(self, connection: ClientConnection) -> None:
        """Enter an identified client; a displaced duplicate is closed (docs/protocol.md#duplicate-connections)."""
        # Identify follows hello, which set the UAID
        loser = self.registry.register(cast(str, connection.uaid), connection)
        if loser is not None:
            loser.evict(loser.connected_at)

    def unregister(self, connection: ClientConnection) -> None:
        """A client's connection ended: forget it (a newer one of its UAID stays entered)."""
        self.connections.discard(connection)
        self.timers.cancel(connection)
        if connection.uaid:
            self.registry.unregister(connection.uaid, connection)

    # ---- services for sessions

    def call_storage(self, op: StorageOp) -> Any:
        """Run a storage operation in a short-lived greenlet.

        A storage call (encoding, signing, HTTP, retries) runs far deeper
        than anything else a session does. A client's own greenlet lives for
        hours and keeps every page of frame stack it ever touched, so deep
        calls there would stay in each idle client's RSS for good; a
        short-lived greenlet gives those pages back.
        """
        return greenlets.call(run_storage, self.storage, op)

    def check_storage_of(self, uaid: str) -> None:
        """Ask the node now holding ``uaid`` to look at storage (after a retried store landed)."""
        try:
            user = self.storage.get_user(uaid)
        except StorageError:
            return  # stored all the same: the client's next drain finds them
        if user is not None and user.node_id:
            self.node_request("PUT", f"{user.node_id}/notif/{uaid}")

    def node_request(self, method: str, url: str) -> None:
        greenlets.spawn(self._node_request, method, url)

    def _node_request(self, method: str, url: str) -> None:
        """A signed, bodiless request to another node's private API (verified with ``AUTOPUSH_ROUTER_CA``)."""
        timeout = self.settings.node_connect_timeout
        parts = urlsplit(url)
        target = f"{parts.path}?{parts.query}" if parts.query else parts.path
        headers = dict(self.request_keys.sign(method, target))
        try:
            self.http.request(method, url, headers=headers, timeout=(timeout, timeout * 3), verify=self._peer_ca_verify)
        except requests.RequestException as error:
            log.debug("node request failed", extra=log_fields(url=url, error=str(error)))
