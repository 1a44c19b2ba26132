"""What only the PostgreSQL backend has: migrations, purging, pool errors, gevent.

The ``Storage`` semantics every backend shares are held by the shared
suite; these tests run against the real throw-away cluster of
``tests/support/postgres.py``, each in a schema of its own.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from autopush_flask.config import Settings, load_settings
from autopush_flask.db.errors import StorageError, StorageThrottled, StorageUnavailable, TableMissing
from autopush_flask.db.models import Notification, User
from autopush_flask.db.postgres import PostgresStorage
from autopush_flask.db.postgres import storage as postgres_storage
from autopush_flask.db.postgres.schema import LATEST_VERSION
from autopush_flask.metrics import RecordingMetrics
from tests.support.postgres import LocalPostgres

ROOT = Path(__file__).resolve().parents[2]
START = 1_800_000_000
DAY = 24 * 3600


class Clock:
    """Wall-clock seconds that a test moves by hand."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def make_storage(postgres_url: str) -> Iterator[Callable[..., PostgresStorage]]:
    """Stores on this test's schema; every one is closed afterwards."""
    made: list[PostgresStorage] = []

    def make(clock: Callable[[], float] | None = None, gated: bool = False, url: str | None = None,
             **variables: str) -> PostgresStorage:
        store = PostgresStorage(settings(url or postgres_url, **variables), RecordingMetrics(),
                                clock=clock or Clock(), gated=gated)
        made.append(store)
        return store

    yield make
    for store in made:
        store.close()


def settings(url: str, **variables: str) -> Settings:
    environ = {"AUTOPUSH_DB_URL": url, "AUTOPUSH_STATSD_HOST": "", "AUTOPUSH_HOSTNAME": "localhost",
               **{f"AUTOPUSH_{name.upper()}": value for name, value in variables.items()}}
    return load_settings("endpoint", environ, require_crypto_keys=False)


def tables_in(url: str) -> set[str]:
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
    return {name for (name,) in rows}


def row_count(url: str, table: str) -> int:
    with psycopg.connect(url) as connection:
        return connection.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def message(stamp: int, timestamp: int = START, ttl: int = 60) -> Notification:
    return Notification(channel_id=str(uuid.uuid4()), version=f"v{stamp}", ttl=ttl,
                        timestamp=timestamp, sortkey_timestamp=stamp)


# ---- migrations -------------------------------------------------------------------------


def test_migrations_apply_once_and_again_change_nothing(make_storage, postgres_url: str) -> None:
    store = make_storage()
    assert store.set_up() == [f"schema v{version}" for version in range(1, LATEST_VERSION + 1)]
    assert store.is_ready()
    assert make_storage().set_up() == []
    assert list(store.maintain_tables()) == [f"schema: at version {LATEST_VERSION}", "schema: up to date"]
    assert tables_in(postgres_url) == {"schema_version", "router", "channel_lists", "messages"}
    with psycopg.connect(postgres_url) as connection:  # byte-wise, whatever the database's collation
        collations = connection.execute(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns "
            "WHERE table_schema = current_schema() AND column_name IN ('uaid', 'sort_key') ORDER BY 1, 2"
        ).fetchall()
    assert {collation for (_, _, collation) in collations} == {"C"} and len(collations) == 4
    with psycopg.connect(postgres_url) as connection:
        versions = [v for (v,) in connection.execute("SELECT version FROM schema_version ORDER BY 1")]
    assert versions == list(range(1, LATEST_VERSION + 1))


def test_workers_starting_together_apply_each_migration_once(make_storage) -> None:
    """The advisory lock: of four concurrent set-ups exactly one applies each migration."""
    stores = [make_storage() for _ in range(4)]
    results: list[list[str]] = []
    barrier = threading.Barrier(len(stores))

    def set_up(store: PostgresStorage) -> None:
        barrier.wait()
        results.append(store.set_up())

    threads = [threading.Thread(target=set_up, args=(store,)) for store in stores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len(results) == len(stores)
    applied = sorted((line for lines in results for line in lines), key=lambda line: int(line.split("v")[-1]))
    assert applied == [f"schema v{v}" for v in range(1, LATEST_VERSION + 1)]


def test_dry_run_prints_the_sql_and_changes_nothing(make_storage, postgres_url: str) -> None:
    store = make_storage()
    lines = list(store.maintain_tables(dry_run=True, purge_expired=True))
    assert lines[0] == "schema: at version 0"
    assert "migration 1: would run:" in lines
    sql = "\n".join(lines)
    for statement in ("CREATE TABLE IF NOT EXISTS schema_version", "CREATE TABLE router",
                      "CREATE TABLE channel_lists", "CREATE TABLE messages", "CREATE INDEX messages_expiry"):
        assert statement in sql
    assert tables_in(postgres_url) == set()
    assert store.check_health() == {"database": {"status": "NOT OK", "error": "Nonexistent table"}}


def test_maintain_tables_migrates_then_reports_purges(make_storage) -> None:
    store = make_storage()
    applied = [f"migration {version}: applied" for version in range(1, LATEST_VERSION + 1)]
    assert list(store.maintain_tables()) == ["schema: at version 0", *applied]
    lines = list(store.maintain_tables(purge_expired=True, drop_older_than=3))
    assert lines == [
        f"schema: at version {LATEST_VERSION}", "schema: up to date",
        "drop: PostgreSQL keeps no monthly tables, nothing to drop",
        "purge: deleted 0 expired rows from router",
        "purge: deleted 0 expired rows from channel_lists",
        "purge: deleted 0 expired rows from messages",
    ]
    assert store.check_health() == {"database": {"status": "OK"}}


def test_missing_schema_not_to_be_created_is_table_missing(make_storage, postgres_url: str) -> None:
    store = make_storage(gated=True, create_tables="false")
    with pytest.raises(TableMissing) as raised:
        store.set_up()
    assert not raised.value.retryable
    assert "flask maintain-tables" in str(raised.value)
    assert tables_in(postgres_url) == set()
    assert not store.is_ready()
    with pytest.raises(StorageUnavailable):
        store.get_user(uuid.uuid4().hex)  # gated until set_up succeeds
    list(store.maintain_tables())
    assert store.set_up() == []
    assert store.is_ready() and store.get_user(uuid.uuid4().hex) is None


# ---- expiry and purging ---------------------------------------------------------------------


def test_expired_router_record_reads_as_absent_before_any_purge(make_storage, postgres_url: str) -> None:
    clock = Clock()
    store = make_storage(clock=clock, router_ttl_days="2")
    store.set_up()
    user = store.new_user(uuid.uuid4().hex, "http://node:8081", 1000)
    assert store.add_user(user)
    clock.now += 2 * DAY - 1
    assert store.get_user(user.uaid) is not None
    clock.now += 1
    assert store.get_user(user.uaid) is None
    assert store.get_user_with_channels(user.uaid) == (None, [])
    assert store.claim_user(user, "http://node:8081", 2000) == (False, None)
    assert not store.update_router_data(user.uaid, "webpush", {}, 2000)
    assert row_count(postgres_url, "router") == 1  # still stored, already gone for readers
    assert store.add_user(store.new_user(user.uaid, None, 3000))  # the UAID is free again
    assert store.get_user(user.uaid).connected_at == 3000


def record_deletes_per_statement(url: str, table: str) -> None:
    """A statement-level trigger logging how many rows each DELETE on ``table`` removed."""
    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute("CREATE TABLE delete_log (id serial PRIMARY KEY, deleted integer)")
        connection.execute(
            "CREATE FUNCTION log_deletes() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "INSERT INTO delete_log (deleted) SELECT count(*) FROM gone; RETURN NULL; END $$"
        )
        connection.execute(
            f"CREATE TRIGGER log_deletes AFTER DELETE ON {table} REFERENCING OLD TABLE AS gone "
            "FOR EACH STATEMENT EXECUTE FUNCTION log_deletes()"
        )


def deletes_per_statement(url: str) -> list[int]:
    with psycopg.connect(url) as connection:
        return [n for (n,) in connection.execute("SELECT deleted FROM delete_log ORDER BY id")]


def test_purge_deletes_expired_rows_in_batches_and_keeps_live_ones(make_storage, postgres_url: str) -> None:
    clock = Clock()
    store = make_storage(clock=clock, router_ttl_days="1")
    store.set_up()
    store.purge_batch_rows = 4
    record_deletes_per_statement(postgres_url, "messages")
    old, live = User(uaid=uuid.uuid4().hex), User(uaid=uuid.uuid4().hex)
    assert store.add_user(store.new_user(old.uaid, None, 1))
    store.add_channel(old, str(uuid.uuid4()))
    for stamp in range(10):
        store.save_message(old, message(stamp, ttl=60))
    clock.now += 31 * DAY  # past the record's day, the messages' minute, the channel list's 30 days
    assert store.add_user(store.new_user(live.uaid, None, 2))
    store.add_channel(live, str(uuid.uuid4()))
    for stamp in range(3):
        store.save_message(live, message(stamp, timestamp=int(clock.now), ttl=3600))

    assert store.purge_expired() == 1 + 1 + 10
    assert deletes_per_statement(postgres_url) == [4, 4, 2]
    assert {table: row_count(postgres_url, table) for table in ("router", "channel_lists", "messages")} == {
        "router": 1, "channel_lists": 1, "messages": 3}
    assert store.get_user(live.uaid) is not None
    assert len(store.fetch_timestamp_messages(live, None)[1]) == 3
    assert store.purge_expired() == 0
    assert deletes_per_statement(postgres_url) == [4, 4, 2, 0]


def test_purge_skips_rows_a_writer_holds_instead_of_waiting(make_storage, postgres_url: str) -> None:
    store = make_storage()
    store.set_up()
    user = User(uaid=uuid.uuid4().hex)
    expired = [message(stamp, timestamp=START - 120) for stamp in range(3)]
    for notification in expired:
        store.save_message(user, notification)
    with psycopg.connect(postgres_url) as writer:  # a transaction holding one expired row
        writer.execute("SELECT 1 FROM messages WHERE sort_key = %s FOR UPDATE", (expired[0].sort_key,))
        started = time.monotonic()
        assert store.purge_expired() == 2
        assert time.monotonic() - started < 2
        writer.rollback()
    assert row_count(postgres_url, "messages") == 1
    assert store.purge_expired() == 1


def test_maintain_purges_on_its_interval_and_one_node_at_a_time(make_storage, postgres_url: str) -> None:
    clock = Clock()
    store = make_storage(clock=clock, db_purge_interval="600")
    store.set_up()
    user = User(uaid=uuid.uuid4().hex)

    def expired_message() -> None:
        store.save_message(user, message(int(clock.now * 1e6), timestamp=int(clock.now) - 120))

    expired_message()
    store.maintain()
    assert row_count(postgres_url, "messages") == 0
    expired_message()
    clock.now += 599
    store.maintain()  # not yet due
    assert row_count(postgres_url, "messages") == 1
    clock.now += 1
    with psycopg.connect(postgres_url, autocommit=True) as other_node:
        other_node.execute("SELECT pg_advisory_lock(%s)", (postgres_storage.PURGE_LOCK,))
        store.maintain()  # another node is purging: skip this round
        assert row_count(postgres_url, "messages") == 1
        # Released here: a closed session's locks go only when its backend has exited.
        other_node.execute("SELECT pg_advisory_unlock(%s)", (postgres_storage.PURGE_LOCK,))
    clock.now += 600
    store.maintain()
    assert row_count(postgres_url, "messages") == 0


def test_no_purge_interval_means_maintain_never_purges(make_storage, postgres_url: str) -> None:
    clock = Clock()
    store = make_storage(clock=clock, db_purge_interval="0")
    store.set_up()
    store.save_message(User(uaid=uuid.uuid4().hex), message(1, timestamp=START - 120))
    store.maintain()
    assert row_count(postgres_url, "messages") == 1


# ---- failures ---------------------------------------------------------------------------------


def test_server_down_is_unavailable_and_work_resumes_after_restart(
    make_storage, postgres_cluster: LocalPostgres, monkeypatch
) -> None:
    monkeypatch.setattr(postgres_storage, "POOL_WAIT_SECONDS", 2.0)  # a new store's first wait
    store = make_storage(clock=time.time)
    store.set_up()
    user = store.new_user(uuid.uuid4().hex, None, 1)
    assert store.add_user(user)
    postgres_cluster.stop()
    try:
        failures = []
        for call in (lambda: store.get_user(user.uaid),
                     lambda: store.save_message(user, message(1, timestamp=int(time.time()))),
                     lambda: store.advance_bookmark(user, None, 1),
                     lambda: make_storage().set_up()):
            with pytest.raises(StorageUnavailable) as raised:
                call()
            failures.append(raised.value)
        assert all(error.retryable and not isinstance(error, psycopg.Error) for error in failures)
        assert store.check_health() == {"database": {"status": "NOT OK", "error": "Server error"}}
    finally:
        postgres_cluster.start()
    # Back within seconds, not after the pool's default minutes of back-off.
    recovered = _eventually(lambda: store.get_user(user.uaid), seconds=5.0)
    assert recovered is not None and recovered.uaid == user.uaid
    assert store.check_health() == {"database": {"status": "OK"}}


def _eventually(call: Callable[[], object], seconds: float) -> object:
    """The pool reconnects in the background: the first calls after a restart may still fail."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            return call()
        except StorageUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_pool_exhausted_is_throttled(make_storage, monkeypatch) -> None:
    monkeypatch.setattr(postgres_storage, "POOL_WAIT_SECONDS", 0.5)
    store = make_storage(db_pool_size="1")
    store.set_up()
    with store._connection("hold") as held:
        held.execute("SELECT 1")
        with pytest.raises(StorageThrottled):
            store.get_user(uuid.uuid4().hex)
    assert store.get_user(uuid.uuid4().hex) is None


def test_refused_credentials_are_not_retryable(make_storage, postgres_cluster: LocalPostgres, monkeypatch) -> None:
    monkeypatch.setattr(postgres_storage, "POOL_WAIT_SECONDS", 1.0)
    url = postgres_cluster.url().replace("postgres@", "nobody@", 1)
    with pytest.raises(StorageError) as raised:
        make_storage(url=url).set_up()
    assert not raised.value.retryable
    assert "nobody" in str(raised.value)


# ---- gevent -------------------------------------------------------------------------------------

GEVENT_PROBE = textwrap.dedent("""
    import sys
    if sys.argv[2] == "patched":
        from gevent import monkey
        monkey.patch_all()
    import json, time
    import gevent
    from psycopg import waiting
    from autopush_flask.config import load_settings
    from autopush_flask.db.postgres import PostgresStorage
    from autopush_flask.metrics import RecordingMetrics

    settings = load_settings("endpoint", {"AUTOPUSH_DB_URL": sys.argv[1], "AUTOPUSH_STATSD_HOST": "",
                                          "AUTOPUSH_HOSTNAME": "localhost"}, require_crypto_keys=False)
    store = PostgresStorage(settings, RecordingMetrics())
    store.set_up()
    ticks = 0

    def tick():
        global ticks
        while True:
            gevent.sleep(0.01)
            ticks += 1

    def sleep_in_database():
        with store._connection("probe") as connection:
            connection.execute("SELECT pg_sleep(1)")

    ticker = gevent.spawn(tick)
    gevent.sleep(0.05)
    before, started = ticks, time.monotonic()
    gevent.spawn(sleep_in_database).get()
    elapsed = time.monotonic() - started
    during = ticks - before
    ticker.kill()
    store.close()
    print(json.dumps({"ticks": during, "elapsed": elapsed, "wait": waiting.wait.__name__}))
""")


def _probe(url: str, mode: str) -> dict:
    result = subprocess.run([sys.executable, "-c", GEVENT_PROBE, url, mode], cwd=ROOT,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_a_query_under_gevent_lets_other_greenlets_run(postgres_url: str) -> None:
    """A 1 s ``pg_sleep`` on one greenlet; a 10 ms ticker on another keeps counting.

    Without the monkey-patching psycopg waits in C and the ticker stands
    still for the whole second, so the figure tells the two apart.
    """
    patched = _probe(postgres_url, "patched")
    assert patched["elapsed"] >= 1.0
    assert patched["wait"] != "wait_c"
    assert patched["ticks"] >= 50, patched
    unpatched = _probe(postgres_url, "unpatched")
    assert unpatched["wait"] == "wait_c"
    assert unpatched["ticks"] < 10, unpatched


def test_statements_time_out_unless_the_url_says_otherwise(make_storage, postgres_url: str) -> None:
    """A stuck server must not hold a write past the bookmark margin; the URL's own options stay."""
    def show(store: PostgresStorage, name: str) -> str:
        with store._connection("show", data=False) as connection:
            return connection.execute(f"SHOW {name}").fetchone()[name]

    def timeout_of(store: PostgresStorage) -> str:
        return show(store, "statement_timeout")

    store = make_storage()
    assert timeout_of(store) == "10s"
    assert show(store, "search_path").startswith("t")  # the URL's schema option is kept beside it
    own = postgres_url + "%20-c%20statement_timeout%3D2500"
    assert timeout_of(make_storage(url=own)) == "2500ms"
