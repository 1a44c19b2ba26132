"""What a worker needs to boot while DynamoDB is unavailable.

A worker that could not set its tables up at start-up used to exit with
gunicorn's "worker failed to boot" status, and the master then shut down
with all its healthy workers: one worker replaced during a database outage
(after a crash or a SIGKILL) took the whole node down. Now a worker boots
when the store is merely unavailable or throttled, and finishes the set-up
later (``services``), and so does every backend built ``gated``. Until then which tables exist (in rotation mode: which
month is current) is unknown, and a write to a guessed table could strand a
message, so its item calls are refused as unavailable: the endpoint answers
503, the connection node refuses the WebSocket upgrade.
"""

from __future__ import annotations

from typing import Any

from autopush_flask.db.dynamodb.client import DynamoDB
from autopush_flask.db.dynamodb.wire import ITEM_OPERATIONS
from autopush_flask.db.errors import StorageUnavailable


class ItemGate:
    """A ``DynamoDB`` whose item calls fail as unavailable until ``open()``.

    Table administration (describe, create, TTL) always passes, so the
    set-up and the health checks work meanwhile. Once open, calls go
    straight to the client: nothing is left on the path of every call.
    """

    def __init__(self, db: DynamoDB) -> None:
        self._db = db
        self.client = db.client

    @property
    def is_open(self) -> bool:
        return "call" in vars(self)

    def open(self) -> None:
        # an instance attribute: shadows the gated method below
        self.call = self._db.call  # type: ignore[method-assign]

    def call(self, operation: str, **kwargs: Any) -> dict:
        if operation in ITEM_OPERATIONS:
            raise StorageUnavailable(f"{operation}: tables not set up yet", operation)
        return self._db.call(operation, **kwargs)
