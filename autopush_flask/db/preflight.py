"""A check that a store takes every kind of write a node makes (docs/architecture.md#start-up).

It goes through the ``Storage`` interface alone, so one check serves every
backend, and a backend that mishandles a conditional write fails it the
same way it would fail a node.
"""

from __future__ import annotations

import secrets
import time
import uuid

from autopush_flask.db.errors import StorageError
from autopush_flask.db.interface import Storage
from autopush_flask.db.models import Notification, User

# Recognisable in the store should a check be cut short; the record expires anyway.
PREFLIGHT_UAID_PREFIX = "deadbeef00000000deadbeef"
PREFLIGHT_NODE_ID = "http://preflight.invalid:8081"


def preflight(storage: Storage) -> None:
    """Exercise each write once with a throw-away UAID, then remove it; raise ``StorageError`` on failure."""
    uaid = PREFLIGHT_UAID_PREFIX + secrets.token_hex(4)
    now = int(time.time())
    connected_at = now * 1000
    user = storage.new_user(uaid, PREFLIGHT_NODE_ID, connected_at)
    message = Notification(
        channel_id=str(uuid.uuid4()),
        version="preflight",
        ttl=60,
        timestamp=now,
        sortkey_timestamp=now * 1_000_000,
    )
    if not storage.add_user(user):
        raise StorageError("preflight: router record already existed", "add_user")
    try:
        _exercise(storage, user, message, connected_at)
    finally:
        storage.drop_user(uaid)


def _exercise(storage: Storage, user: User, message: Notification, connected_at: int) -> None:
    if storage.get_user(user.uaid) is None:
        raise StorageError("preflight: router record not readable", "get_user")
    storage.save_message(user, message)
    if not storage.delete_message(user, message.sort_key, message.version):
        raise StorageError("preflight: conditional message delete failed", "delete_message")
    if not storage.remove_node_id(user.uaid, PREFLIGHT_NODE_ID, connected_at):
        raise StorageError("preflight: conditional node_id removal failed", "remove_node_id")
