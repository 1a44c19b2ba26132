"""``Storage`` in plain dicts, for unit tests and single-process demos.

Not for production: nothing survives the process, and each process has its
own store, so an endpoint and a connection node only share data when they
run in one process. What it keeps is the observable behaviour of the
DynamoDB backend (``db/dynamodb/router.py`` and ``messages.py``), so that
``tests/storage/test_interface.py`` holds it to the same suite:

- items are kept as the attribute dicts DynamoDB would store (``to_item``)
  and parsed on every read, so callers get fresh copies and never share
  state with the store;
- an expired record, channel list or message is treated as already deleted
  by the table's TTL: invisible to reads and to write conditions;
- keys and bounds compare as strings, like DynamoDB's sort keys.

One difference is deliberate: legacy ``{chid}:{version}`` messages are read
by ``fetch_topic_messages``, as the interface says, wherever their key sorts.

Workers are gevent greenlets, so the lock rarely waits, but it is cheap and
keeps the store safe under real threads too (``threading`` is patched under
gevent).
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from collections import defaultdict, deque
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

from autopush_flask.config import Settings
from autopush_flask.db.errors import StorageError, StorageUnavailable
from autopush_flask.db.interface import TIMESTAMP_FETCH_LIMIT, TOPIC_FETCH_LIMIT
from autopush_flask.db.models import (
    SIXTY_DAYS,
    THIRTY_DAYS,
    TIMESTAMP_PREFIX,
    WEBPUSH,
    Notification,
    User,
    after_bookmark_key,
    registered_channels,
)

DAY = 24 * 3600
BOOKMARK = "current_timestamp"  # the channel list's attribute, as in DynamoDB
MAINTENANCE_LINE = "memory store: nothing to maintain"

Method = TypeVar("Method", bound=Callable[..., Any])


def _operation(gated: bool = True) -> Callable[[Method], Method]:
    """Run a method under the lock, after the gate and any failure injected by ``fail_next``."""

    def decorate(method: Method) -> Method:
        @functools.wraps(method)
        def run(self: MemoryStorage, *args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self._enter(method.__name__, gated)
                return method(self, *args, **kwargs)

        run.injectable = True  # type: ignore[attr-defined]
        return run  # type: ignore[return-value]

    return decorate


def _copy_item(item: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy({key: value for key, value in item.items() if value is not None})


class MemoryStorage:
    """The ``Storage`` protocol on three dicts: router records, channel lists, messages."""

    def __init__(
        self,
        settings: Settings,
        metrics: Any,
        clock: Callable[[], float] = time.time,
        gated: bool = False,
    ) -> None:
        self._metrics = metrics
        self._clock = clock
        self._record_lifetime = settings.router_ttl_days * DAY
        self._ready = not gated
        self._lock = threading.RLock()
        self._failures: dict[str, deque[StorageError]] = defaultdict(deque)
        self._users: dict[str, dict[str, Any]] = {}
        self._channel_lists: dict[str, dict[str, Any]] = {}
        self._messages: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)

    # ---- failure injection (tests)

    def fail_next(self, operation: str, error: StorageError | None = None) -> None:
        """Make the next call of ``operation`` (a method name) raise ``error`` (default: unavailable).

        Calls queue up: two calls fail the next two operations of that name.
        """
        if not getattr(getattr(type(self), operation, None), "injectable", False):
            raise ValueError(f"no storage operation named {operation!r}")
        with self._lock:
            self._failures[operation].append(error or StorageUnavailable(f"{operation}: injected failure", operation))

    def _enter(self, operation: str, gated: bool) -> None:
        if self._failures.get(operation):
            raise self._failures[operation].popleft()
        if gated and not self._ready:
            raise StorageUnavailable(f"{operation}: store not set up yet", operation)

    # ---- expiry

    def _now(self) -> float:
        return self._clock()

    def _live(self, item: dict[str, Any] | None) -> dict[str, Any] | None:
        """``item`` unless its ``expiry`` has passed (then DynamoDB's TTL may have deleted it)."""
        if item is None:
            return None
        expiry = item.get("expiry")
        return item if expiry is None or expiry > self._now() else None

    def _expiry_in(self, lifetime: int) -> int:
        return int(self._now()) + lifetime

    # ---- life cycle

    @_operation(gated=False)
    def set_up(self) -> list[str]:
        """Nothing to create; opens a gated store."""
        self._ready = True
        return []

    def is_ready(self) -> bool:
        return self._ready

    def maintain(self) -> None:
        """No tables to rotate."""

    def close(self) -> None:
        """No connections to release."""

    def check_health(self) -> dict[str, dict[str, str]]:
        """The same entries as DynamoDB's, so ``/health`` reads alike; dicts are always there."""
        return {"router_table": {"status": "OK"}, "message_table": {"status": "OK"}}

    def maintain_tables(
        self, drop_older_than: int | None = None, dry_run: bool = False, purge_expired: bool = False
    ) -> Iterator[str]:
        yield MAINTENANCE_LINE
        if purge_expired and not dry_run:
            yield f"memory store: purged {self.purge_expired()} expired entries"

    @_operation()
    def purge_expired(self) -> int:
        """Delete expired records, channel lists and messages; how many went."""
        purged = _purge(self._users, self._live) + _purge(self._channel_lists, self._live)
        for uaid, messages in list(self._messages.items()):
            purged += _purge(messages, self._live)
            if not messages:
                del self._messages[uaid]
        return purged

    @_operation()
    # ---- router records

    def new_user(self, uaid: str, node_id: str | None, connected_at: int, **fields: object) -> User:
        values: dict[str, Any] = {"record_version": 1, **fields}
        return User(uaid=uaid, node_id=node_id, connected_at=connected_at, **values)

    def _user_item(self, uaid: str) -> dict[str, Any] | None:
        return self._live(self._users.get(uaid))

    @_operation()
    def get_user(self, uaid: str) -> User | None:
        item = self._user_item(uaid)
        return User.from_item(_copy_item(item)) if item else None

    @_operation()
    def get_user_with_channels(self, uaid: str) -> tuple[User | None, list[str] | None]:
        item = self._user_item(uaid)
        user = User.from_item(_copy_item(item)) if item else None
        return user, self._channels_of(uaid)

    @_operation()
    def add_user(self, user: User) -> bool:
        """Like DynamoDB's, stamps ``user.expiry`` on the caller's record too."""
        user.expiry = self._expiry_in(self._record_lifetime)
        if self._user_item(user.uaid) is not None:
            return False
        self._users[user.uaid] = _copy_item(user.to_item())
        return True

    @_operation()
    def claim_user(self, user: User, node_id: str, connected_at: int) -> tuple[bool, User | None]:
        """The hello update under DynamoDB's ``HELLO_CONDITION``: a claim is a WebPush connection.

        Only ``node_id``, ``connected_at``, the router type and the expiry
        are written; the rest of ``user`` is not (as DynamoDB's update), but
        ``user.expiry`` follows the stored one.
        """
        item = self._user_item(user.uaid)
        if item is None or not _may_claim(item, connected_at):
            return False, None
        previous = User.from_item(_copy_item(item))
        user.expiry = self._expiry_in(self._record_lifetime)
        item.update(node_id=node_id, connected_at=connected_at, router_type=WEBPUSH, expiry=user.expiry)
        return True, previous

    @_operation()
    def refresh_user(self, user: User) -> None:
        """At most daily (``User.due_for_refresh``); sets ``user.expiry``, as DynamoDB's."""
        if not user.due_for_refresh(self._now(), self._record_lifetime):
            return
        user.expiry = self._expiry_in(self._record_lifetime)
        item = self._user_item(user.uaid)
        if item is not None:
            item["expiry"] = user.expiry

    @_operation()
    def update_router_data(self, uaid: str, router_type: str, router_data: dict, connected_at: int) -> bool:
        item = self._user_item(uaid)
        if item is None:
            return False
        item.update(
            router_type=router_type,
            router_data=copy.deepcopy(router_data),
            connected_at=connected_at,
            expiry=self._expiry_in(self._record_lifetime),
        )
        return True

    @_operation()
    def set_min_urgency(self, user: User, urgency: str) -> bool:
        item = self._user_item(user.uaid)
        if item is None:
            return False
        item["urgency"] = urgency
        return True

    @_operation()
    def remove_node_id(self, uaid: str, node_id: str, connected_at: int) -> bool:
        item = self._user_item(uaid)
        if item is None or item.get("node_id") != node_id or item.get("connected_at") != connected_at:
            return False
        del item["node_id"]
        return True

    @_operation()
    def drop_user(self, uaid: str) -> bool:
        return self._live(self._users.pop(uaid, None)) is not None

    def holds_data_of(self, user: User) -> bool:
        return True

    def needs_migration(self, user: User) -> bool:
        return False

    @_operation()
    def migrate_user(self, user: User, bookmark: int | None) -> tuple[User, bool]:
        """Never needed (one place for everyone's data): the record as it is, nothing carried."""
        return copy.deepcopy(user), False

    # ---- channels

    def _channel_list(self, uaid: str) -> dict[str, Any] | None:
        return self._live(self._channel_lists.get(uaid))

    def _channels_of(self, uaid: str) -> list[str]:
        channel_list = self._channel_list(uaid) or {}
        return registered_channels({"chids": sorted(channel_list.get("chids", ()))})

    @_operation()
    def get_channels(self, user: User) -> list[str]:
        return self._channels_of(user.uaid)

    @_operation()
    def add_channel(self, user: User, channel_id: str) -> None:
        """Stored as given; reads skip what is not a dashed UUID (as DynamoDB's)."""
        channel_list = self._channel_list(user.uaid)
        if channel_list is None:
            channel_list = self._channel_lists[user.uaid] = {"chids": set()}
        channel_list["chids"].add(channel_id)
        channel_list["expiry"] = self._expiry_in(THIRTY_DAYS)

    @_operation()
    def remove_channel(self, user: User, channel_id: str) -> bool:
        channel_list = self._channel_list(user.uaid)
        if channel_list is None:
            return False
        channel_list["expiry"] = self._expiry_in(THIRTY_DAYS)
        if channel_id not in channel_list["chids"]:
            return False
        channel_list["chids"].discard(channel_id)
        return True

    @_operation()
    def touch_channels(self, user: User) -> None:
        channel_list = self._channel_list(user.uaid)
        if channel_list is not None:
            channel_list["expiry"] = self._expiry_in(THIRTY_DAYS)

    # ---- bookmark

    @_operation()
    def advance_bookmark(self, user: User, expected: int | None, bookmark: int) -> bool:
        """Conditional on the value read; creates the channel list if needed, as DynamoDB's update does."""
        channel_list = self._channel_list(user.uaid)
        if (channel_list or {}).get(BOOKMARK) != expected:
            return False
        if channel_list is None:
            channel_list = self._channel_lists[user.uaid] = {"chids": set()}
        channel_list[BOOKMARK] = bookmark
        channel_list["expiry"] = self._expiry_in(SIXTY_DAYS)
        return True

    def _lower_bookmark(self, uaid: str, below: int) -> None:
        """DynamoDB's ``lower_bookmark``: a higher bookmark goes to ``below - 1``, an absent one to 0."""
        channel_list = self._channel_list(uaid)
        if channel_list is None:
            return
        current = channel_list.get(BOOKMARK)
        if current is None:
            channel_list[BOOKMARK] = 0
        elif current > below - 1:
            channel_list[BOOKMARK] = below - 1

    # ---- messages

    def _put(self, uaid: str, notification: Notification) -> None:
        item = _copy_item(notification.to_item(uaid))
        self._messages[uaid][item["chidmessageid"]] = item

    @_operation()
    def save_message(self, user: User, notification: Notification) -> None:
        self._put(user.uaid, notification)

    @_operation()
    def save_late_messages(self, user: User, notifications: Sequence[Notification]) -> None:
        newest = {n.sort_key: n for n in notifications}
        for notification in newest.values():
            self._put(user.uaid, notification)
        stamps = [n.sortkey_timestamp for n in notifications if n.sortkey_timestamp is not None and not n.topic]
        if stamps:
            self._lower_bookmark(user.uaid, min(stamps))

    def _delete(self, uaid: str, sort_key: str, updateid: str | None) -> bool:
        messages = self._messages.get(uaid, {})
        if updateid is not None:
            item = self._live(messages.get(sort_key))
            if item is None or item.get("updateid") != updateid:
                return False
        messages.pop(sort_key, None)
        return True

    @_operation()
    def delete_message(self, user: User, sort_key: str, updateid: str | None = None) -> bool:
        return self._delete(user.uaid, sort_key, updateid)

    @_operation()
    def cancel_message(self, uaid: str, sort_key: str, updateid: str | None = None) -> bool:
        return self._delete(uaid, sort_key, updateid)

    def _read(self, uaid: str, wanted: Callable[[str], bool], limit: int) -> list[Notification]:
        """Up to ``limit`` live messages whose keys are ``wanted``, in key order."""
        messages = self._messages.get(uaid, {})
        keys = sorted(key for key, item in messages.items() if wanted(key) and self._live(item))
        found = []
        for key in keys[:limit]:
            notification = Notification.from_item(_copy_item(messages[key]))
            if notification is None:
                self._metrics.increment("database.unknown_sort_key")
                continue
            found.append(notification)
        return found

    @_operation()
    def fetch_topic_messages(self, user: User, limit: int = TOPIC_FETCH_LIMIT) -> tuple[int | None, list[Notification]]:
        """DynamoDB's query returns the channel list among the ``limit`` items: ``limit - 1`` messages."""
        bookmark = (self._channel_list(user.uaid) or {}).get(BOOKMARK)
        timestamp_head = TIMESTAMP_PREFIX + ":"
        return bookmark, self._read(user.uaid, lambda key: not key.startswith(timestamp_head), limit - 1)

    @_operation()
    def fetch_timestamp_messages(
        self, user: User, bookmark: int | None, limit: int = TIMESTAMP_FETCH_LIMIT
    ) -> tuple[int | None, list[Notification]]:
        after, timestamp_head = after_bookmark_key(bookmark), TIMESTAMP_PREFIX + ":"
        messages = self._read(user.uaid, lambda key: key.startswith(timestamp_head) and key > after, limit)
        stamps = [m.sortkey_timestamp for m in messages if m.sortkey_timestamp is not None]
        return (max(stamps) if stamps else None), messages


def _may_claim(item: dict[str, Any], connected_at: int) -> bool:
    """``HELLO_CONDITION`` on an existing record (a missing ``connected_at`` compares false)."""
    if item.get("router_type", WEBPUSH) != WEBPUSH:
        return False
    newer = item.get("connected_at") is not None and item["connected_at"] < connected_at
    return "node_id" not in item or newer


def _purge(items: dict[str, dict[str, Any]], live: Callable[[dict[str, Any]], dict[str, Any] | None]) -> int:
    expired = [key for key, item in items.items() if live(item) is None]
    for key in expired:
        del items[key]
    return len(expired)
