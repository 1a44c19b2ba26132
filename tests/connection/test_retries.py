"""The worker's retry queue: bounded, paced, and nothing dropped without a count and a log line."""

from __future__ import annotations

import gevent
import pytest

from autopush_flask.connection.effects import Retry
from autopush_flask.connection.retries import RetryJob, RetryQueue
from autopush_flask.connection.storage_ops import (
    AdvanceBookmark,
    DeleteMessage,
    SaveLateMessages,
    StorageOp,
    run_storage,
)
from autopush_flask.db import StorageError, StorageUnavailable, User
from autopush_flask.metrics import RecordingMetrics

NOW = 1_700_000_000.0


class Storage:
    """Answers like DynamoDB would: down until ``up``, then every write lands (but ``REFUSED``)."""

    def __init__(self) -> None:
        self.up = False
        self.written: list[str] = []

    def _write(self, name: str) -> None:
        if name == REFUSED:
            raise StorageError("put_item: ValidationException", "put_item")
        if not self.up:
            raise StorageUnavailable("put_item: connection refused", "put_item")
        self.written.append(name)

    def delete_message(self, user: User, sort_key: str, updateid: str | None = None) -> bool:
        self._write(sort_key)
        return True

    def save_late_messages(self, user: User, notifications: object) -> None:
        self._write(user.uaid)

    def advance_bookmark(self, user: User, expected: int | None, bookmark: int) -> bool:
        self._write("bookmark")
        return True


REFUSED = "refused"
USER = User(uaid="u1")


def job(op: StorageOp, give_up_at: float, message_ids: tuple[str, ...] = (), notify: bool = False) -> RetryJob:
    return RetryJob(Retry(op, give_up_at, "u1", message_ids, notify))


def store_direct(name: str) -> SaveLateMessages:
    """A write named ``name`` (the fake store writes the user's uaid)."""
    return SaveLateMessages(User(uaid=name), ())


def delete(name: str) -> DeleteMessage:
    return DeleteMessage(USER, name, None)


@pytest.fixture
def storage() -> Storage:
    return Storage()


def queue(storage: Storage, metrics: RecordingMetrics, capacity: int = 10, notified: list | None = None) -> RetryQueue:
    return RetryQueue(lambda op: run_storage(storage, op), (notified if notified is not None else []).append,
                      metrics, capacity, clock=lambda: NOW)


def given_up(metrics: RecordingMetrics) -> list[tuple[int, dict]]:
    return [(c.value, c.tags) for c in metrics.find("storage.retry.given_up")]


def test_writes_land_once_storage_is_back_and_the_node_is_told(storage: Storage) -> None:
    metrics, notified = RecordingMetrics(), []
    retries = queue(storage, metrics, notified=notified)
    retries.start()
    retries.add(job(store_direct("a"), NOW + 60, ("v1", "v2"), notify=True))
    retries.add(job(delete("b"), NOW + 60, ("v3",)))
    gevent.sleep(0.2)
    assert storage.written == []  # down: waiting between attempts
    storage.up = True
    for _ in range(60):
        if len(storage.written) == 2:
            break
        gevent.sleep(0.1)
    gevent.sleep(0)
    assert sorted(storage.written) == ["a", "b"] and notified == ["u1"]
    assert len(retries) == 0 and retries.weight == 0 and given_up(metrics) == []


def test_a_full_queue_gives_up_at_once(storage: Storage) -> None:
    metrics = RecordingMetrics()
    retries = queue(storage, metrics, capacity=3)
    assert retries.add(job(store_direct("a"), NOW + 60, ("v1", "v2")))
    assert not retries.add(job(store_direct("b"), NOW + 60, ("v3", "v4")))
    assert given_up(metrics) == [(2, {"operation": "store_direct", "reason": "queue_full"})]


def test_expired_refused_and_shutdown(storage: Storage) -> None:
    metrics = RecordingMetrics()
    retries = queue(storage, metrics)
    retries.add(job(delete("old"), NOW - 1, ("v1",)))
    retries.add(job(store_direct(REFUSED), NOW + 60, ("v2",)))
    retries.add(job(AdvanceBookmark(USER, None, 1), NOW + 300))
    retries.flush(1.0)  # storage still down: the bookmark write is given up at shutdown
    assert given_up(metrics) == [
        (1, {"operation": "delete_message", "reason": "expired"}),
        (1, {"operation": "store_direct", "reason": "refused"}),
        (1, {"operation": "update_bookmark", "reason": "shutdown"}),
    ]
    assert len(retries) == 0 and retries.weight == 0
