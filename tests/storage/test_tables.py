"""Table creation, TTL, health, preflight and monthly rotation (docs/architecture.md#dynamodb, docs/architecture.md#monthly-rotation, docs/architecture.md#start-up)."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from autopush_flask.db.preflight import preflight
from autopush_flask.db import StorageError, TableMissing, User, create_storage
from autopush_flask.db.dynamodb.rotation import (
    connected_this_month,
    last_connect_value,
    month_shift,
    monthly_table_name,
    table_month,
)
from autopush_flask.metrics import RecordingMetrics


class Clock:
    """Unix time from a settable local date, as storage clocks are."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


def rotating_storage(make_settings, clock: Clock, **variables: str):
    settings = make_settings(AUTOPUSH_TABLE_ROTATION="true", **variables)
    return create_storage(settings, RecordingMetrics(), clock=clock)


def test_setup_creates_router_and_message_tables_once(make_settings, table_prefix: str) -> None:
    storage = create_storage(make_settings(), RecordingMetrics())
    assert storage.set_up() == [f"{table_prefix}_router", f"{table_prefix}_message"]
    assert storage.set_up() == []
    info = storage.admin.describe(f"{table_prefix}_message")
    assert (info.status, info.read_capacity, info.write_capacity) == ("ACTIVE", 5, 5)


def test_setup_uses_configured_capacity(make_settings, table_prefix: str) -> None:
    storage = create_storage(
        make_settings(AUTOPUSH_ROUTER_READ_THROUGHPUT="7", AUTOPUSH_MESSAGE_WRITE_THROUGHPUT="9"),
        RecordingMetrics(),
    )
    storage.set_up()
    assert storage.admin.describe(f"{table_prefix}_router").read_capacity == 7
    assert storage.admin.describe(f"{table_prefix}_message").write_capacity == 9


def test_setup_without_create_tables_creates_nothing_and_refuses(make_settings, table_prefix: str) -> None:
    storage = create_storage(make_settings(AUTOPUSH_CREATE_TABLES="false"), RecordingMetrics())
    with pytest.raises(TableMissing, match="AUTOPUSH_CREATE_TABLES is false"):
        storage.set_up()
    assert storage.admin.describe(f"{table_prefix}_router") is None


def test_enable_ttl_tolerates_a_server_without_ttl(storage) -> None:
    """dynalite lacks UpdateTimeToLive; real DynamoDB switches TTL on."""
    assert storage.admin.enable_ttl(storage.messages().table) is False
    # dynalite answers DescribeTimeToLive with "disabled"
    assert storage.admin.ttl_enabled(storage.messages().table) is False


def test_health_reports_ok_and_nonexistent_tables(storage, table_prefix: str) -> None:
    assert storage.check_health() == {
        "router_table": {"status": "OK"},
        "message_table": {"status": "OK"},
    }
    storage.admin.delete_table(f"{table_prefix}_message")
    assert storage.check_health()["message_table"] == {"status": "NOT OK", "error": "Nonexistent table"}


def test_health_reports_server_error_when_the_database_is_down(make_settings) -> None:
    from tests.support.processes import free_port

    storage = create_storage(
        make_settings(AUTOPUSH_DDB_ENDPOINT=f"http://127.0.0.1:{free_port()}"), RecordingMetrics()
    )
    assert storage.check_health()["router_table"] == {"status": "NOT OK", "error": "Server error"}


def test_preflight_leaves_nothing_behind(storage) -> None:
    preflight(storage)
    scan = storage.db.client.scan(TableName=storage.router.table)
    assert scan["Items"] == []
    assert storage.db.client.scan(TableName=storage.messages().table)["Items"] == []


def test_preflight_fails_without_tables(make_settings) -> None:
    storage = create_storage(make_settings(AUTOPUSH_CREATE_TABLES="false"), RecordingMetrics())
    with pytest.raises(StorageError):
        preflight(storage)


def test_single_table_mode_holds_data_of_any_user(storage) -> None:
    assert storage.holds_data_of(User(uaid="a" * 32, current_month="whatever"))
    assert not storage.needs_migration(User(uaid="a" * 32, current_month="whatever"))


# ---- rotation mode


def test_month_arithmetic_and_names() -> None:
    assert month_shift(2026, 1, -1) == (2025, 12)
    assert month_shift(2026, 12, 1) == (2027, 1)
    assert monthly_table_name("message", 2017, 9) == "message_2017_09"
    assert table_month("message", "message_2017_09") == (2017, 9)
    assert table_month("message", "message") is None
    assert table_month("message", "router_2017_09") is None


def test_152_last_connect_shape() -> None:
    now = dt.datetime(2017, 9, 21, 14, 30)
    assert last_connect_value(now, draw=lambda low, high: 7) == 201709140007
    values = {last_connect_value(now) for _ in range(300)}
    assert values <= {201709140000 + r for r in range(11)}
    assert connected_this_month(201709140007, now)
    assert not connected_this_month(201708140007, now)
    assert not connected_this_month(None, now)


def test_151_startup_creates_last_and_this_month(make_settings, table_prefix: str) -> None:
    clock = Clock(dt.datetime(2026, 3, 10, 12, 0))
    storage = rotating_storage(make_settings, clock)
    created = storage.set_up()
    prefix = f"{table_prefix}_message"
    assert created == [f"{table_prefix}_router", f"{prefix}_2026_02", f"{prefix}_2026_03"]
    assert storage.tables.known == [f"{prefix}_2026_02", f"{prefix}_2026_03"]
    assert storage.tables.current == f"{prefix}_2026_03"
    assert storage.messages().table == f"{prefix}_2026_03"


def test_startup_on_the_last_day_adds_next_month(make_settings, table_prefix: str) -> None:
    clock = Clock(dt.datetime(2026, 12, 31, 23, 0))
    storage = rotating_storage(make_settings, clock)
    storage.set_up()
    prefix = f"{table_prefix}_message"
    assert storage.tables.known == [f"{prefix}_2026_11", f"{prefix}_2026_12", f"{prefix}_2027_01"]
    assert storage.tables.current == f"{prefix}_2026_12"


def test_refresh_adds_next_month_then_switches(make_settings, table_prefix: str) -> None:
    clock = Clock(dt.datetime(2026, 4, 15, 12, 0))
    storage = rotating_storage(make_settings, clock)
    storage.set_up()
    prefix = f"{table_prefix}_message"
    storage.tables.refresh()
    assert storage.tables.known == [f"{prefix}_2026_03", f"{prefix}_2026_04"]
    clock.now = dt.datetime(2026, 4, 30, 23, 59)
    storage.tables.refresh()
    assert storage.tables.known[-1] == f"{prefix}_2026_05"
    assert storage.tables.current == f"{prefix}_2026_04"
    clock.now = dt.datetime(2026, 5, 1, 0, 1)
    storage.tables.refresh()
    assert storage.tables.current == f"{prefix}_2026_05"
    assert storage.admin.describe(f"{prefix}_2026_05") is not None


def test_maybe_refresh_runs_at_most_once_a_minute(make_settings) -> None:
    storage = rotating_storage(make_settings, Clock(dt.datetime(2026, 4, 15)))
    storage.set_up()
    assert storage.tables.maybe_refresh() is False  # start() counts as a refresh


def test_rotation_knows_the_months_it_holds(make_settings, table_prefix: str) -> None:
    clock = Clock(dt.datetime(2026, 3, 10))
    storage = rotating_storage(make_settings, clock)
    storage.set_up()
    prefix = f"{table_prefix}_message"
    last_month = User(uaid="a" * 32, current_month=f"{prefix}_2026_02")
    assert storage.holds_data_of(last_month) and storage.needs_migration(last_month)
    this_month = User(uaid="a" * 32, current_month=f"{prefix}_2026_03")
    assert storage.holds_data_of(this_month) and not storage.needs_migration(this_month)
    assert not storage.holds_data_of(User(uaid="a" * 32, current_month=f"{prefix}_2025_01"))
    assert not storage.holds_data_of(User(uaid="a" * 32))


def test_rotation_channel_list_copy_between_months(make_settings, table_prefix: str) -> None:
    """The migration's storage steps (docs/architecture.md#monthly-rotation connection rule 4)."""
    clock = Clock(dt.datetime(2026, 3, 10, 9))
    storage = rotating_storage(make_settings, clock)
    storage.set_up()
    prefix = f"{table_prefix}_message"
    uaid, chid = uuid.uuid4().hex, str(uuid.uuid4())
    old, new = storage.messages(f"{prefix}_2026_02"), storage.messages(f"{prefix}_2026_03")
    storage.router.add_user(User(uaid=uaid, connected_at=1, record_version=1, current_month=old.table))
    old.add_channel(uaid, chid)
    new.save_channels(uaid, old.get_channels(uaid))
    storage.router.update_message_month(uaid, new.table, last_connect_value(clock.now))
    user = storage.router.get_user(uaid)
    assert user.current_month == new.table
    assert connected_this_month(user.last_connect, clock.now)
    assert new.get_channels(uaid) == [chid]


def test_rotation_without_create_tables_knows_only_existing_tables(make_settings, table_prefix: str) -> None:
    clock = Clock(dt.datetime(2026, 3, 10))
    storage = rotating_storage(make_settings, clock, AUTOPUSH_CREATE_TABLES="false")
    storage.admin.ensure_message_table(f"{table_prefix}_message_2026_03", 5, 5)
    storage.admin.ensure_router_table(f"{table_prefix}_router", 5, 5)
    storage.set_up()
    assert storage.tables.known == [f"{table_prefix}_message_2026_03"]
