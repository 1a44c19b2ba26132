"""Router records and stored notifications as plain Python values (docs/architecture.md#records-and-messages)."""

from __future__ import annotations

import dataclasses
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

CHANNEL_LIST_KEY = " "
TOPIC_PREFIX = "01"
TIMESTAMP_PREFIX = "02"
# Sorts just after every "01:" key, so a query "> 01;" starts at timestamp keys.
AFTER_TOPICS = "01;"
THIRTY_DAYS = 30 * 24 * 3600
SIXTY_DAYS = 60 * 24 * 3600
# A router record's expiry is pushed back when less than its lifetime minus this remains.
REFRESH_SLACK = 24 * 3600
WEBPUSH = "webpush"


def topic_sort_key(channel_id: str, topic: str) -> str:
    return f"{TOPIC_PREFIX}:{channel_id}:{topic}"


def timestamp_sort_key(sortkey_timestamp: int, channel_id: str) -> str:
    return f"{TIMESTAMP_PREFIX}:{sortkey_timestamp}:{channel_id}"


def after_bookmark_key(bookmark: int | None) -> str:
    """The exclusive lower bound of a timestamp query (docs/protocol.md#stored-messages step 3)."""
    return AFTER_TOPICS if bookmark is None else f"{TIMESTAMP_PREFIX}:{bookmark}:z"


def is_dashed_uuid(text: str) -> bool:
    try:
        return str(uuid.UUID(text)) == text
    except (ValueError, TypeError, AttributeError):
        return False


def registered_channels(channel_list_item: dict[str, Any] | None) -> list[str]:
    """The CHIDs of a channel-list item, ignoring entries that are not dashed UUIDs."""
    chids = (channel_list_item or {}).get("chids", [])
    return [chid for chid in chids if is_dashed_uuid(chid)]


@dataclass
class User:
    """One router record. Absent attributes are ``None`` and never written."""

    uaid: str
    router_type: str | None = WEBPUSH
    connected_at: int | None = None
    node_id: str | None = None
    record_version: int | None = None
    router_data: dict | None = None
    current_month: str | None = None
    last_connect: int | None = None
    critical_failure: str | None = None
    expiry: int | None = None
    # The lowest urgency the browser asked for (docs/protocol.md#urgency);
    # ``None``: every level.
    urgency: str | None = None

    def to_item(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    def due_for_refresh(self, now: float, lifetime: int) -> bool:
        """Whether ``refresh_user`` should write: at most once a day per record.

        Registers and bridge deliveries call it freely; a write each time
        would double their storage cost for a date that moves by seconds.
        """
        return self.expiry is None or self.expiry - now < lifetime - REFRESH_SLACK

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> User:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in item.items() if k in names})


@dataclass
class Notification:
    """A push message as stored, routed between nodes and sent to clients.

    ``sortkey_timestamp`` is set for timestamp messages, ``topic`` for topic
    messages, ``legacy`` for very old ``{chid}:{version}`` items (delivered
    like topic messages and deleted on ack).
    """

    channel_id: str
    version: str
    ttl: int
    timestamp: int
    topic: str | None = None
    sortkey_timestamp: int | None = None
    data: str | None = None
    headers: dict[str, str] | None = field(default=None)
    legacy: bool = False
    # The sender's Urgency header; ``None`` for "normal" (docs/protocol.md#urgency).
    urgency: str | None = None
    # The domain of the sender's VAPID ``sub``, kept only while delivery
    # tracking tags senders (docs/operations.md#delivery-tracking).
    sender: str | None = None
    # Already in the message table (read from it, or stored by the endpoint
    # before handing it to a node): never stored again by a node.
    stored: bool = False

    @property
    def sort_key(self) -> str:
        if self.legacy:
            return f"{self.channel_id}:{self.version}"
        if self.topic:
            return topic_sort_key(self.channel_id, self.topic)
        # set for every timestamp message (see the class doc)
        return timestamp_sort_key(self.sortkey_timestamp, self.channel_id)  # type: ignore[arg-type]

    @property
    def deleted_on_ack(self) -> bool:
        """Topic and legacy items are deleted on ack; timestamp items expire."""
        return bool(self.topic) or self.legacy

    def expired(self, now: float) -> bool:
        return now >= self.timestamp + self.ttl

    def to_item(self, uaid: str) -> dict[str, Any]:
        return {
            "uaid": uaid,
            "chidmessageid": self.sort_key,
            "ttl": self.ttl,
            "timestamp": self.timestamp,
            "updateid": self.version,
            "expiry": self.timestamp + min(self.ttl, THIRTY_DAYS),
            "data": self.data or None,
            "headers": (self.headers or None) if self.data else None,
            "urgency": self.urgency,
            "sender": self.sender,
        }

    @classmethod
    def from_item(cls, item: dict[str, Any]) -> Notification | None:
        """Parse a message item; ``None`` for keys that match no known format."""
        parsed = _parse_sort_key(item.get("chidmessageid", ""))
        if parsed is None:
            return None
        return cls(
            version=item.get("updateid") or parsed.pop("version", ""),
            ttl=int(item.get("ttl", 0)),
            timestamp=int(item.get("timestamp", 0)),
            data=item.get("data"),
            headers=item.get("headers"),
            urgency=item.get("urgency"),
            sender=item.get("sender"),
            stored=True,
            **{k: v for k, v in parsed.items() if k != "version"},
        )


def parse_notifications(items: Iterable[dict[str, Any]], metrics: Any) -> list[Notification]:
    """Stored items as notifications; items whose key matches no format are counted and skipped."""
    messages = []
    for item in items:
        message = Notification.from_item(item)
        if message is None:
            metrics.increment("database.unknown_sort_key")
            continue
        messages.append(message)
    return messages


def _parse_sort_key(key: str) -> dict[str, Any] | None:
    prefix, _, rest = key.partition(":")
    if prefix == TOPIC_PREFIX:
        channel_id, _, topic = rest.partition(":")
        if is_dashed_uuid(channel_id) and topic:
            return {"channel_id": channel_id, "topic": topic}
        return None
    if prefix == TIMESTAMP_PREFIX:
        stamp, _, channel_id = rest.partition(":")
        if stamp.isdigit() and is_dashed_uuid(channel_id):
            return {"channel_id": channel_id, "sortkey_timestamp": int(stamp)}
        return None
    channel_id, _, version = key.partition(":")
    if is_dashed_uuid(channel_id) and version:
        return {"channel_id": channel_id, "version": version, "legacy": True}
    return None


class SortKeyClock:
    """Microsecond sort-key timestamps, strictly increasing within a process.

    Two messages for one channel in the same microsecond would share a key
    and the second would silently replace the first (docs/architecture.md#records-and-messages).
    """

    __slots__ = ("_clock", "_last")

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(int(self._clock() * 1_000_000), self._last + 1)
        return self._last
