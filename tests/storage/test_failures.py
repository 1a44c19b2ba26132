"""Storage failures become typed errors after the docs/architecture.md#storage-errors retries (real HTTP in the way)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from autopush_flask.db import (
    Notification,
    StorageThrottled,
    StorageUnavailable,
    User,
    create_storage,
)
from autopush_flask.db.errors import StorageError, TableMissing
from autopush_flask.metrics import RecordingMetrics
from tests.support.processes import LocalDynamoDB
from tests.support.throttle_proxy import ThrottleProxy


@pytest.fixture
def proxy(dynalite: LocalDynamoDB) -> Iterator[ThrottleProxy]:
    running = ThrottleProxy(dynalite.port).start()
    yield running
    running.stop()


def test_throttling_is_retried_three_times_then_raised(make_settings, proxy: ThrottleProxy) -> None:
    metrics = RecordingMetrics()
    storage = create_storage(make_settings(AUTOPUSH_DDB_ENDPOINT=proxy.url), metrics)
    storage.set_up()
    uaid = uuid.uuid4().hex
    proxy.throttling = True
    proxy.requests = 0
    with pytest.raises(StorageThrottled):
        storage.router.get_user(uaid)
    assert proxy.requests == 3
    assert [c.tags for c in metrics.find("database.retry")] == [{"operation": "get_item"}] * 2


def test_a_write_accepted_after_throttling_ends_is_stored(make_settings, proxy: ThrottleProxy) -> None:
    storage = create_storage(make_settings(AUTOPUSH_DDB_ENDPOINT=proxy.url), RecordingMetrics())
    storage.set_up()
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    proxy.throttling = True
    with pytest.raises(StorageThrottled):
        storage.messages().save_message(
            uaid, Notification(channel_id=chid, version="v", ttl=60, timestamp=int(time.time()), sortkey_timestamp=1)
        )
    proxy.throttling = False
    assert storage.messages().fetch_timestamp_messages(uaid, None) == (None, [])
    storage.messages().save_message(
        uaid, Notification(channel_id=chid, version="v", ttl=60, timestamp=int(time.time()), sortkey_timestamp=1)
    )
    assert [m.version for m in storage.messages().fetch_timestamp_messages(uaid, None)[1]] == ["v"]


def test_database_down_is_unavailable_and_recovers(make_settings) -> None:
    database = LocalDynamoDB()
    database.start()
    try:
        metrics = RecordingMetrics()
        storage = create_storage(make_settings(AUTOPUSH_DDB_ENDPOINT=database.url), metrics)
        storage.set_up()
        uaid = uuid.uuid4().hex
        storage.router.add_user(User(uaid=uaid, connected_at=1, record_version=1))
        database.stop()
        with pytest.raises(StorageUnavailable):
            storage.router.get_user(uaid)
        assert len(metrics.find("database.retry")) == 2
        database.start()  # in memory: the data is gone, the service is back
        storage.set_up()
        assert storage.router.get_user(uaid) is None
    finally:
        database.stop()


def test_missing_table_is_table_missing(make_settings) -> None:
    storage = create_storage(make_settings(), RecordingMetrics())  # no setup(): no tables
    with pytest.raises(TableMissing):
        storage.router.get_user(uuid.uuid4().hex)


def test_validation_errors_are_not_retried(storage) -> None:
    with pytest.raises(StorageError) as raised:
        storage.db.call("get_item", TableName=storage.router.table, Key={"nope": {"S": "x"}})
    assert type(raised.value) is StorageError
    assert raised.value.code == "ValidationException"
