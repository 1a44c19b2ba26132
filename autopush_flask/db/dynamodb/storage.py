"""The DynamoDB backend of ``Storage``: the router table and one or monthly message tables."""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from autopush_flask.config import Settings
from autopush_flask.db.dynamodb.attributes import from_item
from autopush_flask.db.dynamodb.client import DynamoDB, connect
from autopush_flask.db.dynamodb.maintenance import maintenance_lines
from autopush_flask.db.dynamodb.messages import MessageStore
from autopush_flask.db.dynamodb.rotation import MessageTables, connected_this_month, last_connect_value
from autopush_flask.db.dynamodb.router import RouterStore
from autopush_flask.db.dynamodb.startup import ItemGate
from autopush_flask.db.dynamodb.tables import TableAdmin
from autopush_flask.db.errors import StorageError, TableMissing
from autopush_flask.db.interface import TIMESTAMP_FETCH_LIMIT, TOPIC_FETCH_LIMIT
from autopush_flask.db.models import CHANNEL_LIST_KEY, Notification, User, registered_channels

DAY = 24 * 3600


class DynamoStorage:
    """``Storage`` on DynamoDB; ``router``, ``tables``, ``admin`` and ``messages()`` are its own parts."""

    def __init__(
        self,
        db: DynamoDB | ItemGate,
        settings: Settings,
        metrics: Any,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self.admin = TableAdmin(db)
        self.router = RouterStore(db, settings.router_table, settings.router_ttl_days * DAY, clock)
        self.tables = MessageTables(
            self.admin,
            settings.message_table,
            rotation=settings.table_rotation,
            create=settings.create_tables,
            capacity=(settings.message_read_throughput, settings.message_write_throughput),
            clock=self._now,
        )
        self._stores: dict[str, MessageStore] = {}

    def _now(self) -> dt.datetime:
        """Local time: monthly tables and ``last_connect`` follow the host's calendar."""
        return dt.datetime.fromtimestamp(self._clock())

    @property
    def rotation(self) -> bool:
        return self.tables.rotation

    def messages(self, table: str | None = None) -> MessageStore:
        """Message operations on ``table`` (default: the node's current table)."""
        name = table or self.tables.current
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = MessageStore(self.db, name, self._metrics, self._clock)
        return store

    def _table_of(self, user: User) -> str:
        """The table holding a user's data: the only one, or the month the record names."""
        if not self.rotation:
            return self.tables.current
        return user.current_month or self.tables.current

    def _store_of(self, user: User) -> MessageStore:
        return self.messages(self._table_of(user))

    # ---- life cycle

    def set_up(self) -> list[str]:
        """Create missing tables when configured, else insist they exist; learn the message tables."""
        created = []
        settings = self._settings
        if settings.create_tables and self.admin.ensure_router_table(
            settings.router_table, settings.router_read_throughput, settings.router_write_throughput
        ):
            created.append(settings.router_table)
        created += self.tables.start()
        if not settings.create_tables:
            self._require_tables()
        if isinstance(self.db, ItemGate):
            self.db.open()
        return created

    def _require_tables(self) -> None:
        """A node whose tables are missing could only answer errors, and waiting cannot fix that."""
        for table in (self.router.table, self.tables.current):
            if self.admin.describe(table) is None:
                raise TableMissing(
                    f"table {table} does not exist and AUTOPUSH_CREATE_TABLES is false", "describe_table"
                )

    def is_ready(self) -> bool:
        return not isinstance(self.db, ItemGate) or self.db.is_open

    def maintain(self) -> None:
        self.tables.maybe_refresh()

    def maintain_tables(
        self, drop_older_than: int | None = None, dry_run: bool = False, purge_expired: bool = False
    ) -> Iterator[str]:
        if dry_run:
            yield "DynamoDB: --dry-run changes nothing; tables are created as listed without it"
            return
        yield from maintenance_lines(self.admin, self._settings, self._now(), drop_older_than)
        if purge_expired:
            yield "DynamoDB: expired items are deleted by the table's TTL; nothing to purge"

    def purge_expired(self) -> int:
        """DynamoDB's TTL deletes expired items itself; reads already skip them."""
        return 0

    def close(self) -> None:
        """Nothing to release: idle keep-alive connections close with the process."""

    def check_health(self) -> dict[str, dict[str, str]]:
        """The per-table entries of ``/health`` (docs/protocol.md#health)."""
        return {
            "router_table": self._table_health(self.router.table),
            "message_table": self._table_health(self.tables.current),
        }

    def _table_health(self, name: str) -> dict[str, str]:
        try:
            info = self.admin.describe(name)
        except StorageError:
            return {"status": "NOT OK", "error": "Server error"}
        except Exception:  # noqa: BLE001 - health must answer, whatever broke
            return {"status": "NOT OK", "error": "Internal error"}
        if info is None:
            return {"status": "NOT OK", "error": "Nonexistent table"}
        return {"status": "OK"}

    # ---- router records

    def new_user(self, uaid: str, node_id: str | None, connected_at: int, **fields: Any) -> User:
        user = User(uaid=uaid, node_id=node_id, connected_at=connected_at, record_version=1, **fields)
        if self.rotation:
            user.current_month = self.tables.current
            user.last_connect = last_connect_value(self._now())
        return user

    def get_user(self, uaid: str) -> User | None:
        return self.router.get_user(uaid)

    def get_user_with_channels(self, uaid: str) -> tuple[User | None, list[str] | None]:
        """The router record and, in single-table mode, the channel list in one call.

        Every push needs both; one BatchGetItem costs half the client CPU of
        two GetItems. In rotation mode the table depends on the record, so
        the channels come back as ``None`` for the caller to read.
        """
        if self.rotation:
            return self.router.get_user(uaid), None
        router_table, message_table = self.router.table, self.tables.current
        response = self.db.call(
            "batch_get_item",
            RequestItems={
                router_table: {"Keys": [{"uaid": {"S": uaid}}], "ConsistentRead": True},
                message_table: {
                    "Keys": [{"uaid": {"S": uaid}, "chidmessageid": {"S": CHANNEL_LIST_KEY}}],
                    "ConsistentRead": True,
                },
            },
        )
        if response.get("UnprocessedKeys"):
            return self.router.get_user(uaid), self.messages().get_channels(uaid)
        found = response.get("Responses", {})
        user_items = [from_item(item) for item in found.get(router_table, [])]
        channel_items = [from_item(item) for item in found.get(message_table, [])]
        user = self.router.user_from_item(uaid, user_items[0] if user_items else {})
        return user, registered_channels(channel_items[0] if channel_items else None)

    def add_user(self, user: User) -> bool:
        return self.router.add_user(user)

    def claim_user(self, user: User, node_id: str, connected_at: int) -> tuple[bool, User | None]:
        """Rotation mode refreshes ``last_connect`` only once a month (docs/protocol.md#hello)."""
        update = User(uaid=user.uaid, node_id=node_id, connected_at=connected_at)
        if self.rotation and not connected_this_month(user.last_connect, self._now()):
            update.last_connect = last_connect_value(self._now())
        claimed, previous = self.router.update_user(update)
        if claimed:
            user.expiry = self.router.expiry()
        return claimed, (User.from_item(previous) if previous else None)

    def refresh_user(self, user: User) -> None:
        lifetime = self._settings.router_ttl_days * DAY
        if user.due_for_refresh(self._clock(), lifetime):
            self.router.refresh(user.uaid)
            user.expiry = int(self._clock()) + lifetime

    def update_router_data(self, uaid: str, router_type: str, router_data: dict, connected_at: int) -> bool:
        return self.router.update_router_data(uaid, router_type, router_data, connected_at)

    def set_min_urgency(self, user: User, urgency: str) -> bool:
        return self.router.set_min_urgency(user.uaid, urgency)

    def remove_node_id(self, uaid: str, node_id: str, connected_at: int) -> bool:
        return self.router.remove_node_id(uaid, node_id, connected_at)

    def drop_user(self, uaid: str) -> bool:
        return self.router.drop_user(uaid)

    def holds_data_of(self, user: User) -> bool:
        """Rotation mode: ``False`` for a record naming a month whose table this node does not know."""
        return not self.rotation or self.tables.is_known(user.current_month)

    def needs_migration(self, user: User) -> bool:
        return self.rotation and self._table_of(user) != self.tables.current

    def migrate_user(self, user: User, bookmark: int | None) -> tuple[User, bool]:
        """Move a returning user of an older month into the current table
        (docs/architecture.md#monthly-rotation rule 4).

        Channels first, then the record, so an endpoint that reads the new
        month finds the channels there. What an endpoint stored in the old
        table meanwhile (it read the record before the switch) is carried
        over with its keys and versions, below the bookmark if need be.
        """
        old, new = self._store_of(user), self.messages(self.tables.current)
        new.save_channels(user.uaid, old.get_channels(user.uaid))
        last_connect = last_connect_value(self._now())
        self.router.update_message_month(user.uaid, new.table, last_connect)
        moved = dataclasses.replace(user, current_month=new.table, last_connect=last_connect)
        _, topics = old.fetch_topic_messages(user.uaid)
        _, stamped = old.fetch_timestamp_messages(user.uaid, bookmark)
        late = topics + stamped
        if late:
            new.save_late_messages(user.uaid, late)
        return moved, bool(late)

    # ---- channels

    def get_channels(self, user: User) -> list[str]:
        return self._store_of(user).get_channels(user.uaid)

    def add_channel(self, user: User, channel_id: str) -> None:
        self._store_of(user).add_channel(user.uaid, channel_id)

    def remove_channel(self, user: User, channel_id: str) -> bool:
        return self._store_of(user).remove_channel(user.uaid, channel_id)

    def touch_channels(self, user: User) -> None:
        """Single-table mode keeps the channel list alive; a monthly table's is migrated instead."""
        if not self.rotation:
            self._store_of(user).touch_channels(user.uaid)

    # ---- messages

    def save_message(self, user: User, notification: Notification) -> None:
        self._store_of(user).save_message(user.uaid, notification)

    def save_late_messages(self, user: User, notifications: Sequence[Notification]) -> None:
        self._store_of(user).save_late_messages(user.uaid, notifications)

    def delete_message(self, user: User, sort_key: str, updateid: str | None = None) -> bool:
        return self._store_of(user).delete_message(user.uaid, sort_key, updateid)

    def cancel_message(self, uaid: str, sort_key: str, updateid: str | None = None) -> bool:
        """Single-table mode needs no read; rotation mode asks the user's record for the month."""
        if not self.rotation:
            return self.messages().delete_message(uaid, sort_key, updateid)
        user = self.router.get_user(uaid)
        if user is None or not self.holds_data_of(user):
            return False
        return self.delete_message(user, sort_key, updateid)

    def fetch_topic_messages(self, user: User, limit: int = TOPIC_FETCH_LIMIT) -> tuple[int | None, list[Notification]]:
        return self._store_of(user).fetch_topic_messages(user.uaid, limit)

    def fetch_timestamp_messages(
        self, user: User, bookmark: int | None, limit: int = TIMESTAMP_FETCH_LIMIT
    ) -> tuple[int | None, list[Notification]]:
        return self._store_of(user).fetch_timestamp_messages(user.uaid, bookmark, limit)

    def advance_bookmark(self, user: User, expected: int | None, bookmark: int) -> bool:
        return self._store_of(user).advance_bookmark(user.uaid, expected, bookmark)


def create_dynamo_storage(
    settings: Settings, metrics: Any, clock: Callable[[], float] = time.time, gated: bool = False
) -> DynamoStorage:
    """Build the process's DynamoDB storage; call after fork so each worker has its own client.

    ``gated``: item calls fail as unavailable until ``set_up`` succeeds (``startup.py``).
    """
    db = connect(settings.ddb_endpoint, metrics)
    return DynamoStorage(ItemGate(db) if gated else db, settings, metrics, clock)
