"""One WebSocket client's protocol state, without I/O (DESIGN §4).

Every handler is a generator of effects (``effects.py``): the transport
performs them and feeds results back, one handler at a time per session, so
no two handlers of a session ever interleave. The SPEC sections each handler
implements are named in its docstring.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Callable, Generator, Iterable
from dataclasses import dataclass
from typing import Any

from autopush_flask.config import Settings
from autopush_flask.connection.broadcast import BroadcastRegistry
from autopush_flask.connection.effects import (
    Close,
    Db,
    Identify,
    NodeRequest,
    PingFrame,
    Schedule,
    Send,
    Sleep,
)
from autopush_flask.connection.protocol import (
    ProtocolError,
    error_reply,
    integer_code,
    is_canonical_uaid,
    nack_tag,
    notification_message,
    parse_message,
    parse_uuid,
    register_channel_problem,
)
from autopush_flask.crypto import CryptoKeys, decode_app_server_key, make_endpoint_url
from autopush_flask.db import Notification, Storage, StorageError, StorageThrottled, User
from autopush_flask.db.models import WEBPUSH, SortKeyClock
from autopush_flask.logging import log_fields

Effects = Generator[Any, Any, None]

PING_MIN_INTERVAL = 45.0
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_ERROR = 1011
CLOSE_RESTART = 1012
CLOSE_PING_ABUSE = 4774
THROTTLED_HELLO_DELAY = (4.0, 8.0)
DRAIN_RETRY_DELAY = (5.0, 60.0)
MIGRATION_RETRY_DELAY = (1.0, 1800.0)
CHECK_AGAIN_DELAY = 1.0
TOO_MANY_CHANNELS = 413
TOO_MANY_REGISTERS = 429

CONNECTED, IDENTIFIED, CLOSED = "connected", "identified", "closed"

log = logging.getLogger("autopush.connection")


@dataclass(frozen=True)
class SessionLimits:
    """What one client may ask of the node (shared by all sessions of a worker)."""

    max_channels: int = 500
    # Registers per minute, in bursts of as many; 0 means no limit.
    register_rate: int = 100

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionLimits:
        return cls(max_channels=settings.max_channels, register_rate=settings.register_rate)


@dataclass
class NodeContext:
    """What every session on one worker shares (one object, not one per client)."""

    node_id: str
    env: str
    endpoint_url: str
    msg_limit: int
    auto_ping_interval: float
    storage: Storage
    crypto_keys: CryptoKeys
    metrics: Any
    broadcasts: BroadcastRegistry
    limits: SessionLimits = dataclasses.field(default_factory=SessionLimits)
    sortkeys: SortKeyClock = dataclasses.field(default_factory=SortKeyClock)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)


@dataclass(slots=True)
class SessionStats:
    """Counters for the ``Session`` log line (SPEC §10.2)."""

    direct_acked: int = 0
    direct_storage: int = 0
    stored_retrieved: int = 0
    stored_acked: int = 0
    nacks: int = 0
    registers: int = 0
    unregisters: int = 0


class Session:
    __slots__ = (
        "ctx", "state", "uaid", "connected_at", "started", "user_agent", "pending_user",
        "message_table", "existing_uaid", "reset_uaid", "rotate", "draining", "check_again",
        "include_topic", "unacked_direct", "unacked_stored", "bookmark", "batch_high",
        "batch_is_timestamp", "sent_from_storage", "last_ping", "broadcast_subs",
        "broadcast_seen", "stats", "disconnect_reason", "register_credit",
    )

    def __init__(self, ctx: NodeContext, user_agent: str = "") -> None:
        self.ctx = ctx
        self.state = CONNECTED
        self.uaid: str | None = None
        self.connected_at = ctx.now_ms()
        self.started = ctx.monotonic()
        self.user_agent = user_agent
        self.pending_user: User | None = None
        self.message_table: str | None = None
        self.existing_uaid = False
        self.reset_uaid = False
        self.rotate = False
        self.draining = False
        self.check_again = False
        self.include_topic = True
        self.unacked_direct: dict[str, Notification] = {}
        self.unacked_stored: dict[str, Notification] = {}
        self.bookmark: int | None = None
        self.batch_high: int | None = None
        self.batch_is_timestamp = False
        self.sent_from_storage = 0
        self.last_ping: float | None = None
        self.broadcast_subs: dict[str, str] = {}
        self.broadcast_seen = 0
        self.stats = SessionStats()
        self.disconnect_reason = ""
        # When the register rate allows the next register (see ``_register_allowed``).
        self.register_credit = 0.0

    # ------------------------------------------------------------------
    # Entry points called by the transport

    @property
    def identified(self) -> bool:
        return self.state == IDENTIFIED

    def on_text(self, text: str) -> Effects:
        """Dispatch one text frame (SPEC §2.2, §2.3, §2.13)."""
        try:
            message = parse_message(text)
        except ProtocolError as error:
            yield from self._close(CLOSE_ERROR, str(error))
            return
        message_type = message.get("messageType")
        if self.state == CONNECTED:
            if message_type == "hello":
                yield from self._hello(message)
            else:
                yield from self._close(CLOSE_ERROR, "expected hello")
            return
        if not message and message_type is None:
            yield from self._ping()
            return
        handler = self._handlers().get(message_type) if isinstance(message_type, str) else None
        if handler is None:
            yield from self._close(CLOSE_ERROR, "unknown messageType")
            return
        yield from handler(message)

    def on_binary(self) -> Effects:
        yield from self._close(CLOSE_UNSUPPORTED, "binary frames are not supported")

    def on_hello_timeout(self) -> Effects:
        if self.state == CONNECTED:
            yield from self._close(CLOSE_ERROR, "hello timeout")

    def on_ping_timeout(self) -> Effects:
        """No pong came back for the auto-ping (SPEC §2.14)."""
        self.disconnect_reason = "ping timeout"
        yield from self._close(CLOSE_ERROR, "no pong")

    def on_notification(self, notification: Notification) -> Effects:
        """A direct notification from ``PUT /push`` (SPEC §2.17)."""
        if self.state != IDENTIFIED:
            return
        if notification.ttl:
            self.unacked_direct[notification.version] = notification
        yield from self._send_notification(notification, "Direct")

    def on_check_storage(self) -> Effects:
        """``PUT /notif``: look at storage (SPEC §3.2)."""
        if self.state != IDENTIFIED:
            return
        self.ctx.metrics.increment("ua.notification_check")
        yield from self._start_drain()

    def on_evict(self, connected_at: int) -> Effects:
        """``DELETE /notif`` or a newer same-node connection (SPEC §2.18)."""
        if self.state != CLOSED and connected_at == self.connected_at:
            self.disconnect_reason = "duplicate"
            yield from self._close(CLOSE_NORMAL, "Terminated duplicate")

    def on_auto_ping(self) -> Effects:
        """Each auto-ping tick: a pending broadcast, else a ping frame (SPEC §2.11, §2.14)."""
        if self.state != IDENTIFIED:
            return
        changes = self._pending_broadcasts()
        if changes:
            yield Send({"messageType": "broadcast", "broadcasts": changes})
        else:
            yield PingFrame()

    def on_shutdown(self, queued: Iterable[Notification] = ()) -> Effects:
        """The worker stops: keep every unacked direct notification, then say 1012."""
        self.disconnect_reason = "shutdown"
        yield from self._store_direct(queued)
        yield from self._close(CLOSE_RESTART, "server restart")

    def note_disconnect_reason(self, reason: str) -> None:
        """The transport ended the connection itself (e.g. a write missed its deadline)."""
        self.disconnect_reason = self.disconnect_reason or reason

    def on_disconnect(self, queued: Iterable[Notification] = ()) -> Effects:
        """The socket is gone: re-store unacked direct notifications (SPEC §2.17)."""
        self.state = CLOSED
        yield from self._store_direct(queued)
        self._log_session()

    # ------------------------------------------------------------------
    # hello (SPEC §2.4)

    def _hello(self, message: dict) -> Effects:
        if message.get("use_webpush") is not True:
            yield Send(error_reply("hello", 401, "Simplepush not supported"))
            yield from self._close(CLOSE_ERROR, "simplepush")
            return
        requested = message.get("uaid")
        try:
            user = yield from self._returning_user(requested)
        except StorageError as error:
            yield from self._hello_storage_failure(error)
            return
        if user is None:
            self._new_user()
        elif not (yield from self._claim_user(user)):
            return
        yield Identify()
        self.state = IDENTIFIED
        yield Send(self._hello_reply(message))
        self._count_hello(requested)
        if self.existing_uaid:
            yield from self._start_drain()

    def _returning_user(self, requested: Any) -> Generator[Any, Any, User | None]:
        """The stored record of a returning client, or ``None`` for a new user."""
        if not is_canonical_uaid(requested):
            return None
        user = yield Db("get_user", lambda s: s.router.get_user(requested))
        if user is None:
            return None
        if user.router_type is None or user.connected_at is None:
            yield from self._drop_user(requested, 104)
            return None
        if user.router_type != WEBPUSH:
            return None
        if self.ctx.storage.message_table_for(user) is None:
            yield from self._drop_user(requested, 105)
            return None
        return user

    def _claim_user(self, user: User) -> Generator[Any, Any, bool]:
        """Point the record at this node, unless a newer connection holds it."""
        now = self.connected_at
        if user.connected_at > now:
            yield from self._already_connected()
            return False
        update = User(uaid=user.uaid, node_id=self.ctx.node_id, connected_at=now)
        if self.ctx.storage.rotation and not self.ctx.storage.connected_this_month(user.last_connect):
            update.last_connect = self.ctx.storage.new_last_connect()
        try:
            claimed, previous = yield Db("update_user", lambda s: s.router.update_user(update))
        except StorageError as error:
            yield from self._hello_storage_failure(error)
            return False
        if not claimed:
            yield from self._already_connected()
            return False
        self.uaid = user.uaid
        self.existing_uaid = True
        self.reset_uaid = not user.record_version or user.record_version < 1
        self.message_table = self.ctx.storage.message_table_for(user)
        self.rotate = self.message_table != self.ctx.storage.tables.current
        if not self.ctx.storage.rotation:
            yield from self._best_effort("touch_channels", lambda s: s.messages().touch_channels(user.uaid))
        yield from self._evict_elsewhere(previous)
        return True

    def _evict_elsewhere(self, previous: dict) -> Effects:
        old_node, old_connected_at = previous.get("node_id"), previous.get("connected_at")
        if old_node and old_node != self.ctx.node_id and old_connected_at is not None:
            yield NodeRequest("DELETE", f"{old_node}/notif/{self.uaid}/{old_connected_at}")

    def _new_user(self) -> None:
        storage = self.ctx.storage
        self.uaid = uuid.uuid4().hex
        self.message_table = storage.tables.current
        self.pending_user = User(
            uaid=self.uaid, node_id=self.ctx.node_id, connected_at=self.connected_at, record_version=1
        )
        if storage.rotation:
            self.pending_user.current_month = storage.tables.current
            self.pending_user.last_connect = storage.new_last_connect()

    def _hello_reply(self, message: dict) -> dict:
        requested = message.get("broadcasts")
        check = self.ctx.broadcasts.subscribe(requested if isinstance(requested, dict) else {})
        self.broadcast_subs = dict(check.subscribed)
        self.broadcast_seen = self.ctx.broadcasts.change_count
        reply = {
            "messageType": "hello",
            "uaid": self.uaid,
            "status": 200,
            "use_webpush": True,
            "broadcasts": self.ctx.broadcasts.reply_payload(check),
            "env": self.ctx.env,
        }
        if self.ctx.auto_ping_interval:
            reply["ping"] = float(self.ctx.auto_ping_interval)
        return reply

    def _count_hello(self, requested: Any) -> None:
        if self.existing_uaid:
            kind = "existing"
        elif isinstance(requested, str) and requested:
            kind = "reassigned"
        else:
            kind = "new"
        self.ctx.metrics.increment("ua.command.hello", tags={"uaid": kind})

    def _already_connected(self) -> Effects:
        self.ctx.metrics.increment("ua.already_connected")
        yield Send(error_reply("hello", 500, "already_connected"))
        yield from self._close(CLOSE_ERROR, "already connected")

    def _hello_storage_failure(self, error: StorageError) -> Effects:
        reason = "error"
        if isinstance(error, StorageThrottled):
            reason = "error - overloaded"
            yield Sleep(self.ctx.rng.uniform(*THROTTLED_HELLO_DELAY))
        log.warning("hello failed", extra=log_fields(error=str(error)))
        yield Send(error_reply("hello", 503, reason))
        yield from self._close(CLOSE_ERROR, "storage error")

    def _drop_user(self, uaid: str, code: int) -> Effects:
        log.debug("Dropping User", extra=log_fields(code=code, uaid_hash=uaid))
        yield Db("drop_user", lambda s: s.router.drop_user(uaid))

    # ------------------------------------------------------------------
    # register / unregister (SPEC §2.5, §2.6)

    def _handlers(self) -> dict[str, Callable[[dict], Effects]]:
        return {
            "hello": self._duplicate_hello,
            "register": self._register,
            "unregister": self._unregister,
            "ack": self._ack,
            "nack": self._nack,
            "broadcast_subscribe": self._broadcast_subscribe,
        }

    def _duplicate_hello(self, message: dict) -> Effects:
        yield Send(error_reply("hello", 401, "duplicate hello"))
        yield from self._close(CLOSE_ERROR, "duplicate hello")

    def _register(self, message: dict) -> Effects:
        channel_id = message.get("channelID")
        if not isinstance(channel_id, str):
            yield Send(error_reply("register", 401))
            return
        problem = register_channel_problem(channel_id)
        if problem:
            yield Send(error_reply("register", 401, problem, channel_id))
            return
        key = message.get("key")
        try:
            app_server_key = _app_server_key(key)
        except ValueError:
            yield Send(error_reply("register", 400, "Invalid key", channel_id))
            return
        if not self._register_allowed():
            yield Send(error_reply("register", TOO_MANY_REGISTERS, "too many registers", channel_id))
            return
        try:
            if not (yield from self._room_for_channel(channel_id)):
                yield Send(error_reply("register", TOO_MANY_CHANNELS, "too many channels", channel_id))
                return
            yield from self._create_pending_user()
            yield Db("add_channel", lambda s: s.messages(self.message_table).add_channel(self.uaid, channel_id))
        except StorageThrottled:
            yield Send({"messageType": "error", "reason": "overloaded", "status": 503})
            return
        except StorageError as error:
            log.warning("register failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))
            yield Send(error_reply("register", 500, "An unexpected server error occurred", channel_id))
            return
        endpoint = make_endpoint_url(
            self.ctx.crypto_keys, self.ctx.endpoint_url, uuid.UUID(self.uaid),
            uuid.UUID(channel_id), app_server_key,
        )
        self.stats.registers += 1
        self.ctx.metrics.increment("ua.command.register")
        log.info("Register", extra=log_fields(channel_id=channel_id, endpoint=endpoint, uaid_hash=self.uaid))
        yield Send({"messageType": "register", "channelID": channel_id, "status": 200, "pushEndpoint": endpoint})

    def _register_allowed(self) -> bool:
        """The register rate, as a generic cell rate algorithm: one float per session.

        ``register_credit`` is when the register after the last accepted one
        is due at the steady rate; a register is refused when that lies more
        than a burst's worth of intervals ahead.
        """
        rate = self.ctx.limits.register_rate
        if not rate:
            return True
        interval = 60.0 / rate
        now = self.ctx.monotonic()
        due = max(self.register_credit, now)
        if due - now > interval * (rate - 1):
            return False
        self.register_credit = due + interval
        return True

    def _room_for_channel(self, channel_id: str) -> Generator[Any, Any, bool]:
        """Whether the UAID may hold ``channel_id``: one it already has, or a new one under the cap.

        Without a cap, one connection could grow its channel list (a single
        storage item, read on every hello and bridge check) without bound.
        """
        if self.pending_user is not None:
            return True  # a new user's first register: no channels yet
        uaid, table = self.uaid, self.message_table
        channels = yield Db("get_channels", lambda s: s.messages(table).get_channels(uaid))
        return channel_id in channels or len(channels) < self.ctx.limits.max_channels

    def _create_pending_user(self) -> Effects:
        """The router record of a new user is written by its first register (SPEC A.13)."""
        if self.pending_user is None:
            return
        user = self.pending_user
        created = yield Db("add_user", lambda s: s.router.add_user(user))
        if not created:
            raise StorageError("UAID collision", "put_item")
        self.pending_user = None

    def _unregister(self, message: dict) -> Effects:
        sent = message.get("channelID")
        if sent is None:
            yield Send(error_reply("unregister", 401, "Missing ChannelID"))
            return
        parsed = parse_uuid(sent)
        if parsed is None:
            yield Send(error_reply("unregister", 401, "Invalid ChannelID", sent))
            return
        channel_id = str(parsed)
        code = integer_code(message.get("code"), 200)
        self._forget_channel(channel_id)
        try:
            yield Db("remove_channel", lambda s: s.messages(self.message_table).remove_channel(self.uaid, channel_id))
        except StorageError as error:
            log.warning("unregister failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))
            yield Send(error_reply("unregister", 500, "An unexpected server error occurred", sent))
            return
        self.stats.unregisters += 1
        self.ctx.metrics.increment("ua.command.unregister", tags={"code": code})
        log.info("Unregister", extra=log_fields(channel_id=channel_id, uaid_hash=self.uaid, code=code))
        yield Send({"messageType": "unregister", "channelID": sent, "status": 200})
        yield from self._after_acks()

    def _forget_channel(self, channel_id: str) -> None:
        for tracked in (self.unacked_direct, self.unacked_stored):
            for version in [v for v, n in tracked.items() if n.channel_id == channel_id]:
                del tracked[version]

    # ------------------------------------------------------------------
    # ack / nack / ping / broadcast_subscribe (SPEC §2.8–§2.11)

    def _ack(self, message: dict) -> Effects:
        updates = message.get("updates")
        if not isinstance(updates, list) or not updates:
            return
        self.ctx.metrics.increment("ua.command.ack")
        for update in updates:
            if isinstance(update, dict) and all(
                isinstance(update.get(key), str) for key in ("channelID", "version")
            ):
                yield from self._ack_one(update["version"])
        yield from self._after_acks()

    def _ack_one(self, version: str) -> Effects:
        if self.unacked_direct.pop(version, None) is not None:
            self.stats.direct_acked += 1
            return
        notification = self.unacked_stored.pop(version, None)
        if notification is None:
            return
        self.stats.stored_acked += 1
        if notification.deleted_on_ack:
            yield from self._delete_stored(notification)

    def _delete_stored(self, notification: Notification) -> Effects:
        """Delete a topic/legacy message unless a newer one replaced it (SPEC §2.8)."""
        updateid = None if notification.legacy else notification.version
        store_key, uaid = notification.sort_key, self.uaid
        yield from self._best_effort(
            "delete_message",
            lambda s: s.messages(self.message_table).delete_message(uaid, store_key, updateid),
        )

    def _nack(self, message: dict) -> Effects:
        """Logged and counted; a nack is not an acknowledgement."""
        if isinstance(message.get("version"), str):
            self.stats.nacks += 1
            code = nack_tag(integer_code(message.get("code"), 0))
            self.ctx.metrics.increment("ua.command.nack", tags={"code": code})
        yield from ()

    def _ping(self) -> Effects:
        now = self.ctx.monotonic()
        if self.last_ping is not None and now - self.last_ping < PING_MIN_INTERVAL:
            yield from self._close(CLOSE_PING_ABUSE, "too many pings")
            return
        self.last_ping = now
        yield Send("{}")

    def _broadcast_subscribe(self, message: dict) -> Effects:
        requested = message.get("broadcasts")
        check = self.ctx.broadcasts.subscribe(requested if isinstance(requested, dict) else {})
        changes = {**self._pending_broadcasts(), **check.changed}
        self.broadcast_subs.update(check.subscribed)
        payload = dict(changes)
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

    # ------------------------------------------------------------------
    # Stored-message delivery (SPEC §2.15, §2.16)

    def _start_drain(self) -> Effects:
        if self.draining:
            self.check_again = True
            return
        self.draining = True
        self.include_topic = True
        self.sent_from_storage = 0
        yield from self._drain()

    def _drain(self) -> Effects:
        """Fetch and send batches until one awaits acks or storage is empty."""
        while self.state == IDENTIFIED:
            try:
                batch = yield from self._fetch_batch()
            except StorageThrottled:
                delay = self.ctx.rng.uniform(*DRAIN_RETRY_DELAY)
                yield Schedule(delay, self._resume_drain)
                return
            except StorageError as error:
                log.warning("drain failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))
                yield from self._close(CLOSE_ERROR, "storage error")
                return
            if batch is None:
                yield from self._drain_finished()
                return
            live = yield from self._drop_expired(batch)
            if live:
                yield from self._send_stored(live)
                return
            if self.batch_is_timestamp:
                yield from self._advance_bookmark()

    def _resume_drain(self) -> Effects:
        if self.draining and not self.unacked_stored:
            yield from self._drain()

    def _fetch_batch(self) -> Generator[Any, Any, list[Notification] | None]:
        """The next batch of the current phase; ``None`` when storage is drained."""
        uaid, table = self.uaid, self.message_table
        if self.include_topic:
            bookmark, messages = yield Db(
                "fetch_topic_messages", lambda s: s.messages(table).fetch_topic_messages(uaid)
            )
            if self.bookmark is None:
                self.bookmark = bookmark
            if messages:
                self.batch_is_timestamp = False
                self.ctx.metrics.increment("notification.message.retrieved", len(messages), {"topic": True})
                return messages
            self.include_topic = False
        bookmark = self.bookmark
        high, messages = yield Db(
            "fetch_timestamp_messages",
            lambda s: s.messages(table).fetch_timestamp_messages(uaid, bookmark),
        )
        if high is not None:
            self.batch_high = high
        self.batch_is_timestamp = True
        if messages:
            self.ctx.metrics.increment("notification.message.retrieved", len(messages), {"topic": False})
        return messages or None

    def _drop_expired(self, batch: list[Notification]) -> Generator[Any, Any, list[Notification]]:
        now = self.ctx.clock()
        live = []
        for notification in batch:
            if not notification.expired(now):
                live.append(notification)
            elif notification.deleted_on_ack:
                yield from self._delete_stored(notification)
        return live

    def _send_stored(self, batch: list[Notification]) -> Effects:
        for notification in batch:
            if self.sent_from_storage + 1 > self.ctx.msg_limit:
                yield from self._reset_user("too_many_messages")
                return
            self.sent_from_storage += 1
            self.stats.stored_retrieved += 1
            self.unacked_stored[notification.version] = notification
            age_ms = max(0.0, self.ctx.clock() - notification.timestamp) * 1000
            self.ctx.metrics.timing("notification.storage.time", age_ms)
            yield from self._send_notification(notification, "Stored")

    def _after_acks(self) -> Effects:
        """When the outstanding stored batch is fully acked, go on draining."""
        if not self.draining or self.unacked_stored or self.state != IDENTIFIED:
            return
        if self.batch_is_timestamp:
            yield from self._advance_bookmark()
        yield from self._drain()

    def _advance_bookmark(self) -> Effects:
        if self.batch_high is None or self.batch_high == self.bookmark:
            return
        self.bookmark = high = self.batch_high
        uaid, table = self.uaid, self.message_table
        yield from self._best_effort(
            "update_bookmark", lambda s: s.messages(table).update_bookmark(uaid, high)
        )

    def _drain_finished(self) -> Effects:
        self.draining = False
        self.sent_from_storage = 0
        if self.check_again:
            self.check_again = False
            yield Schedule(CHECK_AGAIN_DELAY, self._start_drain)
        elif self.reset_uaid:
            yield from self._reset_user("old_record_version")
        elif self.rotate:
            yield from self._migrate()

    def _reset_user(self, reason: str) -> Effects:
        """Drop the UAID; the client reconnects and is given a new one."""
        self.ctx.metrics.increment("ua.expiration", tags={"reason": reason})
        uaid = self.uaid
        yield from self._best_effort("drop_user", lambda s: s.router.drop_user(uaid))
        self.disconnect_reason = reason
        yield from self._close(CLOSE_NORMAL, "uaid reset")

    # ------------------------------------------------------------------
    # Rotation-mode migration (SPEC §7.7 connection-node rule 4)

    def _migrate(self) -> Effects:
        old, new, uaid = self.message_table, self.ctx.storage.tables.current, self.uaid
        last_connect = self.ctx.storage.new_last_connect()
        try:
            channels = yield Db("get_channels", lambda s: s.messages(old).get_channels(uaid))
            yield Db("save_channels", lambda s: s.messages(new).save_channels(uaid, channels))
            yield Db(
                "update_message_month",
                lambda s: s.router.update_message_month(uaid, new, last_connect),
            )
        except StorageThrottled:
            yield Schedule(self.ctx.rng.uniform(*MIGRATION_RETRY_DELAY), self._retry_migration)
            return
        except StorageError as error:
            log.warning("migration failed", extra=log_fields(error=str(error), uaid_hash=uaid))
            yield from self._close(CLOSE_ERROR, "storage error")
            return
        self.message_table = new
        self.rotate = False
        yield from self._carry_over(old, new)

    def _carry_over(self, old: str, new: str) -> Effects:
        """Move what reached the old table while we switched (SPEC §7.7 edge case).

        An endpoint that read the record before ``current_month`` changed
        stores in the old table, which this session no longer reads: copy
        such messages (same keys and versions) into the new table and drain.
        """
        uaid, bookmark = self.uaid, self.bookmark
        try:
            _, topics = yield Db("fetch_topic_messages", lambda s: s.messages(old).fetch_topic_messages(uaid))
            _, stamped = yield Db(
                "fetch_timestamp_messages", lambda s: s.messages(old).fetch_timestamp_messages(uaid, bookmark)
            )
            late = topics + stamped
            if late:
                yield Db("save_messages", lambda s: s.messages(new).save_messages(uaid, late))
        except StorageError as error:
            log.warning("carry-over failed", extra=log_fields(error=str(error), uaid_hash=uaid))
            return
        if late:
            yield from self._start_drain()

    def _retry_migration(self) -> Effects:
        if self.rotate and not self.draining and self.state == IDENTIFIED:
            yield from self._migrate()

    # ------------------------------------------------------------------
    # Shared steps

    def _send_notification(self, notification: Notification, source: str) -> Effects:
        metrics = self.ctx.metrics
        tags = {"source": source, "topic": bool(notification.topic)}
        metrics.increment("ua.notification.sent", tags=tags)
        if notification.data:
            metrics.increment("ua.message_data", len(notification.data), tags={"source": source})
        yield Send(notification_message(notification))

    def _store_direct(self, queued: Iterable[Notification]) -> Effects:
        """Write unacked and never-sent direct notifications to storage (SPEC §2.17)."""
        pending = list(self.unacked_direct.values()) + [n for n in queued if n.ttl]
        self.unacked_direct = {}
        if not pending or self.uaid is None or self.pending_user is not None:
            return
        restamped = [self._restamped(n) for n in pending]
        uaid, table = self.uaid, self.message_table
        try:
            yield Db("save_messages", lambda s: s.messages(table).save_messages(uaid, restamped))
            user = yield Db("get_user", lambda s: s.router.get_user(uaid))
        except StorageError as error:
            log.error("direct notifications lost", extra=log_fields(error=str(error), count=len(pending)))
            return
        self.stats.direct_storage += len(restamped)
        if user and user.node_id and user.connected_at != self.connected_at:
            yield NodeRequest("PUT", f"{user.node_id}/notif/{uaid}")

    def _restamped(self, notification: Notification) -> Notification:
        if notification.topic:
            return notification
        return dataclasses.replace(notification, sortkey_timestamp=self.ctx.sortkeys.next())

    def _best_effort(self, name: str, call: Callable[[Storage], Any]) -> Effects:
        """Storage writes whose failure is logged, not fatal (SPEC §7.8)."""
        try:
            yield Db(name, call)
        except StorageError as error:
            log.warning(f"{name} failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))

    def _close(self, code: int, reason: str) -> Effects:
        if self.state == CLOSED:
            return
        self.state = CLOSED
        self.disconnect_reason = self.disconnect_reason or reason
        yield Close(code, reason)

    def _log_session(self) -> None:
        lifespan = self.ctx.monotonic() - self.started
        self.ctx.metrics.timing("ua.connection.lifespan", lifespan * 1000)
        log.info(
            "Session",
            extra=log_fields(
                uaid_hash=self.uaid or "", uaid_reset=self.disconnect_reason in RESET_REASONS,
                existing_uaid=self.existing_uaid, connection_type="webpush",
                user_agent=self.user_agent, connection_time=round(lifespan, 3),
                disconnect_reason=self.disconnect_reason, **dataclasses.asdict(self.stats),
            ),
        )


RESET_REASONS = frozenset({"too_many_messages", "old_record_version"})


def _app_server_key(key: Any) -> bytes | None:
    """Absent, null or "" mean an unrestricted endpoint; anything else must decode (SPEC §2.5)."""
    if key is None or key == "":
        return None
    if not isinstance(key, str):
        raise ValueError("key must be a string")
    return decode_app_server_key(key)

