"""The thin loop between a WebSocket and its session (DESIGN §4).

One greenlet per client reads frames; router requests and timers reach the
session from their own greenlets. A per-client lock makes sure only one
handler of a session runs at a time, so the session needs no locking.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import gevent
from gevent.lock import Semaphore
from geventwebsocket.exceptions import WebSocketError

from autopush_flask.connection import greenlets
from autopush_flask.connection.effects import (
    Close,
    Db,
    Identify,
    NodeRequest,
    PingFrame,
    Schedule,
    Send,
    Sleep,
    drive,
)
from autopush_flask.connection.session import Session
from autopush_flask.connection.websocket import PushWebSocket
from autopush_flask.db import Notification

if TYPE_CHECKING:
    from autopush_flask.connection.node import ConnectionNode

log = logging.getLogger("autopush.connection")


class ClientConnection:
    """One connected client: its socket, session and the lock serialising them."""

    __slots__ = (
        "node", "ws", "session", "lock", "waiting_direct", "ping_sent_at", "next_ping_at",
        "hello_deadline", "finished",
    )

    def __init__(self, node: ConnectionNode, ws: PushWebSocket, user_agent: str) -> None:
        self.node = node
        self.ws = ws
        self.session = Session(node.ctx, user_agent)
        self.lock = Semaphore()
        self.waiting_direct = 0
        self.ping_sent_at: float | None = None
        now = time.monotonic()
        interval = node.settings.auto_ping_interval
        self.next_ping_at = now + interval if interval else None
        timeout = node.settings.hello_timeout
        self.hello_deadline = now + timeout if timeout else None
        self.finished = False

    @property
    def connected_at(self) -> int:
        return self.session.connected_at

    # ---- the reading loop (the WSGI handler's greenlet)

    def serve(self) -> None:
        self.node.connections.add(self)
        try:
            while not self.finished:
                message = self.ws.receive()
                if message is None:
                    break
                if isinstance(message, str):
                    self.run(self.session.on_text, message)
                else:
                    self.run(self.session.on_binary)
        finally:
            self._end()

    def _end(self) -> None:
        self.node.connections.discard(self)
        if self.session.uaid:
            self.node.registry.unregister(self.session.uaid, self)
        with self.lock:
            self.finished = True
            try:
                drive(self.session.on_disconnect(), self.perform)
            except Exception:  # noqa: BLE001 - a dead socket must not break the worker
                log.exception("disconnect handling failed")

    # ---- entry points for other greenlets

    def run(self, handler: Any, *args: Any) -> bool:
        """Run one session handler under the lock; ``False`` if the client is gone."""
        with self.lock:
            if self.finished:
                return False
            try:
                drive(handler(*args), self.perform)
            except (WebSocketError, OSError) as error:
                log.debug("socket error", exc_info=error)
                self._abort()
            return True

    def deliver(self, notification: Notification) -> bool:
        """``PUT /push``: ``False`` when the queue is full or the client is leaving."""
        if self.finished or self.waiting_direct >= self.node.settings.client_queue_size:
            return False
        self.waiting_direct += 1
        try:
            return self.run(self.session.on_notification, notification)
        finally:
            self.waiting_direct -= 1

    def tick(self, now: float) -> None:
        """Timer duties (hello timeout, auto-ping, pong timeout), once a second."""
        if self.hello_deadline is not None and not self.session.identified:
            if now >= self.hello_deadline:
                self.run(self.session.on_hello_timeout)
            return
        if self.ping_sent_at is not None and self.ws.last_pong < self.ping_sent_at:
            if now - self.ping_sent_at > self.node.settings.auto_ping_timeout:
                self.run(self.session.on_ping_timeout)
            return
        if self.next_ping_at is not None and now >= self.next_ping_at:
            self.next_ping_at = now + self.node.settings.auto_ping_interval
            if not self.lock.locked():
                self.run(self.session.on_auto_ping)

    # ---- effects

    def perform(self, effect: Any) -> Any:
        if isinstance(effect, Db):
            return self.node.call_storage(effect.call)
        if isinstance(effect, Send):
            payload = effect.payload
            self.ws.send(payload if isinstance(payload, str) else self.node.encode(payload))
        elif isinstance(effect, Close):
            self._close(effect)
        elif isinstance(effect, PingFrame):
            self.ping_sent_at = time.monotonic()
            self.ws.ping()
        elif isinstance(effect, Identify):
            self.node.identify(self)
        elif isinstance(effect, NodeRequest):
            self.node.node_request(effect.method, effect.url)
        elif isinstance(effect, Sleep):
            gevent.sleep(effect.seconds)
        elif isinstance(effect, Schedule):
            greenlets.spawn_later(effect.delay, self.run, effect.handler)
        return None

    def _close(self, effect: Close) -> None:
        self.finished = True
        if not self.ws.closed:
            self.ws.close(effect.code, effect.reason.encode())
        self._abort()

    def _abort(self) -> None:
        """Drop the TCP connection so the reading greenlet ends promptly."""
        self.finished = True
        self.ws.closed = True
        handler = getattr(self.ws, "handler", None)
        sock = getattr(handler, "socket", None)
        if sock is not None:
            try:
                sock.shutdown(2)
            except OSError:
                pass
