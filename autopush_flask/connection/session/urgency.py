"""The browser's minimum urgency, and the messages it holds back (docs/protocol.md#urgency).

A message below the minimum is never written to the client: a direct one
is stored instead, and drains leave stored ones where they are. The stored
bookmark never passes a held message (``held_floor``, read by the drain's
``_advance_bookmark``), so lowering the minimum and draining again finds
every one of them.
"""

from __future__ import annotations

from autopush_flask import urgency
from autopush_flask.connection.effects import Send
from autopush_flask.connection.protocol import Urgency, error_reply
from autopush_flask.connection.session.base import Effects, SessionBase
from autopush_flask.connection.storage_ops import SaveLateMessages, SetMinUrgency
from autopush_flask.db import Notification, StorageError
from autopush_flask.tracking import STORED

URGENCY_OK = {"messageType": "urgency", "status": 200}
# The record vanished under a connected client (the endpoint dropped it).
RECORD_GONE = 410
STORAGE_FAILED = 503


class UrgencyMixin(SessionBase):
    __slots__ = ()

    def _set_min_urgency(self, message: Urgency) -> Effects:
        """Keep the new minimum on the record, then look at storage if it went down."""
        user = self.known_user
        previous = user.urgency
        op = SetMinUrgency(user, message.minimum)
        try:
            found = yield op
        except StorageError as error:
            self._log_failure(op.name, error)
            yield Send(error_reply("urgency", STORAGE_FAILED, "storage error"))
            return
        if not found:
            yield Send(error_reply("urgency", RECORD_GONE, "uaid gone"))
            return
        user.urgency = message.minimum
        self.ctx.metrics.increment("ua.command.urgency", tags={"min": message.minimum})
        yield Send(URGENCY_OK)
        if urgency.is_below(message.minimum, previous):
            yield from self._start_drain()

    def _holds(self, notification: Notification) -> bool:
        return urgency.is_below(notification.urgency, self.known_user.urgency)

    def _hold_direct(self, notification: Notification) -> Effects:
        """A direct notification below the minimum: stored (unless the endpoint did), not sent.

        Its ``PUT /push`` came from an endpoint that read the record before
        the minimum rose. A failed write is retried in the background like a
        leaving client's notifications; a TTL 0 message is dropped, as the
        endpoint drops it.
        """
        if notification.stored or not notification.ttl:
            return
        stored = yield from self._best_effort(
            SaveLateMessages(self.known_user, (notification,)),
            retry_until=notification.timestamp + notification.ttl,
            message_ids=(notification.version,),
        )
        if stored:
            self.ctx.milestones.milestone(STORED, notification.sender)

    def _note_held(self, notification: Notification) -> None:
        """A stored message the drain leaves: the stored bookmark must stay below it."""
        stamp = notification.sortkey_timestamp
        if stamp is not None and not notification.topic and (self.held_floor is None or stamp < self.held_floor):
            self.held_floor = stamp
