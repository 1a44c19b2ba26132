"""Stored-message delivery: drains, the bookmark, rotation-mode migration
(docs/protocol.md#stored-messages, docs/architecture.md#monthly-rotation connection-node rule 4)."""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from autopush_flask.connection.effects import Retry, Schedule
from autopush_flask.connection.session.base import (
    BOOKMARK_RETRY_SECONDS,
    CHECK_AGAIN_DELAY,
    CLOSE_ERROR,
    CLOSE_NORMAL,
    DRAIN_RETRY_DELAY,
    IDENTIFIED,
    MIGRATION_RETRY_DELAY,
    Effects,
    SessionBase,
    log,
)
from autopush_flask.connection.storage_ops import (
    AdvanceBookmark,
    DropUser,
    FetchTimestampMessages,
    FetchTopicMessages,
    MigrateUser,
)
from autopush_flask.db import Notification, StorageError, StorageThrottled
from autopush_flask.logging import log_fields
from autopush_flask.tracking import DROPPED_MSG_LIMIT, EXPIRED, TRANSMITTED


class DrainMixin(SessionBase):
    __slots__ = ()

    def _start_drain(self) -> Effects:
        if self.draining:
            self.check_again = True
            return
        self.draining = True
        self.include_topic = True
        self.sent_from_storage = 0
        self.cursor = None  # each drain starts from the stored bookmark, read afresh
        self.held_floor = None
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
        user = self.known_user
        if self.include_topic:
            bookmark, messages = yield FetchTopicMessages(user)
            if self.cursor is None:
                self.cursor = self.stored_bookmark = bookmark
            if messages:
                self.batch_is_timestamp = False
                self.ctx.metrics.increment("notification.message.retrieved", len(messages), {"topic": True})
                return messages
            self.include_topic = False
        while True:
            cursor = self.cursor
            high, messages = yield FetchTimestampMessages(user, cursor)
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
        whose delete had not landed (deleted again). Not sent yet: a message
        below the client's minimum urgency (held, see ``session/urgency.py``).
        """
        now = self.ctx.clock()
        deleted = False
        for index, notification in enumerate(batch):
            version = notification.version
            if notification.expired(now):
                self.ctx.milestones.milestone(EXPIRED, notification.sender)
                if notification.deleted_on_ack:
                    deleted |= yield from self._delete_stored(notification, retry=False)
            elif version in self.unacked_direct:
                self.unacked_stored[version] = notification
            elif self.recent_acks is not None and version in self.recent_acks:
                deleted |= yield from self._delete_stored(notification)
            elif self._holds(notification):
                self._note_held(notification)
            elif not (yield from self._send_stored(notification)):
                for dropped in batch[index:]:  # the UAID was reset with these unsent
                    self.ctx.milestones.milestone(DROPPED_MSG_LIMIT, dropped.sender)
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
        self.ctx.milestones.milestone(TRANSMITTED, notification.sender)
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

        Nor does it pass a message this drain held back for its urgency: the
        drain that follows a lower minimum must read it again.
        """
        if self.batch_high is not None and (self.cursor is None or self.batch_high > self.cursor):
            self.cursor = self.batch_high
        if self.cursor is None:
            return
        target = min(self.cursor, self.ctx.stamp_at(self.drain_started - self.ctx.bookmark_margin))
        if self.held_floor is not None:
            target = min(target, self.held_floor - 1)  # a held message stays after the bookmark
        expected = self.stored_bookmark
        if expected is not None and target <= expected:
            return
        op = AdvanceBookmark(self.known_user, expected, target)
        try:
            moved = yield op
        except StorageError as error:
            self._log_failure(op.name, error)
            yield Retry(op, self.ctx.clock() + BOOKMARK_RETRY_SECONDS, self.known_uaid)
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
        yield from self._best_effort(DropUser(self.known_uaid))
        self.disconnect_reason = reason
        yield from self._close(CLOSE_NORMAL, "uaid reset")

    def _migrate(self) -> Effects:
        """Move the user's data where new data goes; what reached the old place meanwhile comes along.

        An endpoint that read the record before the switch stores in the old
        place, which this session no longer reads: the store carries such
        messages over (same keys and versions), and they are drained.
        """
        user, bookmark = self.known_user, self.stored_bookmark
        try:
            moved, carried = yield MigrateUser(user, bookmark)
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
