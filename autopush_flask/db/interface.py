"""The one storage interface: what nodes ask of a store, in a user's terms.

Every backend (``db/dynamodb``, ``db/postgres``, ``db/memory``) implements
``Storage``; nothing outside ``db/`` names a table, a month, a query or a
backend. Message and channel operations take the user's ``User`` record
rather than a bare UAID because a backend may keep a user's data in a place
the record names (DynamoDB's monthly tables, ``User.current_month``): the
caller carries the record it read, and the backend reads only what it owns.

Semantics every backend keeps (the shared suite in ``tests/storage`` holds
each of them to it):

- Router records: ``add_user`` creates only; ``claim_user`` succeeds only if
  the record exists, has the same (or no) router type and shows no
  connection at least as new; ``remove_node_id`` clears ``node_id`` only if
  it still names the given node *and* ``connected_at``. Records carry an
  ``expiry`` (unix seconds, refreshed by ``add_user``, ``claim_user``,
  ``update_router_data`` and ``refresh_user``); an expired record reads as
  absent at once, whenever the store gets round to deleting it.
- Messages: a topic message replaces the stored one with the same channel
  and topic; ``delete_message`` with an ``updateid`` deletes only if it was
  not replaced since; expired messages are never returned by reads (the
  session also checks); timestamp messages are read in sort-key order after
  the bookmark, topic messages first.
- Every operation raises only ``StorageError`` subclasses
  (``StorageThrottled``, ``StorageUnavailable``…) for store failures.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Protocol, runtime_checkable

from autopush_flask.db.models import Notification, User

TOPIC_FETCH_LIMIT = 11
TIMESTAMP_FETCH_LIMIT = 10


@runtime_checkable
class Storage(Protocol):
    """A push service's store: router records, channel lists, stored messages."""

    # ---- life cycle ---------------------------------------------------------

    def set_up(self) -> list[str]:
        """Create what is missing (when configured) and check the rest; return what was created.

        Raises ``StorageError``: ``retryable`` ones (store down, throttled)
        may be waited out; others (schema missing and not to be created,
        bad credentials) may not. Until it succeeds, a store built
        ``gated`` refuses data operations with ``StorageUnavailable``.
        """
        ...

    def is_ready(self) -> bool:
        """Whether ``set_up`` has succeeded, so data operations are allowed."""
        ...

    def maintain(self) -> None:
        """Periodic duty, cheap to call often (rotation: switch tables at the month's turn)."""
        ...

    def close(self) -> None:
        """Release the store's connections; the store is not used afterwards."""
        ...

    def check_health(self) -> dict[str, dict[str, str]]:
        """The store's entries of ``/health``: ``{"status": "OK"}`` or ``NOT OK`` with an error."""
        ...

    def maintain_tables(
        self, drop_older_than: int | None = None, dry_run: bool = False, purge_expired: bool = False
    ) -> Iterator[str]:
        """``flask maintain-tables``: create or migrate the schema, one report line per step.

        ``drop_older_than`` (months) drops old monthly tables where the backend
        has them; ``dry_run`` prints what would be done and changes nothing;
        ``purge_expired`` also deletes expired rows where the store does not do
        it by itself. Idempotent.
        """
        ...

    def purge_expired(self) -> int:
        """Delete expired records, channel lists and messages now; how many went (0 where the store expires them)."""
        ...

    # ---- router records -------------------------------------------------------

    def new_user(self, uaid: str, node_id: str | None, connected_at: int, **fields: object) -> User:
        """A record for a new UAID, placed where this store keeps new users' data (not yet written)."""
        ...

    def get_user(self, uaid: str) -> User | None:
        """The record, read consistently; ``None`` when absent or expired."""
        ...

    def get_user_with_channels(self, uaid: str) -> tuple[User | None, list[str] | None]:
        """The record and, when one round trip can fetch both, its channels (else ``None``)."""
        ...

    def add_user(self, user: User) -> bool:
        """Write a new record; ``False`` when one exists already."""
        ...

    def claim_user(self, user: User, node_id: str, connected_at: int) -> tuple[bool, User | None]:
        """The hello update: point ``user`` at ``node_id``; return success and the record before."""
        ...

    def refresh_user(self, user: User) -> None:
        """Push back the record's expiry (on register, after a bridge delivery).

        Writes only when ``user.due_for_refresh`` (at most daily), and then
        sets ``user.expiry``, so callers may call it on every such event.
        ``claim_user`` sets ``user.expiry`` too when it succeeds.
        """
        ...

    def update_router_data(self, uaid: str, router_type: str, router_data: dict, connected_at: int) -> bool:
        """Bridge token update; ``False`` when the record is gone."""
        ...

    def remove_node_id(self, uaid: str, node_id: str, connected_at: int) -> bool:
        """Forget ``node_id`` only if the record still names this node and connection."""
        ...

    def set_min_urgency(self, user: User, urgency: str) -> bool:
        """Keep the browser's minimum urgency on its record (docs/protocol.md#urgency); ``False`` when it is gone.

        Nothing else of the record changes, its expiry neither: the browser
        is connected, and its hello refreshed that.
        """
        ...

    def drop_user(self, uaid: str) -> bool:
        """Delete the record (its messages expire on their own); ``True`` if there was one."""
        ...

    def holds_data_of(self, user: User) -> bool:
        """``False`` when the record points at data this store no longer has (a dropped month)."""
        ...

    def needs_migration(self, user: User) -> bool:
        """Whether the user's data should move where new data goes (a returning user of an old month)."""
        ...

    def migrate_user(self, user: User, bookmark: int | None) -> tuple[User, bool]:
        """Move the channels, repoint the record, carry over late messages; ``(moved record, carried any)``."""
        ...

    # ---- channels ----------------------------------------------------------------

    def get_channels(self, user: User) -> list[str]:
        """Registered channel ids (dashed UUIDs)."""
        ...

    def add_channel(self, user: User, channel_id: str) -> None: ...

    def remove_channel(self, user: User, channel_id: str) -> bool:
        """``True`` iff the channel was registered."""
        ...

    def touch_channels(self, user: User) -> None:
        """Keep a connected user's channel list from expiring."""
        ...

    # ---- messages ----------------------------------------------------------------------

    def save_message(self, user: User, notification: Notification) -> None:
        """Store one message (a topic message replaces its predecessor)."""
        ...

    def save_late_messages(self, user: User, notifications: Sequence[Notification]) -> None:
        """Store messages stamped earlier than a drain may have read past, and lower the bookmark under them.

        Of two with the same key (same channel and topic) the last is kept.
        """
        ...

    def delete_message(self, user: User, sort_key: str, updateid: str | None = None) -> bool:
        """Delete one message; with ``updateid`` only if it was not replaced since."""
        ...

    def cancel_message(self, uaid: str, sort_key: str, updateid: str | None = None) -> bool:
        """``delete_message`` for a sender who knows only the UAID (``DELETE /m/…``)."""
        ...

    def fetch_topic_messages(self, user: User, limit: int = TOPIC_FETCH_LIMIT) -> tuple[int | None, list[Notification]]:
        """The bookmark, and up to ``limit - 1`` topic (and legacy) messages in sort-key order."""
        ...

    def fetch_timestamp_messages(
        self, user: User, bookmark: int | None, limit: int = TIMESTAMP_FETCH_LIMIT
    ) -> tuple[int | None, list[Notification]]:
        """Up to ``limit`` timestamp messages after ``bookmark``, and the highest stamp among them."""
        ...

    def advance_bookmark(self, user: User, expected: int | None, bookmark: int) -> bool:
        """Move the bookmark from ``expected`` (``None``: unset) to ``bookmark``; ``False`` if it moved meanwhile."""
        ...
