"""The worker's retry queue: bounded, paced, and nothing dropped without a count and a log line."""

from __future__ import annotations

import gevent
import pytest

from autopush_flask.connection.retries import RetryJob, RetryQueue
from autopush_flask.db import StorageError, StorageUnavailable
from autopush_flask.metrics import RecordingMetrics

NOW = 1_700_000_000.0


class Storage:
    """Answers like DynamoDB would: down until ``up``, then every write lands."""

    def __init__(self) -> None:
        self.up = False
        self.written: list[str] = []


def write(name: str):
    def call(storage: Storage) -> None:
        if not storage.up:
            raise StorageUnavailable("put_item: connection refused", "put_item")
        storage.written.append(name)
    return call


@pytest.fixture
def storage() -> Storage:
    return Storage()


def queue(storage: Storage, metrics: RecordingMetrics, capacity: int = 10, notified: list | None = None) -> RetryQueue:
    return RetryQueue(lambda call: call(storage), (notified if notified is not None else []).append, metrics,
                      capacity, clock=lambda: NOW)


def given_up(metrics: RecordingMetrics) -> list[tuple[int, dict]]:
    return [(c.value, c.tags) for c in metrics.find("storage.retry.given_up")]


def test_writes_land_once_storage_is_back_and_the_node_is_told(storage: Storage) -> None:
    metrics, notified = RecordingMetrics(), []
    retries = queue(storage, metrics, notified=notified)
    retries.start()
    retries.add(RetryJob("store_direct", write("a"), NOW + 60, "u1", ("v1", "v2"), notify=True))
    retries.add(RetryJob("delete_message", write("b"), NOW + 60, "u1", ("v3",)))
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
    assert retries.add(RetryJob("store_direct", write("a"), NOW + 60, "u1", ("v1", "v2")))
    assert not retries.add(RetryJob("store_direct", write("b"), NOW + 60, "u2", ("v3", "v4")))
    assert given_up(metrics) == [(2, {"operation": "store_direct", "reason": "queue_full"})]


def test_expired_refused_and_shutdown(storage: Storage) -> None:
    metrics = RecordingMetrics()
    retries = queue(storage, metrics)

    def refused(storage: Storage) -> None:
        raise StorageError("put_item: ValidationException", "put_item")

    retries.add(RetryJob("delete_message", write("old"), NOW - 1, "u1", ("v1",)))
    retries.add(RetryJob("store_direct", refused, NOW + 60, "u1", ("v2",)))
    retries.add(RetryJob("update_bookmark", write("bookmark"), NOW + 300, "u1"))
    retries.flush(1.0)  # storage still down: the bookmark write is given up at shutdown
    assert given_up(metrics) == [
        (1, {"operation": "delete_message", "reason": "expired"}),
        (1, {"operation": "store_direct", "reason": "refused"}),
        (1, {"operation": "update_bookmark", "reason": "shutdown"}),
    ]
    assert len(retries) == 0 and retries.weight == 0
