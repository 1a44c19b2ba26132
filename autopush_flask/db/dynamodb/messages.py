"""Message-table operations (docs/architecture.md#storage-interface): channel lists and stored notifications."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from autopush_flask.db.dynamodb.attributes import StringSet, from_item, to_attribute, to_item
from autopush_flask.db.dynamodb.client import DynamoCalls
from autopush_flask.db.errors import ConditionFailed, StorageUnavailable
from autopush_flask.db.models import (
    CHANNEL_LIST_KEY,
    SIXTY_DAYS,
    THIRTY_DAYS,
    TIMESTAMP_PREFIX,
    Notification,
    after_bookmark_key,
    parse_notifications,
    registered_channels,
)

BATCH_WRITE_LIMIT = 25
BATCH_RESEND_ATTEMPTS = 8
TOPIC_FETCH_LIMIT = 11
TIMESTAMP_FETCH_LIMIT = 10


class MessageStore:
    """Operations on one message table (the only one, or one month's)."""

    def __init__(
        self,
        db: DynamoCalls,
        table: str,
        metrics: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self.table = table
        self._metrics = metrics
        self._clock = clock

    # ---- channel list (the " " item)

    def _channel_list_key(self, uaid: str) -> dict:
        return {"uaid": {"S": uaid}, "chidmessageid": {"S": CHANNEL_LIST_KEY}}

    def _expiry(self, lifetime: int) -> dict:
        return to_attribute(int(self._clock()) + lifetime)

    def add_channel(self, uaid: str, channel_id: str) -> None:
        self.add_channels(uaid, [channel_id])

    def add_channels(self, uaid: str, channel_ids: Iterable[str]) -> None:
        """Add to the channel set, creating the channel-list item if needed."""
        self._db.call(
            "update_item",
            TableName=self.table,
            Key=self._channel_list_key(uaid),
            UpdateExpression="ADD chids :chids SET expiry = :expiry",
            ExpressionAttributeValues={
                ":chids": to_attribute(StringSet(channel_ids)),
                ":expiry": self._expiry(THIRTY_DAYS),
            },
        )

    def remove_channel(self, uaid: str, channel_id: str) -> bool:
        """Remove from the channel set; ``True`` iff it was registered."""
        try:
            response = self._db.call(
                "update_item",
                TableName=self.table,
                Key=self._channel_list_key(uaid),
                UpdateExpression="DELETE chids :chids SET expiry = :expiry",
                ConditionExpression="attribute_exists(uaid)",
                ExpressionAttributeValues={
                    ":chids": to_attribute(StringSet([channel_id])),
                    ":expiry": self._expiry(THIRTY_DAYS),
                },
                ReturnValues="UPDATED_OLD",
            )
        except ConditionFailed:
            return False
        return channel_id in from_item(response.get("Attributes")).get("chids", [])

    def get_channels(self, uaid: str) -> list[str]:
        """Registered CHIDs (dashed), ignoring entries that are not UUIDs."""
        response = self._db.call(
            "get_item",
            TableName=self.table,
            Key=self._channel_list_key(uaid),
            ConsistentRead=True,
        )
        return registered_channels(from_item(response.get("Item")))

    def save_channels(self, uaid: str, channel_ids: Iterable[str]) -> None:
        """Rotation-mode migration: overwrite the channel list in this table."""
        chids = StringSet(channel_ids)
        item: dict[str, object] = {"uaid": uaid, "chidmessageid": CHANNEL_LIST_KEY, "chids": chids or None}
        item["expiry"] = int(self._clock()) + THIRTY_DAYS
        self._db.call("put_item", TableName=self.table, Item=to_item(item))

    def touch_channels(self, uaid: str) -> None:
        """Keep a connected user's subscriptions from expiring (docs/architecture.md#dynamodb)."""
        # ConditionFailed: no channel list (yet), nothing to keep
        with contextlib.suppress(ConditionFailed):
            self._db.call(
                "update_item",
                TableName=self.table,
                Key=self._channel_list_key(uaid),
                UpdateExpression="SET expiry = :expiry",
                ConditionExpression="attribute_exists(uaid)",
                ExpressionAttributeValues={":expiry": self._expiry(THIRTY_DAYS)},
            )

    def update_bookmark(self, uaid: str, sortkey_timestamp: int) -> None:
        self._db.call(
            "update_item",
            TableName=self.table,
            Key=self._channel_list_key(uaid),
            UpdateExpression="SET #bookmark = :bookmark, expiry = :expiry",
            ExpressionAttributeNames={"#bookmark": "current_timestamp"},
            ExpressionAttributeValues={
                ":bookmark": to_attribute(sortkey_timestamp),
                ":expiry": self._expiry(SIXTY_DAYS),
            },
        )

    def advance_bookmark(self, uaid: str, expected: int | None, bookmark: int) -> bool:
        """Move the bookmark from ``expected`` (``None``: not set) to ``bookmark``.

        ``False`` when it no longer holds ``expected``: another session moved
        it, or a late writer lowered it (``lower_bookmark``); the caller reads
        it again rather than overwrite a lowering, which would hide the
        messages the lowering was for.
        """
        if expected is None:
            condition, values = "attribute_not_exists(#bookmark)", {}
        else:
            condition, values = "#bookmark = :expected", {":expected": to_attribute(expected)}
        try:
            self._db.call(
                "update_item",
                TableName=self.table,
                Key=self._channel_list_key(uaid),
                UpdateExpression="SET #bookmark = :bookmark, expiry = :expiry",
                ConditionExpression=condition,
                ExpressionAttributeNames={"#bookmark": "current_timestamp"},
                ExpressionAttributeValues={
                    ":bookmark": to_attribute(bookmark),
                    ":expiry": self._expiry(SIXTY_DAYS),
                    **values,
                },
            )
        except ConditionFailed:
            return False
        return True

    def lower_bookmark(self, uaid: str, below: int) -> None:
        """Make sure the bookmark is below ``below``, for messages written under an older stamp.

        A bookmark above it is set to ``below - 1``. An absent one means "read
        from the start" and must stay that way for messages stored before,
        but a session that read it absent may be about to set it
        (``advance_bookmark`` with ``expected=None``): it is set to 0, which
        also reads from the start, so that session's write fails and it reads
        the bookmark again (no channel-list item: no subscriptions, nothing to
        do). Two conditional writes at most; a condition that fails means
        there is nothing to do.
        """
        lowered = below - 1
        for condition, value in (
            ("#bookmark > :bookmark", lowered),
            ("attribute_exists(uaid) AND attribute_not_exists(#bookmark)", 0),
        ):
            try:
                self._db.call(
                    "update_item",
                    TableName=self.table,
                    Key=self._channel_list_key(uaid),
                    UpdateExpression="SET #bookmark = :bookmark",
                    ConditionExpression=condition,
                    ExpressionAttributeNames={"#bookmark": "current_timestamp"},
                    ExpressionAttributeValues={":bookmark": to_attribute(value)},
                )
                return
            except ConditionFailed:
                continue

    # ---- notifications

    def save_message(self, uaid: str, notification: Notification) -> None:
        """Unconditional put: a topic message replaces its predecessor."""
        self._db.call("put_item", TableName=self.table, Item=to_item(notification.to_item(uaid)))

    def save_messages(self, uaid: str, notifications: Sequence[Notification]) -> None:
        """Batch writes of at most 25, resending whatever DynamoDB left unprocessed.

        DynamoDB refuses a whole batch whose keys repeat, and two topic
        messages of one channel share a key: only the last (newest) of them
        is written, as a put of each in turn would leave.
        """
        newest = {n.sort_key: n for n in notifications}
        items = [{"PutRequest": {"Item": to_item(n.to_item(uaid))}} for n in newest.values()]
        for start in range(0, len(items), BATCH_WRITE_LIMIT):
            self._write_batch(items[start : start + BATCH_WRITE_LIMIT])

    def save_late_messages(self, uaid: str, notifications: Sequence[Notification]) -> None:
        """Save messages whose stamps may be older than the bookmark, then lower it below them.

        A connection node stores a direct notification it could not deliver
        under the stamp the endpoint gave it, possibly long ago (it waited
        unacknowledged on a socket, or in the retry queue): a drain may have
        moved the bookmark past that stamp meanwhile. Saving first, then
        lowering, leaves no moment where the message is stored below a
        bookmark that nobody will lower.
        """
        self.save_messages(uaid, notifications)
        stamps = [n.sortkey_timestamp for n in notifications if n.sortkey_timestamp is not None and not n.topic]
        if stamps:
            self.lower_bookmark(uaid, min(stamps))

    def _write_batch(self, requests: list[dict]) -> None:
        pending = {self.table: requests}
        for _ in range(BATCH_RESEND_ATTEMPTS):
            response = self._db.call("batch_write_item", RequestItems=pending)
            pending = response.get("UnprocessedItems") or {}
            if not pending:
                return
            self._metrics.increment("database.retry", tags={"operation": "batch_write_item"})
        raise StorageUnavailable("batch_write_item: items left unprocessed", "batch_write_item")

    def delete_message(self, uaid: str, sort_key: str, updateid: str | None = None) -> bool:
        """Delete one message; with ``updateid`` only if it was not replaced since."""
        condition = {}
        if updateid is not None:
            condition = {
                "ConditionExpression": "updateid = :updateid",
                "ExpressionAttributeValues": {":updateid": to_attribute(updateid)},
            }
        try:
            self._db.call(
                "delete_item",
                TableName=self.table,
                Key={"uaid": {"S": uaid}, "chidmessageid": {"S": sort_key}},
                **condition,
            )
        except ConditionFailed:
            return False
        return True

    def fetch_topic_messages(self, uaid: str, limit: int = TOPIC_FETCH_LIMIT) -> tuple[int | None, list[Notification]]:
        """The bookmark and up to ``limit - 1`` topic (and legacy) messages."""
        items = self._query(uaid, "chidmessageid < :key", TIMESTAMP_PREFIX, limit)
        bookmark = None
        if items and items[0]["chidmessageid"] == CHANNEL_LIST_KEY:
            bookmark = items.pop(0).get("current_timestamp")
        return bookmark, self._parse(items)

    def fetch_timestamp_messages(
        self, uaid: str, bookmark: int | None, limit: int = TIMESTAMP_FETCH_LIMIT
    ) -> tuple[int | None, list[Notification]]:
        """Messages after the bookmark, and the highest sort-key timestamp among them."""
        items = self._query(uaid, "chidmessageid > :key", after_bookmark_key(bookmark), limit)
        messages = self._parse(items, keep_expired=True)
        stamps = [m.sortkey_timestamp for m in messages if m.sortkey_timestamp is not None]
        # The highest stamp counts expired messages too, so a page of only
        # expired ones still moves the reader on past them.
        return (max(stamps) if stamps else None), self._unexpired(messages)

    def _query(self, uaid: str, key_condition: str, bound: str, limit: int) -> list[dict]:
        response = self._db.call(
            "query",
            TableName=self.table,
            KeyConditionExpression=f"uaid = :uaid AND {key_condition}",
            ExpressionAttributeValues={":uaid": {"S": uaid}, ":key": {"S": bound}},
            ConsistentRead=True,
            Limit=limit,
        )
        return [from_item(item) for item in response.get("Items", [])]

    def _parse(self, items: list[dict], keep_expired: bool = False) -> list[Notification]:
        messages = parse_notifications(items, self._metrics)
        return messages if keep_expired else self._unexpired(messages)

    def _unexpired(self, messages: list[Notification]) -> list[Notification]:
        """DynamoDB's TTL deletes expired items up to two days late; until then reads skip them.

        A topic page made only of expired messages comes back empty and
        hides any later topic messages until the TTL catches up: a user
        needs more than ten expired topic messages at once for that.
        """
        now = self._clock()
        return [m for m in messages if not m.expired(now)]
