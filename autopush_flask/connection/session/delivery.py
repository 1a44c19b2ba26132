"""Direct delivery and acknowledgements
(docs/protocol.md#ack, docs/protocol.md#nack, docs/protocol.md#direct-notifications).

What the session holds unacknowledged, what it stores when the client
leaves, and deleting stored copies once they are acknowledged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Generator, Iterable
from typing import Any

from autopush_flask.connection.effects import NodeRequest
from autopush_flask.connection.protocol import ACK_CODE_DECRYPTION_FAILED, Ack, AckedUpdate, Nack
from autopush_flask.connection.retries import report_given_up
from autopush_flask.connection.session.base import Effects, RecentVersions, SessionBase, log
from autopush_flask.connection.storage_ops import DeleteMessage, GetUser, SaveLateMessages
from autopush_flask.crypto.message_ids import InvalidMessageIdError, MessageId
from autopush_flask.db import Notification, StorageError
from autopush_flask.logging import log_fields
from autopush_flask.tracking import GIVEN_UP, STORED


class DeliveryMixin(SessionBase):
    __slots__ = ()

    def give_up_unstored(self, reason: str) -> None:
        """Count and log the direct notifications nobody will store, and forget them."""
        unstored = [n for n in self.unacked_direct.values() if not n.stored]
        self.unacked_direct = {}
        if unstored:
            report_given_up(self.ctx.metrics, "store_direct", reason, self.uaid or "", [n.version for n in unstored])
        for notification in unstored:
            self.ctx.milestones.milestone(GIVEN_UP, notification.sender)

    def _ack(self, message: Ack) -> Effects:
        self.ctx.metrics.increment("ua.command.ack")
        for update in message.updates:
            yield from self._ack_one(update)
        yield from self._after_acks()

    def _ack_one(self, update: AckedUpdate) -> Effects:
        """Forget an acknowledged notification and delete its stored copy, if it has one.

        Every stored message is deleted when acked, timestamp messages too:
        the bookmark stays a margin behind (``_advance_bookmark``), so a later
        drain re-reads the newest messages and must find only unacked ones.
        A direct notification has a stored copy only when the endpoint stored
        it first (durable direct delivery), or when the drain met it in
        storage while it awaited this ack; otherwise an ack costs no storage call.
        Any code acknowledges: a client that could not decrypt (101) would fail again.
        """
        version = update.version
        direct = self.unacked_direct.pop(version, None)
        stored = self.unacked_stored.pop(version, None)
        sent = direct or stored
        if sent is None:
            return
        self._count_ack_code(update.code, sent.channel_id)
        self.ctx.milestones.acked(sent, update.code, "Direct" if direct is not None else "Stored", self.ctx.clock())
        self._remember_ack(version)
        if direct is not None:
            self.stats.direct_acked += 1
        if stored is not None:
            self.stats.stored_acked += 1
        copy = stored or (direct if direct is not None and direct.stored else None)
        if copy is not None:
            yield from self._delete_stored(copy)

    def _count_ack_code(self, code: str, channel_id: str) -> None:
        """Per-update outcome, so operators see a rising decryption-failure rate.

        Only acks of notifications this session sent count: a made-up or
        repeated version cannot inflate the rate. The channel id logged is
        the notification's own, not the one the client wrote in its ack.
        """
        self.ctx.metrics.increment("ua.notification.ack", tags={"code": code})
        if code == ACK_CODE_DECRYPTION_FAILED:
            log.info("Decryption failed", extra=log_fields(channel_id=channel_id, uaid_hash=self.uaid))

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
        """Delete a stored message unless a newer one replaced it (docs/protocol.md#ack); ``True`` once done.

        A delete that fails is retried in the background until the message expires.
        """
        updateid = None if notification.legacy else notification.version
        store_key, user = notification.sort_key, self.known_user
        retry_until = notification.timestamp + notification.ttl if retry else None
        op = DeleteMessage(user, store_key, updateid)
        return (yield from self._best_effort(op, retry_until, (notification.version,)))

    def _nack(self, message: Nack) -> None:
        """Logged and counted; a nack is not an acknowledgement."""
        self.stats.nacks += 1
        self.ctx.metrics.increment("ua.command.nack", tags={"code": message.code})

    def _store_direct(self, queued: Iterable[Notification], keep_tracking: bool = False) -> Effects:
        """Write unacked and never-sent direct notifications to storage (docs/protocol.md#direct-notifications).

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
            n for n in [*self.unacked_direct.values(), *queued] if not n.stored and n.version not in self.unacked_stored
        ]
        if not pending or self.uaid is None or self.pending_user is not None:
            return
        uaid, user = self.uaid, self.known_user
        stored = yield from self._best_effort(
            SaveLateMessages(user, tuple(pending)),
            retry_until=max(n.timestamp + n.ttl for n in pending),
            message_ids=tuple(n.version for n in pending),
            notify=True,
        )
        self._mark_stored(pending)
        if not stored:
            return
        self.stats.direct_storage += len(pending)
        for notification in pending:
            self.ctx.milestones.milestone(STORED, notification.sender)
        try:
            user = yield GetUser(uaid)
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
            message_id is not None
            and message_id.kind == "timestamp"
            and message_id.names(self.known_uaid, notification.channel_id)
        ):
            stamp = message_id.sortkey_timestamp
        else:
            stamp = self.ctx.sortkeys.next()
        return dataclasses.replace(notification, sortkey_timestamp=stamp)
