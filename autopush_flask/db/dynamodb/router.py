"""Router-table operations (docs/architecture.md#storage-interface): one item per UAID."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autopush_flask.db.dynamodb.attributes import from_item, to_attribute, to_item
from autopush_flask.db.dynamodb.client import DynamoCalls
from autopush_flask.db.errors import ConditionFailed
from autopush_flask.db.models import User

HELLO_CONDITION = (
    "attribute_exists(uaid) AND "
    "(attribute_not_exists(router_type) OR router_type = :router_type) AND "
    "(attribute_not_exists(node_id) OR connected_at < :connected_at)"
)


def _set_expression(values: dict[str, Any]) -> tuple[str, dict, dict]:
    """``SET #a = :a, …`` with names and values for every given attribute."""
    names = {f"#{key}": key for key in values}
    attribute_values = {f":{key}": to_attribute(value) for key, value in values.items()}
    expression = "SET " + ", ".join(f"#{key} = :{key}" for key in values)
    return expression, names, attribute_values


class RouterStore:
    """The router table. Records live ``lifetime`` seconds from their last refresh.

    DynamoDB's TTL deletes expired items up to days late (and the local
    emulator never does), so reads treat an expired record as absent.
    """

    def __init__(self, db: DynamoCalls, table: str, lifetime: int, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self.table = table
        self._lifetime = lifetime
        self._clock = clock

    def expiry(self) -> int:
        """The ``expiry`` of a record written or refreshed now."""
        return int(self._clock()) + self._lifetime

    def _key(self, uaid: str) -> dict:
        return {"uaid": {"S": uaid}}

    def get_user(self, uaid: str) -> User | None:
        """The router record, read consistently.

        An item holding nothing but ``uaid`` is debris of an interrupted
        write: it is deleted and reported as absent.
        """
        response = self._db.call("get_item", TableName=self.table, Key=self._key(uaid), ConsistentRead=True)
        return self.user_from_item(uaid, from_item(response.get("Item")))

    def user_from_item(self, uaid: str, item: dict) -> User | None:
        """A loaded item as a ``User``, deleting debris that holds only ``uaid``."""
        if not item:
            return None
        if set(item) == {"uaid"}:
            self.drop_user(uaid)
            return None
        user = User.from_item(item)
        if user.expiry is not None and user.expiry <= self._clock():
            return None
        return user

    def add_user(self, user: User) -> bool:
        """Create a record; ``False`` when one already exists for the UAID."""
        user.expiry = self.expiry()
        try:
            self._db.call(
                "put_item",
                TableName=self.table,
                Item=to_item(user.to_item()),
                ConditionExpression="attribute_not_exists(uaid)",
            )
        except ConditionFailed:
            return False
        return True

    def update_user(self, user: User) -> tuple[bool, dict]:
        """The hello update (docs/protocol.md#hello step 4.2).

        Succeeds only when the record exists, has the same (or no) router
        type, and shows no connection at least as new as this one. Returns
        the previous attributes so the caller can evict an older session.
        """
        values = {k: v for k, v in user.to_item().items() if k != "uaid"}
        values["expiry"] = self.expiry()
        expression, names, attribute_values = _set_expression(values)
        attribute_values[":router_type"] = to_attribute(user.router_type)
        attribute_values[":connected_at"] = to_attribute(user.connected_at)
        try:
            response = self._db.call(
                "update_item",
                TableName=self.table,
                Key=self._key(user.uaid),
                UpdateExpression=expression,
                ConditionExpression=HELLO_CONDITION,
                ExpressionAttributeNames=names,
                ExpressionAttributeValues=attribute_values,
                ReturnValues="ALL_OLD",
            )
        except ConditionFailed:
            return False, {}
        return True, from_item(response.get("Attributes"))

    def update_router_data(self, uaid: str, router_type: str, router_data: dict, connected_at: int) -> bool:
        """Bridge token update; the router type may change (docs/architecture.md#records-and-messages)."""
        expression, names, values = _set_expression(
            {
                "router_type": router_type,
                "router_data": router_data,
                "connected_at": connected_at,
                "expiry": self.expiry(),
            }
        )
        return self._conditional_update(uaid, expression, "attribute_exists(uaid)", names, values)

    def refresh(self, uaid: str) -> bool:
        """Push the record's expiry back; ``False`` when it is gone."""
        expression, names, values = _set_expression({"expiry": self.expiry()})
        return self._conditional_update(uaid, expression, "attribute_exists(uaid)", names, values)

    def set_min_urgency(self, uaid: str, urgency: str) -> bool:
        """The browser's minimum urgency (docs/protocol.md#urgency); ``False`` when the record is gone."""
        expression, names, values = _set_expression({"urgency": urgency})
        return self._conditional_update(uaid, expression, "attribute_exists(uaid)", names, values)

    def remove_node_id(self, uaid: str, node_id: str, connected_at: int) -> bool:
        """Forget ``node_id`` only if it still names the connection we saw (docs/architecture.md#stored-delivery)."""
        return self._conditional_update(
            uaid,
            "REMOVE node_id",
            "node_id = :node_id AND connected_at = :connected_at",
            None,
            {":node_id": to_attribute(node_id), ":connected_at": to_attribute(connected_at)},
        )

    def update_message_month(self, uaid: str, table: str, last_connect: int) -> bool:
        """Rotation mode: point the record at the table now holding the user's data."""
        expression, names, values = _set_expression({"current_month": table, "last_connect": last_connect})
        return self._conditional_update(uaid, expression, "attribute_exists(uaid)", names, values)

    def drop_user(self, uaid: str) -> bool:
        """Delete the record; ``True`` if there was one. Messages expire on their own."""
        response = self._db.call("delete_item", TableName=self.table, Key=self._key(uaid), ReturnValues="ALL_OLD")
        return bool(response.get("Attributes"))

    def _conditional_update(self, uaid: str, expression: str, condition: str, names: dict | None, values: dict) -> bool:
        extra = {"ExpressionAttributeNames": names} if names else {}
        try:
            self._db.call(
                "update_item",
                TableName=self.table,
                Key=self._key(uaid),
                UpdateExpression=expression,
                ConditionExpression=condition,
                ExpressionAttributeValues=values,
                **extra,
            )
        except ConditionFailed:
            return False
        return True
