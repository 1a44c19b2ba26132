"""A session's state, and the steps every part of the protocol uses
(docs/architecture.md#the-session-generators-of-effects).

The protocol is split along the protocol's sections into mixins of
``SessionBase`` (``hello``, ``registration``, ``delivery``, ``drain``),
composed into ``Session`` (``core.py``); they share this state and call one
another's steps through ``self``. Slots are declared here alone (the mixins
add none), so a session stays one small object: the node holds one per client.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from array import array
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from autopush_flask.config import Settings
from autopush_flask.connection.broadcast import BroadcastRegistry
from autopush_flask.connection.effects import Close, Retry, Send
from autopush_flask.connection.protocol import notification_message
from autopush_flask.connection.storage_ops import StorageOp
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Notification, Storage, StorageError, User
from autopush_flask.db.models import SortKeyClock
from autopush_flask.logging import log_fields
from autopush_flask.tracking import DeliveryTracker

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

RESET_REASONS = frozenset({"too_many_messages", "old_record_version"})


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
    # Delivery milestones (docs/operations.md#delivery-tracking); on ``metrics`` unless given.
    tracker: DeliveryTracker | None = None

    def __post_init__(self) -> None:
        if self.tracker is None:
            self.tracker = DeliveryTracker(self.metrics)

    @property
    def milestones(self) -> DeliveryTracker:
        return cast(DeliveryTracker, self.tracker)

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
    """Counters for the ``Session`` log line (docs/operations.md#logs)."""

    direct_acked: int = 0
    direct_storage: int = 0
    stored_retrieved: int = 0
    stored_acked: int = 0
    nacks: int = 0
    registers: int = 0
    unregisters: int = 0


class SessionBase:
    """One client's protocol state; see the module doc for how it is split."""

    __slots__ = (
        "ctx",
        "state",
        "uaid",
        "connected_at",
        "started",
        "user_agent",
        "pending_user",
        "user",
        "existing_uaid",
        "reset_uaid",
        "rotate",
        "draining",
        "check_again",
        "include_topic",
        "unacked_direct",
        "unacked_stored",
        "cursor",
        "stored_bookmark",
        "drain_started",
        "batch_high",
        "batch_is_timestamp",
        "held_floor",
        "sent_from_storage",
        "recent_acks",
        "last_ping",
        "broadcast_subs",
        "broadcast_seen",
        "stats",
        "disconnect_reason",
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
        # The lowest stamp of a message this drain left for its urgency (``session/urgency.py``).
        self.held_floor: int | None = None
        self.sent_from_storage = 0
        self.recent_acks: RecentVersions | None = None
        self.last_ping: float | None = None
        self.broadcast_subs: dict[str, str] = {}
        self.broadcast_seen = 0
        self.stats = SessionStats()
        self.disconnect_reason = ""
        # When the register rate allows the next register (see ``_register_allowed``).
        self.register_credit = 0.0

    # The steps below are for parts of the protocol past hello, where the
    # client has its UAID and router record; the casts only tell mypy so.
    @property
    def known_uaid(self) -> str:
        return cast(str, self.uaid)

    @property
    def known_user(self) -> User:
        return cast(User, self.user)

    if TYPE_CHECKING:
        # Steps one mixin takes from another; ``Session`` (core.py) has them all.
        def _after_acks(self) -> Effects: ...

        def _start_drain(self) -> Effects: ...

        def _holds(self, notification: Notification) -> bool: ...

        def _note_held(self, notification: Notification) -> None: ...

        def _delete_stored(self, notification: Notification, retry: bool = True) -> Generator[Any, Any, bool]: ...

    def note_disconnect_reason(self, reason: str) -> None:
        """The transport ended the connection itself (e.g. a write missed its deadline)."""
        self.disconnect_reason = self.disconnect_reason or reason

    def _send_notification(self, notification: Notification, source: str) -> Effects:
        metrics = self.ctx.metrics
        tags = {"source": source, "topic": bool(notification.topic)}
        metrics.increment("ua.notification.sent", tags=tags)
        if notification.data:
            metrics.increment("ua.message_data", len(notification.data), tags={"source": source})
        yield Send(notification_message(notification))

    def _best_effort(
        self,
        op: StorageOp,
        retry_until: float | None = None,
        message_ids: tuple[str, ...] = (),
        notify: bool = False,
    ) -> Generator[Any, Any, bool]:
        """Storage writes whose failure is logged, not fatal (docs/architecture.md#storage-errors);
        ``True`` if it landed.

        With ``retry_until`` (wall-clock seconds) a failed write goes to the
        worker's retry queue rather than being forgotten (see ``Retry``).
        """
        try:
            yield op
        except StorageError as error:
            self._log_failure(op.name, error)
            if retry_until is not None and self.uaid:
                yield Retry(op, retry_until, self.uaid, message_ids, notify)
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
                uaid_hash=self.uaid or "",
                uaid_reset=self.disconnect_reason in RESET_REASONS,
                existing_uaid=self.existing_uaid,
                connection_type="webpush",
                user_agent=self.user_agent,
                connection_time=round(lifespan, 3),
                disconnect_reason=self.disconnect_reason,
                **dataclasses.asdict(self.stats),
            ),
        )
