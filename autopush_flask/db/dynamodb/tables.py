"""Table management: creation, TTL, capacity and listing.

docs/architecture.md#dynamodb, docs/architecture.md#start-up, docs/operations.md#operations-tools
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from autopush_flask.db.dynamodb.client import DynamoCalls
from autopush_flask.db.errors import StorageError, TableMissing, UnknownOperation

log = logging.getLogger("autopush.db")

ACTIVE = "ACTIVE"
TTL_ATTRIBUTE = "expiry"
WAIT_STEP_SECONDS = 0.2
WAIT_LIMIT_SECONDS = 60.0


@dataclass(frozen=True)
class TableInfo:
    name: str
    status: str
    read_capacity: int | None
    write_capacity: int | None

    @property
    def on_demand(self) -> bool:
        return self.read_capacity is None


ROUTER_KEYS = {
    "KeySchema": [{"AttributeName": "uaid", "KeyType": "HASH"}],
    "AttributeDefinitions": [{"AttributeName": "uaid", "AttributeType": "S"}],
}
MESSAGE_KEYS = {
    "KeySchema": [
        {"AttributeName": "uaid", "KeyType": "HASH"},
        {"AttributeName": "chidmessageid", "KeyType": "RANGE"},
    ],
    "AttributeDefinitions": [
        {"AttributeName": "uaid", "AttributeType": "S"},
        {"AttributeName": "chidmessageid", "AttributeType": "S"},
    ],
}


class TableAdmin:
    def __init__(self, db: DynamoCalls) -> None:
        self._db = db

    def describe(self, name: str) -> TableInfo | None:
        """Table status and provisioned capacity; ``None`` when it does not exist."""
        try:
            table = self._db.call("describe_table", TableName=name)["Table"]
        except TableMissing:
            return None
        throughput = table.get("ProvisionedThroughput") or {}
        on_demand = (table.get("BillingModeSummary") or {}).get("BillingMode") == "PAY_PER_REQUEST"
        return TableInfo(
            name=name,
            status=table.get("TableStatus", ""),
            read_capacity=None if on_demand else throughput.get("ReadCapacityUnits"),
            write_capacity=None if on_demand else throughput.get("WriteCapacityUnits"),
        )

    def ensure_router_table(self, name: str, read: int, write: int) -> bool:
        """Create the router table (TTL on ``expiry``) if missing; ``True`` when it was created."""
        return self._ensure(name, ROUTER_KEYS, read, write, ttl=True)

    def ensure_message_table(self, name: str, read: int, write: int) -> bool:
        """Create a message table (TTL on ``expiry``) if missing."""
        return self._ensure(name, MESSAGE_KEYS, read, write, ttl=True)

    def _ensure(self, name: str, keys: dict, read: int, write: int, ttl: bool) -> bool:
        if self.describe(name) is not None:
            return False
        try:
            self._db.call(
                "create_table",
                TableName=name,
                ProvisionedThroughput={"ReadCapacityUnits": read, "WriteCapacityUnits": write},
                **keys,
            )
        except StorageError as error:
            if error.code != "ResourceInUseException":  # another worker won the race
                raise
        self.wait_active(name)
        if ttl:
            self.enable_ttl(name)
        return True

    def wait_active(self, name: str, limit: float = WAIT_LIMIT_SECONDS) -> None:
        deadline = time.monotonic() + limit
        while True:
            info = self.describe(name)
            if info is not None and info.status == ACTIVE:
                return
            if time.monotonic() > deadline:
                raise StorageError(f"table {name} not active after {limit:.0f} s", "describe_table")
            time.sleep(WAIT_STEP_SECONDS)

    def enable_ttl(self, name: str) -> bool:
        """Switch on TTL for ``expiry``; ``False`` where the server lacks TTL (dynalite)."""
        try:
            self._db.call(
                "update_time_to_live",
                TableName=name,
                TimeToLiveSpecification={"Enabled": True, "AttributeName": TTL_ATTRIBUTE},
            )
        except UnknownOperation:
            log.info("TTL not supported by this DynamoDB; skipped", extra={"fields": {"table": name}})
            return False
        except StorageError as error:
            if "already enabled" in str(error).lower():
                return True
            raise
        return True

    def ttl_enabled(self, name: str) -> bool | None:
        """Whether TTL is on; ``None`` where the server lacks TTL."""
        try:
            response = self._db.call("describe_time_to_live", TableName=name)
        except UnknownOperation:
            return None
        status = response.get("TimeToLiveDescription", {}).get("TimeToLiveStatus")
        return status in ("ENABLED", "ENABLING")

    def update_capacity(self, name: str, read: int, write: int) -> None:
        self._db.call(
            "update_table",
            TableName=name,
            ProvisionedThroughput={"ReadCapacityUnits": read, "WriteCapacityUnits": write},
        )

    def list_tables(self, prefix: str = "") -> list[str]:
        names: list[str] = []
        kwargs: dict = {}
        while True:
            response = self._db.call("list_tables", **kwargs)
            names.extend(n for n in response.get("TableNames", []) if n.startswith(prefix))
            last = response.get("LastEvaluatedTableName")
            if not last:
                return names
            kwargs = {"ExclusiveStartTableName": last}

    def delete_table(self, name: str) -> None:
        self._db.call("delete_table", TableName=name)
