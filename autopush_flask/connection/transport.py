"""The thin loop between a WebSocket and its session (docs/architecture.md#the-session-generators-of-effects).

One greenlet per client reads frames; node API requests and timers reach the
session from their own greenlets. A per-client lock makes sure only one
handler of a session runs at a time, so the session needs no locking.

No client can hold up another one: every write has a deadline
(``PushWebSocket.send_frame``), the node's timer never waits for a client's
lock (``tick``), and a client sending without pause yields to the others
after each message.

A client's timer duties are filed in the node's timer wheel (``timers.py``)
at the time of the next one; the client files itself again whenever that
time moves outside a visit (identified, ping sent).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol, cast

import gevent
from gevent.lock import Semaphore
from geventwebsocket.exceptions import WebSocketError

from autopush_flask.config import Settings
from autopush_flask.connection import greenlets
from autopush_flask.connection.effects import (
    Close,
    Identify,
    NodeRequest,
    PingFrame,
    Retry,
    Schedule,
    Send,
    Sleep,
    drive,
)
from autopush_flask.connection.retries import RetryJob, RetryQueue
from autopush_flask.connection.session import NodeContext, Session
from autopush_flask.connection.storage_ops import STORAGE_OPS, StorageOp
from autopush_flask.connection.timers import TimerWheel
from autopush_flask.connection.websocket import MESSAGE_REFUSED, PushWebSocket, SendTimeout
from autopush_flask.db import Notification
from autopush_flask.logging import log_fields

log = logging.getLogger("autopush.connection")

# How long to wait for the client's close frame after sending ours when
# ``AUTOPUSH_CLOSE_HANDSHAKE_TIMEOUT`` is 0. A browser answers within a round
# trip; the clients we close are mostly dead ones, which never answer.
DEFAULT_CLOSE_HANDSHAKE_TIMEOUT = 5.0
# How long ``PUT /push`` waits for a busy client before answering 503 (the
# endpoint then stores the message). Well under the endpoint's request
# timeout (``AUTOPUSH_NODE_REQUEST_TIMEOUT``, 3 s): an endpoint that times out
# takes the node for gone, and a delivery that then still happens is a
# duplicate. It also keeps a stalled client from holding node API requests.
DELIVER_WAIT_SECONDS = 1.0


class ClientHost(Protocol):
    """What a client needs of its node (``node.ConnectionNode``), named here so
    that this module does not import the node: the node owns its clients'
    lifecycle and calls their intent methods; they call back only these."""

    settings: Settings
    ctx: NodeContext
    retries: RetryQueue
    timers: TimerWheel

    def encode(self, payload: dict) -> str: ...

    def call_storage(self, op: StorageOp) -> Any: ...

    def node_request(self, method: str, url: str) -> None: ...

    def add(self, client: ClientConnection) -> None: ...

    def identify(self, client: ClientConnection) -> None: ...

    def unregister(self, client: ClientConnection) -> None: ...


class ClientConnection:
    """One connected client: its socket, session and the lock serialising them.

    Nothing outside this class touches the session: the node and its private
    API ask for what they want through the intent methods (``deliver``,
    ``check_storage``, ``evict``, ``store_unacked``, ``shut_down``), each of
    which runs a session handler under the client's lock.
    """

    __slots__ = (
        "node",
        "ws",
        "session",
        "lock",
        "waiting_direct",
        "ping_sent_at",
        "next_ping_at",
        "hello_deadline",
        "finished",
        "timer_due",
        "timer_slot",
    )

    def __init__(self, node: ClientHost, ws: PushWebSocket, user_agent: str) -> None:
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
        self.timer_due: float | None = None  # filed by the node's timer wheel
        self.timer_slot: int | None = None

    @property
    def connected_at(self) -> int:
        return self.session.connected_at

    @property
    def uaid(self) -> str | None:
        return self.session.uaid

    @property
    def identified(self) -> bool:
        return self.session.identified

    @property
    def has_unacked_direct(self) -> bool:
        return bool(self.session.unacked_direct)

    # ---- the reading loop (the WSGI handler's greenlet)

    def serve(self) -> None:
        self.node.add(self)
        try:
            while True:
                message = self.ws.receive()
                if message is None:
                    break
                if message is MESSAGE_REFUSED:
                    self._await_close_reply()
                elif not self.finished:  # after our close frame, drop messages until the client's
                    self._handle(message)
                # Reading buffered frames and writing replies never blocks, so a
                # client sending without pause would otherwise keep every other
                # greenlet of the worker (clients, timers, node API) waiting.
                gevent.sleep(0)
        finally:
            self._end()

    def _handle(self, message: str | bytes) -> None:
        if isinstance(message, str):
            self.run(self.session.on_text, message)
        else:
            self.run(self.session.on_binary)

    def _end(self) -> None:
        self.node.unregister(self)
        with self.lock:
            self.finished = True
            try:
                drive(self.session.on_disconnect(), self.perform)
            except Exception:  # a dead socket must not break the worker
                log.exception("disconnect handling failed")

    # ---- entry points for other greenlets

    def run(self, handler: Any, *args: Any, wait: float | None = None) -> bool:
        """Run one session handler under the lock; ``False`` if the client is gone
        (or its lock stayed busy for ``wait`` seconds)."""
        if not self.lock.acquire(timeout=wait):
            return False
        try:
            if self.finished:
                return False
            try:
                drive(handler(*args), self.perform)
            except SendTimeout as error:
                log.debug("send timeout", exc_info=error)
                self.session.note_disconnect_reason("send timeout")
                self._abort()
            except (WebSocketError, OSError) as error:
                log.debug("socket error", exc_info=error)
                self._abort()
            except Exception:  # a bug: said once, and only this client pays for it
                log.exception("client handler failed", extra=log_fields(uaid_hash=self.session.uaid or ""))
                self.session.note_disconnect_reason("error")
                self._abort()
            return True
        finally:
            self.lock.release()

    def deliver(self, notification: Notification) -> bool:
        """``PUT /push``: ``False`` (503, the endpoint stores it) when the client is
        leaving, has too many deliveries waiting, too many direct notifications
        unacknowledged, or stays busy (e.g. not reading) for ``DELIVER_WAIT_SECONDS``.

        Unacknowledged ones stay in memory until acked or the client leaves;
        the cap keeps a client that never acks (each ~1.4× the 5630-byte
        ``AUTOPUSH_MAX_DATA``) from growing without bound.
        """
        settings = self.node.settings
        if self.finished or self.waiting_direct >= settings.client_queue_size:
            return False
        if len(self.session.unacked_direct) + self.waiting_direct >= settings.max_unacked_direct:
            return False
        self.waiting_direct += 1
        try:
            return self.run(self.session.on_notification, notification, wait=DELIVER_WAIT_SECONDS)
        finally:
            self.waiting_direct -= 1

    def check_storage(self) -> bool:
        """``PUT /notif``: have the session look at storage, under its lock.

        ``True`` when a drain is under way already (it looks again when it
        is done), ``False`` when a new one starts.
        """
        draining = self.session.draining
        greenlets.spawn(self.run, self.session.on_check_storage)
        return draining

    def evict(self, connected_at: int) -> None:
        """``DELETE /notif`` or a newer connection of the same UAID: close this one
        if it is still the connection of ``connected_at`` (docs/protocol.md#duplicate-connections)."""
        greenlets.spawn(self.run, self.session.on_evict, connected_at)

    def store_unacked(self) -> None:
        """The worker stops, first step: store the unacked direct notifications
        (``Session.on_shutdown_store``); the client stays connected."""
        self.run(self.session.on_shutdown_store)

    def next_duty(self, identified: bool = False) -> float | None:
        """When a timer duty (hello timeout, pong timeout, auto-ping) next falls due; ``None``: never.

        ``identified``: as for an identified client (hello yields ``Identify``
        just before it enters that state).
        """
        if self.finished:
            return None
        if self.hello_deadline is not None and not (identified or self.session.identified):
            return self.hello_deadline
        due = self.next_ping_at
        if self.ping_sent_at is not None and self.ws.last_pong < self.ping_sent_at:
            pong_due = self.ping_sent_at + self.node.settings.auto_ping_timeout
            due = pong_due if due is None else min(due, pong_due)
        return due

    def tick(self, now: float) -> float | None:
        """Timer duties (hello timeout, auto-ping, pong timeout) due at ``now``; when
        the client next needs a visit (``now``: on the next tick; ``None``: never).

        Called by the node's one timer greenlet for the clients whose
        ``next_duty`` has come (``timers.TimerWheel``), once a second at
        most, so it must never block: a due duty runs in a side greenlet,
        and only when the client's lock is free. A client whose lock is held
        (a handler waiting on storage, or writing to a client that stopped
        reading) is looked at again on the next tick; if its hello or pong
        deadline has passed by more than the send deadline meanwhile, it is
        aborted at the socket level, without its lock. A client with a duty
        done is looked at again on the next tick too, as long as it is due.
        """
        if self.finished:
            return None
        settings = self.node.settings
        if self.hello_deadline is not None and not self.session.identified:
            if self._when_due(now - self.hello_deadline, self.session.on_hello_timeout, "hello timeout"):
                return now
            return self.hello_deadline
        if self.ping_sent_at is not None and self.ws.last_pong < self.ping_sent_at:
            late = now - self.ping_sent_at - settings.auto_ping_timeout
            if self._when_due(late, self.session.on_ping_timeout, "ping timeout"):
                return now
            if self.next_ping_at is not None and now >= self.next_ping_at:
                return now  # the next ping waits for this pong: look again each tick until it comes
            return self.next_duty()
        if self.next_ping_at is not None and now >= self.next_ping_at:
            self.next_ping_at = now + settings.auto_ping_interval
            if not self.lock.locked():  # a busy client is evidently alive
                greenlets.spawn(self.run, self.session.on_auto_ping)
        return self.next_ping_at

    def shut_down(self, wait: float) -> None:
        """The worker's last word to this client: close with 1012 (``Session.on_shutdown``).

        A client whose lock stays busy for ``wait`` seconds (a handler stuck
        on storage, a write to a client that stopped reading) has what it
        could not store given up, and its TCP connection dropped.
        """
        if self.run(self.session.on_shutdown, wait=wait):
            return
        if not self.finished:
            self.session.give_up_unstored("shutdown")
            self.session.note_disconnect_reason("shutdown")
            self._abort()

    def _when_due(self, late: float, handler: Any, reason: str) -> bool:
        """Run ``handler`` if its deadline has passed (``late`` >= 0); ``True`` if it had."""
        if late < 0:
            return False
        if not self.lock.locked():
            greenlets.spawn(self.run, handler)
        elif late > self.node.settings.send_timeout:
            self.session.note_disconnect_reason(reason)
            self._abort()
        return True

    # ---- effects

    def perform(self, effect: Any) -> Any:
        if isinstance(effect, STORAGE_OPS):  # the members of StorageOp, which mypy cannot narrow by
            return self.node.call_storage(cast(StorageOp, effect))
        if isinstance(effect, Retry):
            self.node.retries.add(RetryJob(effect))
            return None
        if isinstance(effect, Send):
            payload = effect.payload
            self.ws.send(payload if isinstance(payload, str) else self.node.encode(payload))
        elif isinstance(effect, Close):
            self._close(effect)
        elif isinstance(effect, PingFrame):
            self.ping_sent_at = time.monotonic()
            self.node.timers.schedule(self, self.next_duty())  # the pong's deadline
            self.ws.ping()
        elif isinstance(effect, Identify):
            self.node.identify(self)
            self.node.timers.schedule(self, self.next_duty(identified=True))  # past hello: the auto-ping
        elif isinstance(effect, NodeRequest):
            self.node.node_request(effect.method, effect.url)
        elif isinstance(effect, Sleep):
            gevent.sleep(effect.seconds)
        elif isinstance(effect, Schedule):
            greenlets.spawn_later(effect.delay, self.run, effect.handler)
        return None

    def _close(self, effect: Close) -> None:
        """Send the close frame; the client has the close-handshake timeout to answer.

        The reading greenlet goes on reading until the client's close frame
        arrives (then the connection ends at once) or the timer drops TCP.
        """
        self.ws.close(effect.code, effect.reason.encode())
        self._await_close_reply()

    def _await_close_reply(self) -> None:
        if self.finished:
            return
        self.finished = True
        wait = self.node.settings.close_handshake_timeout or DEFAULT_CLOSE_HANDSHAKE_TIMEOUT
        greenlets.spawn_later(wait, self._abort)

    def _abort(self) -> None:
        """Drop the TCP connection so the reading greenlet ends promptly."""
        self.finished = True
        self.ws.abort()
