"""What the admin view shows of one UAID: its record, channels and stored messages' counts and ages.

Read through the storage interface only (docs/architecture.md#storage-interface).
Of stored messages only counts and times are kept: never ``data``,
``headers`` or versions (a version is a message id, a capability). Reads are
bounded: at most ``COUNT_LIMIT`` messages of each kind are counted (more
show as ``1000+``), in pages, so a UAID with a flood of stored messages
costs the store a few queries.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from autopush_flask.db.interface import Storage
from autopush_flask.db.models import Notification, User

COUNT_LIMIT = 1000
PAGE = 100
# Pages of timestamp messages read at most; expired ones still in DynamoDB
# (its TTL deletes up to two days late) fill pages without being counted.
MAX_PAGES = 2 * COUNT_LIMIT // PAGE
RECORD_FIELDS = (
    "router_type",
    "node_id",
    "connected_at",
    "last_connect",
    "expiry",
    "current_month",
    "record_version",
    "critical_failure",
)


def _record(user: User) -> dict[str, Any]:
    record: dict[str, Any] = {name: getattr(user, name) for name in RECORD_FIELDS}
    # Bridge tokens are capabilities: only which keys the record holds.
    record["router_data_keys"] = sorted(user.router_data) if isinstance(user.router_data, dict) else []
    return record


def _summary(messages: list[Notification], more: bool, now: float) -> dict[str, Any]:
    stamps = [m.timestamp for m in messages]
    # "1000+": the read stopped there (for messages after the bookmark: at
    # least this many, among the first COUNT_LIMIT read).
    count: int | str = f"{len(messages)}+" if more else len(messages)
    return {
        "count": count,
        "oldest": min(stamps) if stamps else None,
        "newest": max(stamps) if stamps else None,
        "oldest_age_seconds": int(now - min(stamps)) if stamps else None,
        "newest_age_seconds": int(now - max(stamps)) if stamps else None,
    }


def _timestamp_messages(storage: Storage, user: User) -> tuple[list[Notification], bool]:
    """Every stored timestamp message (delivered ones too: they stay until they expire), bounded."""
    found: list[Notification] = []
    after: int | None = None
    for _ in range(MAX_PAGES):
        stamp, messages = storage.fetch_timestamp_messages(user, after, limit=PAGE)
        found.extend(messages)
        if len(found) > COUNT_LIMIT:
            return found[:COUNT_LIMIT], True
        if stamp is None or (after is not None and stamp <= after):
            return found, False
        after = stamp
    return found, True


def _by_channel(messages: Iterable[Notification]) -> Counter[str]:
    return Counter(message.channel_id for message in messages)


def uaid_report(storage: Storage, uaid: str, uaid_hash: str, now: float | None = None) -> dict[str, Any] | None:
    """The admin view of ``uaid`` (32 hex digits), or ``None`` when it has no (unexpired) record.

    Raises ``StorageError`` when the store fails.
    """
    now = time.time() if now is None else now
    user = storage.get_user(uaid)
    if user is None:
        return None
    channels = sorted(storage.get_channels(user))
    bookmark, topics = storage.fetch_topic_messages(user, limit=COUNT_LIMIT + 2)
    more_topics = len(topics) > COUNT_LIMIT
    topics = topics[:COUNT_LIMIT]
    stamped, more_stamped = _timestamp_messages(storage, user)
    pending = [m for m in stamped if bookmark is None or (m.sortkey_timestamp or 0) > bookmark]
    per_channel = _by_channel([*topics, *stamped])
    return {
        "uaid": uaid,
        "uaid_hash": uaid_hash,
        "record": _record(user),
        "channels": {
            "count": len(channels),
            "list": [{"channel_id": chid, "stored_messages": per_channel.get(chid, 0)} for chid in channels],
        },
        "messages": {
            "limit": COUNT_LIMIT,
            "bookmark": bookmark,
            "topic": _summary(topics, more_topics, now),
            "timestamp": _summary(stamped, more_stamped, now),
            "timestamp_after_bookmark": _summary(pending, more_stamped, now),
        },
    }
