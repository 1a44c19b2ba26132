"""``Session``: one WebSocket client's protocol state, without I/O
(docs/architecture.md#the-session-generators-of-effects).

Every handler is a generator of effects (``effects.py``, ``storage_ops.py``):
the transport performs them and feeds results back, one handler at a time
per session, so no two handlers of a session ever interleave. The protocol
sections each handler implements are named in its docstring. Here are the
entry points the transport calls and the dispatch of client messages; the
parts of the protocol are the mixins ``Session`` is composed of.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, assert_never

from autopush_flask.connection.effects import PingFrame, Send
from autopush_flask.connection.protocol import (
    Ack,
    BroadcastSubscribe,
    ClientMessage,
    Hello,
    Nack,
    Ping,
    ProtocolError,
    Register,
    Rejected,
    Unregister,
    Urgency,
    parse_client_message,
)
from autopush_flask.connection.session.base import (
    CLOSE_ERROR,
    CLOSE_NORMAL,
    CLOSE_PING_ABUSE,
    CLOSE_RESTART,
    CLOSE_UNSUPPORTED,
    CLOSED,
    CONNECTED,
    IDENTIFIED,
    PING_MIN_INTERVAL,
    Effects,
)
from autopush_flask.connection.session.delivery import DeliveryMixin
from autopush_flask.connection.session.drain import DrainMixin
from autopush_flask.connection.session.hello import HelloMixin
from autopush_flask.connection.session.registration import RegistrationMixin
from autopush_flask.connection.session.urgency import UrgencyMixin
from autopush_flask.db import Notification


class Session(HelloMixin, RegistrationMixin, DeliveryMixin, DrainMixin, UrgencyMixin):
    __slots__ = ()

    # ------------------------------------------------------------------
    # Entry points called by the transport

    @property
    def identified(self) -> bool:
        return self.state == IDENTIFIED

    def on_text(self, text: str) -> Effects:
        """Dispatch one text frame.

        docs/protocol.md#session-states, docs/protocol.md#messages, docs/protocol.md#close-codes
        """
        try:
            message = parse_client_message(text)
        except ProtocolError as error:
            yield from self._close(CLOSE_ERROR, str(error))
            return
        if self.state == CONNECTED:
            if isinstance(message, Hello):
                yield from self._hello(message)
            else:
                yield from self._close(CLOSE_ERROR, "expected hello")
            return
        yield from self._dispatch(message)

    def on_binary(self) -> Effects:
        yield from self._close(CLOSE_UNSUPPORTED, "binary frames are not supported")

    def on_hello_timeout(self) -> Effects:
        if self.state == CONNECTED:
            yield from self._close(CLOSE_ERROR, "hello timeout")

    def on_ping_timeout(self) -> Effects:
        """No pong came back for the auto-ping (docs/protocol.md#limits-and-timeouts)."""
        self.disconnect_reason = "ping timeout"
        yield from self._close(CLOSE_ERROR, "no pong")

    def on_notification(self, notification: Notification) -> Effects:
        """A direct notification from ``PUT /push`` (docs/protocol.md#direct-notifications).

        The same version again (a ``PUT /push`` retried after a stale
        keep-alive connection, or after a timeout when the first one did
        arrive) is accepted without a second copy to the client: it is
        already awaiting its ack, or was acked moments ago. One below the
        client's minimum urgency is stored instead (docs/protocol.md#urgency).
        """
        if self.state != IDENTIFIED:
            return
        if self._seen(notification.version):
            return
        if notification.ttl:
            notification = self._with_stamp(notification)
        if self._holds(notification):
            yield from self._hold_direct(notification)
            return
        if notification.ttl:
            self.unacked_direct[notification.version] = notification
        yield from self._send_notification(notification, "Direct")

    def on_check_storage(self) -> Effects:
        """``PUT /notif``: look at storage (docs/protocol.md#put-notif)."""
        if self.state != IDENTIFIED:
            return
        if not self.draining:  # else the drain under way is flagged to look again
            self.ctx.metrics.increment("ua.notification_check")
        yield from self._start_drain()

    def on_evict(self, connected_at: int) -> Effects:
        """``DELETE /notif`` or a newer same-node connection (docs/protocol.md#duplicate-connections)."""
        if self.state != CLOSED and connected_at == self.connected_at:
            self.disconnect_reason = "duplicate"
            yield from self._close(CLOSE_NORMAL, "Terminated duplicate")

    def on_auto_ping(self) -> Effects:
        """Each auto-ping tick: a pending broadcast, else a ping frame.

        docs/protocol.md#broadcast, docs/protocol.md#limits-and-timeouts
        """
        if self.state != IDENTIFIED:
            return
        changes = self._pending_broadcasts()
        if changes:
            yield Send({"messageType": "broadcast", "broadcasts": changes})
        else:
            yield PingFrame()

    def on_shutdown_store(self) -> Effects:
        """The worker stops, first step: store the unacked direct notifications.

        The client stays connected until ``on_shutdown``; an ack meanwhile
        deletes the stored copy.
        """
        self.disconnect_reason = "shutdown"
        yield from self._store_direct((), keep_tracking=True)

    def on_shutdown(self) -> Effects:
        """The worker stops, last step: what is still not stored is given up (counted
        and logged); close with 1012 so the client reconnects elsewhere."""
        self.disconnect_reason = "shutdown"
        self.give_up_unstored("shutdown")
        yield from self._close(CLOSE_RESTART, "server restart")

    def on_disconnect(self, queued: Iterable[Notification] = ()) -> Effects:
        """The socket is gone: re-store unacked direct notifications (docs/protocol.md#direct-notifications)."""
        self.state = CLOSED
        yield from self._store_direct(queued)
        self.unacked_direct = {}
        self._log_session()

    # ------------------------------------------------------------------
    # An identified client's messages; ping and broadcasts
    # (docs/protocol.md#ping, docs/protocol.md#broadcast, docs/protocol.md#close-codes)

    def _dispatch(self, message: ClientMessage | None) -> Effects:
        """``None``: an unknown ``messageType``."""
        match message:
            case Hello():
                yield from self._duplicate_hello()
            case Register():
                yield from self._register(message)
            case Unregister():
                yield from self._unregister(message)
            case Ack():
                yield from self._ack(message)
            case Nack():
                self._nack(message)
            case Ping():
                yield from self._ping()
            case BroadcastSubscribe():
                yield from self._broadcast_subscribe(message)
            case Urgency():
                yield from self._set_min_urgency(message)
            case Rejected(reply=reply):
                if reply is not None:
                    yield Send(reply)
            case None:
                yield from self._close(CLOSE_ERROR, "unknown messageType")
            case _:
                assert_never(message)

    def _ping(self) -> Effects:
        now = self.ctx.monotonic()
        if self.last_ping is not None and now - self.last_ping < PING_MIN_INTERVAL:
            yield from self._close(CLOSE_PING_ABUSE, "too many pings")
            return
        self.last_ping = now
        yield Send("{}")

    def _broadcast_subscribe(self, message: BroadcastSubscribe) -> Effects:
        check = self.ctx.broadcasts.subscribe(message.broadcasts)
        changes = {**self._pending_broadcasts(), **check.changed}
        self.broadcast_subs.update(check.subscribed)
        payload: dict[str, Any] = dict(changes)
        if check.errors:
            payload["errors"] = dict(check.errors)
        if payload:
            yield Send({"messageType": "broadcast", "broadcasts": payload})

    def _pending_broadcasts(self) -> dict[str, str]:
        """Changed versions of subscribed broadcasts, marking them as seen."""
        registry = self.ctx.broadcasts
        if not self.broadcast_subs or registry.change_count == self.broadcast_seen:
            return {}
        self.broadcast_seen = registry.change_count
        changes = registry.pending_changes(self.broadcast_subs)
        self.broadcast_subs.update(changes)
        return changes
