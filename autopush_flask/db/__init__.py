"""Storage: the one interface to DynamoDB (SPEC §7)."""

from autopush_flask.db.errors import (
    ConditionFailed,
    StorageError,
    StorageThrottled,
    StorageUnavailable,
    TableMissing,
)
from autopush_flask.db.models import Notification, User
from autopush_flask.db.storage import Storage, create_storage

__all__ = [
    "ConditionFailed",
    "Notification",
    "Storage",
    "StorageError",
    "StorageThrottled",
    "StorageUnavailable",
    "TableMissing",
    "User",
    "create_storage",
]
