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
from array import array
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
    Retry,
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
from autopush_flask.connection.retries import report_given_up
from autopush_flask.crypto import CryptoKeys, InvalidMessageIdError, MessageId, decode_app_server_key, make_endpoint_url
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
# A failed bookmark write is retried this long; a bookmark left behind only
# makes a later drain re-read messages that are already deleted.
BOOKMARK_RETRY_SECONDS = 300.0
# Acknowledged versions a session remembers (see ``RecentVersions``).
RECENT_ACKS = 64
NO_HASH = -1  # hash() never returns -1

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
    # ``AUTOPUSH_BOOKMARK_MARGIN``: how far the stored bookmark stays behind a drain's start.
    bookmark_margin: float = 60.0
    sortkeys: SortKeyClock = dataclasses.field(default_factory=SortKeyClock)
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic
    rng: random.Random = dataclasses.field(default_factory=random.Random)

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def stamp_at(self, seconds: float) -> int:
        """The sort-key timestamp (microseconds) of a wall-clock time."""
        return int(seconds * 1_000_000)


class RecentVersions:
    """The last ``RECENT_ACKS`` versions a session saw acknowledged, as 64-bit hashes.

    Enough to recognise a ``PUT /push`` retried after the client acked the
    first copy, and a stored message re-read (within the bookmark margin)
    whose delete has not landed yet; older ones may come again, a duplicate
    and never a loss. Hashes rather than the ~140-byte versions keep it at
    ~0.6 KiB, made only for a session that acks; two versions sharing a
    64-bit hash within one session's last 64 (odds ~2^-58) would hide the
    newer one.
    """

    __slots__ = ("_hashes", "_next")

    def __init__(self) -> None:
        self._hashes = array("q", [NO_HASH]) * RECENT_ACKS
        self._next = 0

    def add(self, version: str) -> None:
        self._hashes[self._next] = hash(version)
        self._next = (self._next + 1) % RECENT_ACKS

    def __contains__(self, version: str) -> bool:
        return hash(version) in self._hashes


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
        "user", "existing_uaid", "reset_uaid", "rotate", "draining", "check_again",
        "include_topic", "unacked_direct", "unacked_stored", "cursor", "stored_bookmark",
        "drain_started", "batch_high", "batch_is_timestamp", "sent_from_storage", "recent_acks",
        "last_ping", "broadcast_subs", "broadcast_seen", "stats", "disconnect_reason",
        "register_credit",
    )

    def __init__(self, ctx: NodeContext, user_agent: str = "") -> None:
        self.ctx = ctx
        self.state = CONNECTED
        self.uaid: str | None = None
        self.connected_at = ctx.now_ms()
        self.started = ctx.monotonic()
        self.user_agent = user_agent
        self.pending_user: User | None = None
        # The router record as this session knows it: where the user's data lives.
        self.user: User | None = None
        self.existing_uaid = False
        self.reset_uaid = False
        self.rotate = False
        self.draining = False
        self.check_again = False
        self.include_topic = True
        self.unacked_direct: dict[str, Notification] = {}
        self.unacked_stored: dict[str, Notification] = {}
        # Where this drain reads timestamp messages from (in memory only), and
        # the stored bookmark as last read or written (see ``_advance_bookmark``).
        self.cursor: int | None = None
        self.stored_bookmark: int | None = None
        self.drain_started = 0.0
        self.batch_high: int | None = None
        self.batch_is_timestamp = False
        self.sent_from_storage = 0
        self.recent_acks: RecentVersions | None = None
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
        """A direct notification from ``PUT /push`` (SPEC §2.17).

        The same version again (a ``PUT /push`` retried after a stale
        keep-alive connection, or after a timeout when the first one did
        arrive) is accepted without a second copy to the client: it is
        already awaiting its ack, or was acked moments ago.
        """
        if self.state != IDENTIFIED:
            return
        if self._seen(notification.version):
            return
        if notification.ttl:
            notification = self._with_stamp(notification)
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

    def give_up_unstored(self, reason: str) -> None:
        """Count and log the direct notifications nobody will store, and forget them."""
        unstored = [n.version for n in self.unacked_direct.values() if not n.stored]
        self.unacked_direct = {}
        if unstored:
            report_given_up(self.ctx.metrics, "store_direct", reason, self.uaid or "", unstored)

    def note_disconnect_reason(self, reason: str) -> None:
        """The transport ended the connection itself (e.g. a write missed its deadline)."""
        self.disconnect_reason = self.disconnect_reason or reason

    def on_disconnect(self, queued: Iterable[Notification] = ()) -> Effects:
        """The socket is gone: re-store unacked direct notifications (SPEC §2.17)."""
        self.state = CLOSED
        yield from self._store_direct(queued)
        self.unacked_direct = {}
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
        user = yield Db("get_user", lambda s: s.get_user(requested))
        if user is None:
            return None
        if user.router_type is None or user.connected_at is None:
            yield from self._drop_user(requested, 104)
            return None
        if user.router_type != WEBPUSH:
            return None
        if not self.ctx.storage.holds_data_of(user):
            yield from self._drop_user(requested, 105)
            return None
        return user

    def _claim_user(self, user: User) -> Generator[Any, Any, bool]:
        """Point the record at this node, unless a newer connection holds it."""
        now = self.connected_at
        if user.connected_at > now:
            yield from self._already_connected()
            return False
        node_id = self.ctx.node_id
        try:
            claimed, previous = yield Db("update_user", lambda s: s.claim_user(user, node_id, now))
        except StorageError as error:
            yield from self._hello_storage_failure(error)
            return False
        if not claimed:
            yield from self._already_connected()
            return False
        self.uaid = user.uaid
        self.existing_uaid = True
        self.reset_uaid = not user.record_version or user.record_version < 1
        self.user = user
        self.rotate = self.ctx.storage.needs_migration(user)
        yield from self._best_effort("touch_channels", lambda s: s.touch_channels(user))
        yield from self._evict_elsewhere(previous)
        return True

    def _evict_elsewhere(self, previous: User | None) -> Effects:
        if previous is None:
            return
        old_node, old_connected_at = previous.node_id, previous.connected_at
        if old_node and old_node != self.ctx.node_id and old_connected_at is not None:
            yield NodeRequest("DELETE", f"{old_node}/notif/{self.uaid}/{old_connected_at}")

    def _new_user(self) -> None:
        self.uaid = uuid.uuid4().hex
        self.user = self.pending_user = self.ctx.storage.new_user(self.uaid, self.ctx.node_id, self.connected_at)

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
        yield Db("drop_user", lambda s: s.drop_user(uaid))

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
            user = self.user
            yield Db("add_channel", lambda s: s.add_channel(user, channel_id))
            yield from self._best_effort("refresh_user", lambda s: s.refresh_user(user))
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
        user = self.user
        channels = yield Db("get_channels", lambda s: s.get_channels(user))
        return channel_id in channels or len(channels) < self.ctx.limits.max_channels

    def _create_pending_user(self) -> Effects:
        """The router record of a new user is written by its first register (SPEC A.13)."""
        if self.pending_user is None:
            return
        user = self.pending_user
        created = yield Db("add_user", lambda s: s.add_user(user))
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
            user = self.user
            yield Db("remove_channel", lambda s: s.remove_channel(user, channel_id))
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
        """Forget an acknowledged notification and delete its stored copy, if it has one.

        Every stored message is deleted when acked, timestamp messages too:
        the bookmark stays a margin behind (``_advance_bookmark``), so a later
        drain re-reads the newest messages and must find only unacked ones.
        A direct notification has a stored copy only when the endpoint stored
        it first (durable direct delivery), or when the drain met it in
        storage while it awaited this ack; otherwise an ack costs no storage call.
        """
        direct = self.unacked_direct.pop(version, None)
        stored = self.unacked_stored.pop(version, None)
        if direct is None and stored is None:
            return
        self._remember_ack(version)
        if direct is not None:
            self.stats.direct_acked += 1
        if stored is not None:
            self.stats.stored_acked += 1
        copy = stored or (direct if direct is not None and direct.stored else None)
        if copy is not None:
            yield from self._delete_stored(copy)

    def _remember_ack(self, version: str) -> None:
        if self.recent_acks is None:
            self.recent_acks = RecentVersions()
        self.recent_acks.add(version)

    def _seen(self, version: str) -> bool:
        """Whether ``version`` awaits its ack here, or was acked moments ago."""
        return (
            version in self.unacked_direct
            or version in self.unacked_stored
            or (self.recent_acks is not None and version in self.recent_acks)
        )

    def _delete_stored(self, notification: Notification, retry: bool = True) -> Generator[Any, Any, bool]:
        """Delete a stored message unless a newer one replaced it (SPEC §2.8); ``True`` once done.

        A delete that fails is retried in the background until the message expires.
        """
        updateid = None if notification.legacy else notification.version
        store_key, user = notification.sort_key, self.user
        call = lambda s: s.delete_message(user, store_key, updateid)  # noqa: E731
        retry_until = notification.timestamp + notification.ttl if retry else None
        return (yield from self._best_effort("delete_message", call, retry_until, (notification.version,)))

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
        self.cursor = None  # each drain starts from the stored bookmark, read afresh
        self.drain_started = self.ctx.clock()
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
            deleted = yield from self._take_batch(batch)
            if self.unacked_stored or self.state != IDENTIFIED:
                return  # the batch awaits its acks
            if self.batch_is_timestamp:
                yield from self._advance_bookmark()
            elif not deleted:
                # Only topic messages that stay (their deletes failed): a new
                # query would return them again. On to timestamp messages.
                self.include_topic = False

    def _resume_drain(self) -> Effects:
        if self.draining and not self.unacked_stored:
            yield from self._drain()

    def _fetch_batch(self) -> Generator[Any, Any, list[Notification] | None]:
        """The next batch of the current phase; ``None`` when storage is drained."""
        user = self.user
        if self.include_topic:
            bookmark, messages = yield Db("fetch_topic_messages", lambda s: s.fetch_topic_messages(user))
            if self.cursor is None:
                self.cursor = self.stored_bookmark = bookmark
            if messages:
                self.batch_is_timestamp = False
                self.ctx.metrics.increment("notification.message.retrieved", len(messages), {"topic": True})
                return messages
            self.include_topic = False
        while True:
            cursor = self.cursor
            high, messages = yield Db("fetch_timestamp_messages", lambda s: s.fetch_timestamp_messages(user, cursor))
            if messages or high is None or (cursor is not None and high <= cursor):
                break
            self.cursor = high  # a page of expired messages only: read on past it
        self.batch_high = high
        self.batch_is_timestamp = True
        if messages:
            self.ctx.metrics.increment("notification.message.retrieved", len(messages), {"topic": False})
        return messages or None

    def _take_batch(self, batch: list[Notification]) -> Generator[Any, Any, bool]:
        """Send what the client has not had; ``True`` if any message was deleted.

        Not sent again: an expired message (a topic or legacy one is
        deleted), a version already sent directly and awaiting its ack (its
        ack will also delete this copy), and a version acked moments ago
        whose delete had not landed (deleted again).
        """
        now = self.ctx.clock()
        deleted = False
        for notification in batch:
            version = notification.version
            if notification.expired(now):
                if notification.deleted_on_ack:
                    deleted |= yield from self._delete_stored(notification, retry=False)
            elif version in self.unacked_direct:
                self.unacked_stored[version] = notification
            elif self.recent_acks is not None and version in self.recent_acks:
                deleted |= yield from self._delete_stored(notification)
            elif not (yield from self._send_stored(notification)):
                break
        return deleted

    def _send_stored(self, notification: Notification) -> Generator[Any, Any, bool]:
        """Send one stored message; ``False`` when the drain limit reset the UAID instead."""
        if self.sent_from_storage + 1 > self.ctx.msg_limit:
            yield from self._reset_user("too_many_messages")
            return False
        self.sent_from_storage += 1
        self.stats.stored_retrieved += 1
        self.unacked_stored[notification.version] = notification
        age_ms = max(0.0, self.ctx.clock() - notification.timestamp) * 1000
        self.ctx.metrics.timing("notification.storage.time", age_ms)
        yield from self._send_notification(notification, "Stored")
        return True

    def _after_acks(self) -> Effects:
        """When the outstanding stored batch is fully acked, go on draining."""
        if not self.draining or self.unacked_stored or self.state != IDENTIFIED:
            return
        if self.batch_is_timestamp:
            yield from self._advance_bookmark()
        yield from self._drain()

    def _advance_bookmark(self) -> Effects:
        """Read on past a finished timestamp batch; store the bookmark a margin behind.

        The bookmark promises that no message at or below it still needs
        reading. Messages are stamped (their sort key) before they are
        written, and a write can land late: DynamoDB throttling and timeouts
        with their retries (3 attempts of at most 2 s connect + 10 s read,
        ~36 s, ``db/dynamodb/client.py``), the endpoint's ``PUT /push`` to a node in
        between (a few seconds), another host's clock running ahead. So the
        stored bookmark never passes ``AUTOPUSH_BOOKMARK_MARGIN`` (60 s) before
        this drain started, by this host's clock: it assumes every stamp is
        written within the margin, and that host clocks agree to within what
        the margin leaves over (NTP keeps them within milliseconds). The
        next drain re-reads those last seconds; acked messages are deleted
        (and remembered, see ``RecentVersions``), so it finds only what is
        still owed. Writes that land later by design (a node storing a
        client's unacked direct notifications when it leaves, the retry
        queue) lower the bookmark after writing (``save_late_messages``).

        The write is conditional on the value this drain read: a bookmark
        lowered meanwhile is never raised over again; the drain is simply
        repeated from the lowered one (``check_again``).
        """
        if self.batch_high is not None and (self.cursor is None or self.batch_high > self.cursor):
            self.cursor = self.batch_high
        if self.cursor is None:
            return
        target = min(self.cursor, self.ctx.stamp_at(self.drain_started - self.ctx.bookmark_margin))
        expected = self.stored_bookmark
        if expected is not None and target <= expected:
            return
        uaid, user = self.uaid, self.user
        call = lambda s: s.advance_bookmark(user, expected, target)  # noqa: E731
        try:
            moved = yield Db("update_bookmark", call)
        except StorageError as error:
            self._log_failure("update_bookmark", error)
            yield Retry("update_bookmark", call, self.ctx.clock() + BOOKMARK_RETRY_SECONDS, uaid)
            return
        if moved:
            self.stored_bookmark = target
        else:
            self.check_again = True

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
        yield from self._best_effort("drop_user", lambda s: s.drop_user(uaid))
        self.disconnect_reason = reason
        yield from self._close(CLOSE_NORMAL, "uaid reset")

    # ------------------------------------------------------------------
    # Rotation-mode migration (SPEC §7.7 connection-node rule 4)

    def _migrate(self) -> Effects:
        """Move the user's data where new data goes; what reached the old place meanwhile comes along.

        An endpoint that read the record before the switch stores in the old
        place, which this session no longer reads: the store carries such
        messages over (same keys and versions), and they are drained.
        """
        user, bookmark = self.user, self.stored_bookmark
        try:
            moved, carried = yield Db("migrate_user", lambda s: s.migrate_user(user, bookmark))
        except StorageThrottled:
            yield Schedule(self.ctx.rng.uniform(*MIGRATION_RETRY_DELAY), self._retry_migration)
            return
        except StorageError as error:
            log.warning("migration failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))
            yield from self._close(CLOSE_ERROR, "storage error")
            return
        self.user = moved
        self.rotate = False
        if carried:
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

    def _store_direct(self, queued: Iterable[Notification], keep_tracking: bool = False) -> Effects:
        """Write unacked and never-sent direct notifications to storage (SPEC §2.17).

        Each keeps its version and sort key (the endpoint's stamp): the
        browser may have seen it, and the application server may delete it
        by its message id. One already stored (by the endpoint, or read
        from storage) is not written again. A failed write goes to the
        retry queue until the notifications expire. Stored ones stay
        tracked as stored copies (``keep_tracking``, at shutdown: an ack
        before the close deletes them) or are forgotten with the session.
        """
        queued = [self._with_stamp(n) for n in queued if n.ttl and not self._seen(n.version)]
        pending = [
            n for n in [*self.unacked_direct.values(), *queued]
            if not n.stored and n.version not in self.unacked_stored
        ]
        if not pending or self.uaid is None or self.pending_user is not None:
            return
        uaid, user = self.uaid, self.user
        stored = yield from self._best_effort(
            "store_direct", lambda s: s.save_late_messages(user, pending),
            retry_until=max(n.timestamp + n.ttl for n in pending),
            message_ids=tuple(n.version for n in pending), notify=True,
        )
        self._mark_stored(pending)
        if not stored:
            return
        self.stats.direct_storage += len(pending)
        try:
            user = yield Db("get_user", lambda s: s.get_user(uaid))
        except StorageError:
            return  # they are stored: the client's next drain finds them
        if user and user.node_id and user.connected_at != self.connected_at:
            yield NodeRequest("PUT", f"{user.node_id}/notif/{uaid}")

    def _mark_stored(self, notifications: Iterable[Notification]) -> None:
        """Stored, or handed to the retry queue: no longer this session's to store."""
        for notification in notifications:
            if notification.version in self.unacked_direct:
                self.unacked_direct[notification.version] = dataclasses.replace(notification, stored=True)

    def _with_stamp(self, notification: Notification) -> Notification:
        """A timestamp notification with its sort-key timestamp, fixed once.

        The endpoint sends its stamp with ``PUT /push``; an endpoint of an
        older release does not, but its message id (the version) holds it,
        and this node has the keys to read it. A version that is no such id
        gets one stamp now, kept while the session holds it.
        """
        if notification.topic or notification.legacy or notification.sortkey_timestamp is not None:
            return notification
        try:
            message_id = MessageId.decode(self.ctx.crypto_keys, notification.version)
        except InvalidMessageIdError:
            message_id = None
        if (
            message_id is not None and message_id.kind == "timestamp"
            and str(message_id.channel_id) == notification.channel_id and message_id.uaid.hex == self.uaid
        ):
            stamp = message_id.sortkey_timestamp
        else:
            stamp = self.ctx.sortkeys.next()
        return dataclasses.replace(notification, sortkey_timestamp=stamp)

    def _best_effort(
        self, name: str, call: Callable[[Storage], Any], retry_until: float | None = None,
        message_ids: tuple[str, ...] = (), notify: bool = False,
    ) -> Generator[Any, Any, bool]:
        """Storage writes whose failure is logged, not fatal (SPEC §7.8); ``True`` if it landed.

        With ``retry_until`` (wall-clock seconds) a failed write goes to the
        worker's retry queue rather than being forgotten (see ``Retry``).
        """
        try:
            yield Db(name, call)
        except StorageError as error:
            self._log_failure(name, error)
            if retry_until is not None and self.uaid:
                yield Retry(name, call, retry_until, self.uaid, message_ids, notify)
            return False
        return True

    def _log_failure(self, name: str, error: StorageError) -> None:
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

