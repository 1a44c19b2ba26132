"""Storage: one interface (``interface.Storage``), a backend per kind of store.

``create_storage`` picks the backend from the settings: PostgreSQL when
``AUTOPUSH_DB_URL`` is set, DynamoDB (AWS, or a local endpoint) otherwise.
The backends are imported on demand, so a node never loads the client
library of a store it does not use.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from autopush_flask.config import Settings
from autopush_flask.db.errors import (
    ConditionFailed,
    StorageError,
    StorageThrottled,
    StorageUnavailable,
    TableMissing,
)
from autopush_flask.db.interface import Storage
from autopush_flask.db.models import Notification, User

# Monthly tables more than this many months old may be dropped by
# ``flask maintain-tables --drop-older-than``: nodes know only last month's
# and this month's tables (docs/architecture.md#monthly-rotation).
MIN_MONTHS_KEPT = 2

__all__ = [
    "MIN_MONTHS_KEPT",
    "ConditionFailed",
    "Notification",
    "Storage",
    "StorageError",
    "StorageThrottled",
    "StorageUnavailable",
    "TableMissing",
    "User",
    "backend_name",
    "create_storage",
]


def backend_name(settings: Settings) -> str:
    return "postgresql" if settings.db_url else "dynamodb"


def create_storage(
    settings: Settings, metrics: Any, clock: Callable[[], float] = time.time, gated: bool = False
) -> Storage:
    """The process's store; call after fork so each worker has its own connections.

    ``gated``: data operations fail as unavailable until ``set_up()``
    succeeds, so a worker can boot while the store is down.
    """
    if settings.db_url:
        from autopush_flask.db.postgres import PostgresStorage

        return PostgresStorage(settings, metrics, clock=clock, gated=gated)
    from autopush_flask.db.dynamodb.storage import create_dynamo_storage

    return create_dynamo_storage(settings, metrics, clock=clock, gated=gated)
