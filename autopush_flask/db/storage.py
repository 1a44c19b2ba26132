"""The storage interface every node uses; nothing outside ``db/`` talks DynamoDB."""

from __future__ import annotations

import datetime as dt
import secrets
import time
import uuid
from collections.abc import Callable
from typing import Any

from autopush_flask.config import Settings
from autopush_flask.db.client import DynamoDB, connect
from autopush_flask.db.errors import StorageError
from autopush_flask.db.messages import MessageStore
from autopush_flask.db.attributes import from_item
from autopush_flask.db.models import CHANNEL_LIST_KEY, Notification, User, registered_channels
from autopush_flask.db.rotation import MessageTables, connected_this_month, last_connect_value
from autopush_flask.db.router import RouterStore
from autopush_flask.db.tables import TableAdmin

PREFLIGHT_UAID_PREFIX = "deadbeef00000000deadbeef"
PREFLIGHT_NODE_ID = "http://preflight.invalid:8081"


class Storage:
    """Router operations, message operations per table, and table management."""

    def __init__(
        self,
        db: DynamoDB,
        settings: Settings,
        metrics: Any,
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self.db = db
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self.admin = TableAdmin(db)
        self.router = RouterStore(db, settings.router_table)
        self.tables = MessageTables(
            self.admin,
            settings.message_table,
            rotation=settings.table_rotation,
            create=settings.create_tables,
            capacity=(settings.message_read_throughput, settings.message_write_throughput),
            clock=clock,
        )
        self._stores: dict[str, MessageStore] = {}

    @property
    def rotation(self) -> bool:
        return self.tables.rotation

    def messages(self, table: str | None = None) -> MessageStore:
        """Message operations on ``table`` (default: the node's current table)."""
        name = table or self.tables.current
        store = self._stores.get(name)
        if store is None:
            store = self._stores[name] = MessageStore(self.db, name, self._metrics)
        return store

    def message_table_for(self, user: User) -> str | None:
        """The table holding a user's data; ``None`` for an unknown month (rotation mode)."""
        if not self.rotation:
            return self.tables.current
        return user.current_month if self.tables.is_known(user.current_month) else None

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

    def new_last_connect(self) -> int:
        return last_connect_value(self._clock())

    def connected_this_month(self, last_connect: int | None) -> bool:
        """Rotation mode refreshes ``last_connect`` only once a month (SPEC §2.4.2)."""
        return connected_this_month(last_connect, self._clock())

    def setup(self) -> list[str]:
        """Create missing tables when configured and learn the known message tables."""
        created = []
        settings = self._settings
        if settings.create_tables and self.admin.ensure_router_table(
            settings.router_table, settings.router_read_throughput, settings.router_write_throughput
        ):
            created.append(settings.router_table)
        return created + self.tables.start()

    def check_tables(self) -> dict[str, dict[str, str]]:
        """The per-table entries of ``/health`` (SPEC §4.13)."""
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

    def preflight(self) -> None:
        """Exercise every kind of write once with a throw-away UAID (SPEC §7.9).

        Raises ``StorageError`` when any step fails, so start-up aborts.
        """
        uaid = PREFLIGHT_UAID_PREFIX + secrets.token_hex(4)
        now = int(time.time())
        message = Notification(
            channel_id=str(uuid.uuid4()), version="preflight", ttl=60, timestamp=now,
            sortkey_timestamp=now * 1_000_000,
        )
        store = self.messages()
        store.save_message(uaid, message)
        store.delete_message(uaid, message.sort_key)
        connected_at = now * 1000
        user = User(uaid=uaid, connected_at=connected_at, node_id=PREFLIGHT_NODE_ID, record_version=1)
        if not self.router.add_user(user):
            raise StorageError("preflight: router record already existed", "put_item")
        if self.router.get_user(uaid) is None:
            raise StorageError("preflight: router record not readable", "get_item")
        if not self.router.remove_node_id(uaid, PREFLIGHT_NODE_ID, connected_at):
            raise StorageError("preflight: conditional node_id removal failed", "update_item")
        self.router.drop_user(uaid)


def create_storage(
    settings: Settings,
    metrics: Any,
    clock: Callable[[], dt.datetime] = dt.datetime.now,
) -> Storage:
    """Build the process's storage; call after fork so each worker has its own client."""
    return Storage(connect(settings.ddb_endpoint, metrics), settings, metrics, clock)
