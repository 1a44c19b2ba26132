"""The ``Storage`` interface on PostgreSQL (``AUTOPUSH_DB_URL``).

One ``psycopg_pool.ConnectionPool`` per worker process, shared by all its
greenlets, in autocommit mode: every single-statement operation is atomic on
its own and costs one round trip; the few multi-statement ones open a
transaction. Conditions that DynamoDB checks with condition expressions are
``WHERE`` clauses here, and their result is the affected row count.

gevent: psycopg (>= 3.1.14; read in 3.3.9's ``psycopg/waiting.py``) waits
on its socket cooperatively only if ``gevent.monkey`` reports ``select``
patched *when psycopg is imported*: it then picks the pure-Python
``wait_poll`` over its C ``wait_c``, which blocks the whole worker for the
length of a query (measured: a 10 ms ticker greenlet counted 97 ticks during
a 1 s ``pg_sleep`` when patched first, 0 otherwise; tests/storage/test_postgres.py).
The pool's worker threads and locks likewise come from ``threading`` as it
is at import. Hence this module must be imported after the monkey-patching:
gunicorn never preloads the app and ``db/__init__`` imports this backend on
demand; ``_warn_if_blocking`` logs when the order was wrong anyway.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout, TooManyRequests

from autopush_flask.config import Settings
from autopush_flask.db.errors import (
    StorageError,
    StorageThrottled,
    StorageUnavailable,
    TableMissing,
)
from autopush_flask.db.interface import TIMESTAMP_FETCH_LIMIT, TOPIC_FETCH_LIMIT
from autopush_flask.db.models import (
    SIXTY_DAYS,
    THIRTY_DAYS,
    WEBPUSH,
    Notification,
    User,
    after_bookmark_key,
    parse_notifications,
    registered_channels,
)
from autopush_flask.db.postgres import schema
from autopush_flask.db.postgres.statements import (
    ADD_CHANNEL,
    ADD_USER,
    CLAIM_USER,
    COUNT_EXPIRED,
    DELETE_MESSAGE,
    DROP_USER,
    FETCH_TIMESTAMP_MESSAGES,
    FETCH_TOPIC_MESSAGES,
    GET_CHANNELS,
    GET_USER,
    GET_USER_WITH_CHANNELS,
    LOWER_BOOKMARK,
    MOVE_BOOKMARK,
    PURGE_BATCH,
    REFRESH_USER,
    REMOVE_CHANNEL,
    REMOVE_NODE_ID,
    ROUTER_COLUMNS,
    SAVE_MESSAGE,
    SET_FIRST_BOOKMARK,
    SET_MIN_URGENCY,
    TIMESTAMP_KEYS_BELOW,
    TIMESTAMP_KEYS_FROM,
    TOUCH_CHANNELS,
    UPDATE_ROUTER_DATA,
    columns,
)

log = logging.getLogger(__name__)

# Waiting for a pooled connection: all of them busy this long means the
# worker asks more than its connections carry (throttled); while connecting
# fails, a short wait is enough to tell the caller the store is down.
POOL_WAIT_SECONDS = 5.0
DOWN_WAIT_SECONDS = 1.0
CONNECT_TIMEOUT_SECONDS = 3
# How long the pool retries one lost connection (attempts at 0, ~1 and 3 s)
# before giving it up; demand then starts a new attempt. psycopg_pool's
# default of 5 minutes, with its doubling back-off, left a worker without
# connections for up to a minute after the server came back.
RECONNECT_TIMEOUT_SECONDS = 3.0
POOL_MIN_SIZE = 1
PURGE_BATCH_ROWS = 10_000
PURGE_LOCK = schema.MIGRATION_LOCK + 1
PURGED_TABLES = ("router", "channel_lists", "messages")
DAY_SECONDS = 24 * 3600
STATEMENT_TIMEOUT_MS = 10_000
# SQLSTATEs of a connection refused for what waiting cannot fix: bad user or
# password, unknown database.
CONFIGURATION_SQLSTATES = frozenset({"28000", "28P01", "3D000"})
CONFIGURATION_PHRASES = ("password authentication failed", "does not exist", "no pg_hba.conf entry")


class _Link:
    """What the pool's last attempt to connect showed: tells an outage from overload."""

    def __init__(self) -> None:
        self.error: psycopg.Error | None = None
        self.connected = False

    @property
    def down(self) -> bool:
        return self.error is not None

    def connection_class(self) -> type[psycopg.Connection]:
        """A connection class that reports each connect's outcome here."""
        link = self

        class ObservedConnection(psycopg.Connection):
            @classmethod
            def connect(cls, *args: Any, **kwargs: Any) -> ObservedConnection:
                try:
                    connection = super().connect(*args, **kwargs)
                except psycopg.Error as error:
                    link.error = error
                    raise
                link.error, link.connected = None, True
                return connection

        return ObservedConnection


class PostgresStorage:
    """Router records, channel lists and messages in three PostgreSQL tables.

    Errors: every psycopg error leaves as a ``StorageError``:

    - connection and operational failures (server down or restarting,
      connection lost, statement cancelled, serialisation failure or
      deadlock) → ``StorageUnavailable``;
    - no pooled connection within ``POOL_WAIT_SECONDS`` while the server
      accepts connections → ``StorageThrottled``: every connection of this
      worker's pool is busy, the store is up but cannot take more of this
      worker's load now, which is what DynamoDB's throughput errors mean and
      what callers already answer (errno 201, a delayed retry). While
      connecting fails the same wait is ``StorageUnavailable``, and when the
      server refuses the credentials or the database it is a plain
      ``StorageError``, which waiting cannot fix;
    - a table missing under a running node → ``TableMissing``; anything else
      (a bug in a statement, bad data) → ``StorageError``.
    """

    def __init__(
        self,
        settings: Settings,
        metrics: Any,
        clock: Callable[[], float] = time.time,
        gated: bool = False,
    ) -> None:
        self._settings = settings
        self._metrics = metrics
        self._clock = clock
        self._gated = gated
        self._ready = False
        self._link = _Link()
        self._pool: ConnectionPool = ConnectionPool(
            settings.db_url or "",
            open=False,
            connection_class=self._link.connection_class(),
            kwargs=_connection_options(settings.db_url or ""),
            min_size=POOL_MIN_SIZE,
            max_size=settings.db_pool_size,
            timeout=POOL_WAIT_SECONDS,
            reconnect_timeout=RECONNECT_TIMEOUT_SECONDS,
            name="autopush",
        )
        self._pool_lock = threading.Lock()
        self._pool_opened = False
        self._pool_checking = False
        self._next_purge = 0.0
        self.purge_batch_rows = PURGE_BATCH_ROWS
        _warn_if_blocking()

    # ---- connections and errors -------------------------------------------------

    def _open_pool(self) -> ConnectionPool:
        """Open on first use, in the background: a server that is down fails calls, not construction."""
        if not self._pool_opened:
            with self._pool_lock:
                if not self._pool_opened:
                    self._pool.open(wait=False)
                    self._pool_opened = True
        return self._pool

    @contextmanager
    def _connection(self, operation: str, data: bool = True) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for one operation; psycopg errors leave as ``StorageError``."""
        if data and self._gated and not self._ready:
            raise StorageUnavailable(f"{operation}: store not set up yet", operation, "NotReady")
        wait = DOWN_WAIT_SECONDS if self._link.down else POOL_WAIT_SECONDS
        try:
            with self._open_pool().connection(timeout=wait) as connection:
                yield connection
        except psycopg.Error as error:
            raise self._storage_error(error, operation) from error

    def _storage_error(self, error: psycopg.Error, operation: str) -> StorageError:
        message = f"{operation}: {type(error).__name__}: {error}"
        code = error.sqlstate or type(error).__name__
        if isinstance(error, TooManyRequests):
            return StorageThrottled(message, operation, code)
        if isinstance(error, PoolTimeout):
            return self._pool_timeout_error(message, operation)
        if isinstance(error, psycopg.errors.UndefinedTable):
            return TableMissing(message, operation, code)
        if isinstance(error, psycopg.OperationalError):
            self._check_pool_soon()
            return StorageUnavailable(message, operation, code)
        return StorageError(message, operation, code)

    def _pool_timeout_error(self, message: str, operation: str) -> StorageError:
        failure = self._link.error
        if failure is not None and _configuration_error(failure):
            return StorageError(f"{operation}: cannot connect: {failure}", operation, failure.sqlstate or "")
        if failure is not None or not self._link.connected:
            detail = f": {failure}" if failure is not None else ""
            return StorageUnavailable(f"{message}{detail}", operation, "PoolTimeout")
        return StorageThrottled(message, operation, "PoolTimeout")

    def _check_pool_soon(self) -> None:
        """After a lost connection, test the idle ones in the background.

        A server restart breaks every pooled connection, and each would
        otherwise fail one more request before the pool replaced it.
        """
        if self._pool_checking:
            return
        self._pool_checking = True
        threading.Thread(target=self._check_pool, name="autopush-pool-check", daemon=True).start()

    def _check_pool(self) -> None:
        try:
            self._pool.check()
        except Exception as error:  # noqa: BLE001 - a failed check only delays replacement
            log.debug("pool check failed: %s", error)
        finally:
            self._pool_checking = False

    def _execute(self, operation: str, query: Any, params: dict[str, Any]) -> int:
        """Run one statement; the number of rows it changed."""
        with self._connection(operation) as connection:
            return connection.execute(query, params).rowcount

    def _fetch(self, operation: str, query: Any, params: dict[str, Any]) -> list[dict[str, Any]]:
        with self._connection(operation) as connection:
            return connection.execute(query, params).fetchall()

    def _now(self) -> int:
        return int(self._clock())

    def _router_expiry(self) -> int:
        return self._now() + self._settings.router_ttl_days * DAY_SECONDS

    def close(self) -> None:
        """Close the pool's connections (tests, shutdown)."""
        if self._pool_opened:
            self._pool.close()

    # ---- life cycle ------------------------------------------------------------------

    def set_up(self) -> list[str]:
        """Apply pending migrations (``create_tables``) or insist on the latest schema."""
        created = []
        with self._connection("set_up", data=False) as connection:
            version = schema.current_version(connection)
            if not self._settings.create_tables and version < schema.LATEST_VERSION:
                raise TableMissing(
                    f"set_up: schema at version {version}, this release needs "
                    f"{schema.LATEST_VERSION}: run `flask maintain-tables`",
                    "set_up",
                    "SchemaVersion",
                )
            for migration in schema.pending(version):
                if schema.apply(connection, migration):
                    created.append(f"schema v{migration.version}")
        self._ready = True
        return created

    def is_ready(self) -> bool:
        return self._ready

    def maintain(self) -> None:
        """Purge expired rows every ``db_purge_interval`` seconds, one node at a time."""
        interval = self._settings.db_purge_interval
        now = self._clock()
        if not interval or now < self._next_purge:
            return
        self._next_purge = now + interval
        with self._connection("purge_expired", data=False) as connection:
            if not _only_row(connection.execute("SELECT pg_try_advisory_lock(%s) AS locked", (PURGE_LOCK,)))["locked"]:
                return
            try:
                self._purge_tables(connection)
            finally:
                connection.execute("SELECT pg_advisory_unlock(%s)", (PURGE_LOCK,))

    def check_health(self) -> dict[str, dict[str, str]]:
        try:
            with self._connection("check_health", data=False) as connection:
                version = schema.current_version(connection)
        except StorageError:
            return {"database": {"status": "NOT OK", "error": "Server error"}}
        except Exception:  # noqa: BLE001 - health must answer, whatever broke
            return {"database": {"status": "NOT OK", "error": "Internal error"}}
        if version < schema.LATEST_VERSION:
            return {"database": {"status": "NOT OK", "error": "Nonexistent table"}}
        return {"database": {"status": "OK"}}

    def maintain_tables(
        self, drop_older_than: int | None = None, dry_run: bool = False, purge_expired: bool = False
    ) -> Iterator[str]:
        """Migrate (or, ``dry_run``, print the SQL it would run), then purge if asked."""
        with self._connection("maintain_tables", data=False) as connection:
            version = schema.current_version(connection)
        yield f"schema: at version {version}"
        plan = schema.planned_statements(version)
        if not plan:
            yield "schema: up to date"
        for migration, statements in plan:
            if dry_run:
                yield f"migration {migration.version}: would run:"
                yield from (f"  {' '.join(statement.split())};" for statement in statements)
                continue
            with self._connection("maintain_tables", data=False) as connection:
                applied = schema.apply(connection, migration)
            yield f"migration {migration.version}: {'applied' if applied else 'already applied'}"
        if drop_older_than is not None:
            yield "drop: PostgreSQL keeps no monthly tables, nothing to drop"
        if purge_expired and dry_run and version == 0:
            yield "purge: no tables yet, nothing to purge"
        elif purge_expired:
            yield from self._purge_report(dry_run)

    def _purge_report(self, dry_run: bool) -> Iterator[str]:
        with self._connection("purge_expired", data=False) as connection:
            counts = self._count_expired(connection) if dry_run else self._purge_tables(connection)
        verb = "would delete" if dry_run else "deleted"
        for table, count in counts.items():
            yield f"purge: {verb} {count} expired rows from {table}"

    def purge_expired(self) -> int:
        with self._connection("purge_expired", data=False) as connection:
            return sum(self._purge_tables(connection).values())

    def _purge_tables(self, connection: psycopg.Connection[Any]) -> dict[str, int]:
        now = self._now()
        return {table: self._purge_table(connection, table, now) for table in PURGED_TABLES}

    def _purge_table(self, connection: psycopg.Connection[Any], table: str, now: int) -> int:
        """Delete in batches of ``purge_batch_rows`` until a batch comes back short.

        A short batch may also mean rows were locked by writes: they go next time.
        """
        query = sql.SQL(PURGE_BATCH).format(table=sql.Identifier(table))
        batch, total = self.purge_batch_rows, 0
        while True:
            deleted = connection.execute(query, {"now": now, "batch": batch}).rowcount
            total += deleted
            if deleted < batch:
                return total

    def _count_expired(self, connection: psycopg.Connection[Any]) -> dict[str, int]:
        now = self._now()
        return {
            table: _only_row(
                connection.execute(sql.SQL(COUNT_EXPIRED).format(table=sql.Identifier(table)), {"now": now})
            )["expired"]
            for table in PURGED_TABLES
        }

    # ---- router records -------------------------------------------------------------------

    def new_user(self, uaid: str, node_id: str | None, connected_at: int, **fields: object) -> User:
        values: dict[str, Any] = {"record_version": 1, "expiry": self._router_expiry(), **fields}
        return User(**{**values, "uaid": uaid, "node_id": node_id, "connected_at": connected_at})

    def get_user(self, uaid: str) -> User | None:
        rows = self._fetch("get_user", GET_USER, {"uaid": uaid, "now": self._now()})
        return _user(rows[0]) if rows else None

    def get_user_with_channels(self, uaid: str) -> tuple[User | None, list[str] | None]:
        """Both in one statement (the router row and the channel list joined on the UAID)."""
        rows = self._fetch("get_user_with_channels", GET_USER_WITH_CHANNELS, {"uaid": uaid, "now": self._now()})
        row = rows[0]
        return _user(row), _channels(row["channel_ids"])

    def add_user(self, user: User) -> bool:
        params = {name: getattr(user, name) for name in ROUTER_COLUMNS}
        params.update(router_data=_json(user.router_data), expiry=self._router_expiry(), now=self._now())
        return self._execute("add_user", ADD_USER, params) == 1

    def claim_user(self, user: User, node_id: str, connected_at: int) -> tuple[bool, User | None]:
        """Point the record at this node and connection, as a WebPush record; sets ``user.expiry``.

        Only what a hello changes is written (like the DynamoDB update):
        anything else written meanwhile, a bridge token say, stays.
        """
        values: dict[str, Any] = {
            "router_type": WEBPUSH,
            "node_id": node_id,
            "connected_at": connected_at,
            "expiry": self._router_expiry(),
        }
        query = sql.SQL(CLAIM_USER).format(
            columns=columns(ROUTER_COLUMNS),
            updates=sql.SQL(", ").join(
                sql.SQL("{} = {}").format(sql.Identifier(name), sql.Placeholder(f"set_{name}")) for name in values
            ),
            prior_columns=columns(ROUTER_COLUMNS, "prior"),
        )
        params = {f"set_{name}": value for name, value in values.items()}
        params.update(
            uaid=user.uaid,
            now=self._now(),
            claim_router_type=user.router_type,
            claim_connected_at=connected_at,
        )
        rows = self._fetch("claim_user", query, params)
        if not rows:
            return False, None
        user.expiry = values["expiry"]
        return True, _user(rows[0])

    def refresh_user(self, user: User) -> None:
        if not user.due_for_refresh(self._now(), self._settings.router_ttl_days * DAY_SECONDS):
            return
        params: dict[str, Any] = {"uaid": user.uaid, "expiry": self._router_expiry(), "now": self._now()}
        self._execute("refresh_user", REFRESH_USER, params)
        user.expiry = params["expiry"]

    def update_router_data(self, uaid: str, router_type: str, router_data: dict, connected_at: int) -> bool:
        params = {
            "uaid": uaid,
            "router_type": router_type,
            "router_data": _json(router_data),
            "connected_at": connected_at,
            "expiry": self._router_expiry(),
            "now": self._now(),
        }
        return self._execute("update_router_data", UPDATE_ROUTER_DATA, params) == 1

    def set_min_urgency(self, user: User, urgency: str) -> bool:
        params = {"uaid": user.uaid, "urgency": urgency, "now": self._now()}
        return self._execute("set_min_urgency", SET_MIN_URGENCY, params) == 1

    def remove_node_id(self, uaid: str, node_id: str, connected_at: int) -> bool:
        params = {"uaid": uaid, "node_id": node_id, "connected_at": connected_at, "now": self._now()}
        return self._execute("remove_node_id", REMOVE_NODE_ID, params) == 1

    def drop_user(self, uaid: str) -> bool:
        """Delete the record; ``True`` only if it had not expired (an expired one was already absent)."""
        rows = self._fetch("drop_user", DROP_USER, {"uaid": uaid, "now": self._now()})
        return bool(rows and rows[0]["live"])

    def holds_data_of(self, user: User) -> bool:
        """Always: one set of tables, nothing is ever dropped by month."""
        return True

    def needs_migration(self, user: User) -> bool:
        return False

    def migrate_user(self, user: User, bookmark: int | None) -> tuple[User, bool]:
        return user, False

    # ---- channels ----------------------------------------------------------------------------

    def get_channels(self, user: User) -> list[str]:
        rows = self._fetch("get_channels", GET_CHANNELS, {"uaid": user.uaid, "now": self._now()})
        return _channels(rows[0]["channel_ids"]) if rows else []

    def add_channel(self, user: User, channel_id: str) -> None:
        self._execute("add_channel", ADD_CHANNEL, self._channel_params(user.uaid, channel_id))

    def remove_channel(self, user: User, channel_id: str) -> bool:
        return self._execute("remove_channel", REMOVE_CHANNEL, self._channel_params(user.uaid, channel_id)) == 1

    def touch_channels(self, user: User) -> None:
        self._execute("touch_channels", TOUCH_CHANNELS, self._channel_params(user.uaid))

    def _channel_params(self, uaid: str, channel_id: str | None = None) -> dict[str, Any]:
        now = self._now()
        return {"uaid": uaid, "channel_id": channel_id, "now": now, "expiry": now + THIRTY_DAYS}

    # ---- messages -----------------------------------------------------------------------------

    def save_message(self, user: User, notification: Notification) -> None:
        self._execute("save_message", SAVE_MESSAGE, _message_params(user.uaid, notification))

    def save_late_messages(self, user: User, notifications: Sequence[Notification]) -> None:
        """Save, then lower the bookmark below them, in one transaction.

        Of messages sharing a key the last is kept (one statement may not
        write a row twice); rows are written in key order so that two such
        transactions for one user lock them in the same order.
        """
        if not notifications:
            return
        newest = {n.sort_key: n for n in notifications}
        rows = [_message_params(user.uaid, newest[key]) for key in sorted(newest)]
        stamps = [n.sortkey_timestamp for n in newest.values() if n.sortkey_timestamp is not None and not n.topic]
        with self._connection("save_late_messages") as connection, connection.transaction():
            with connection.cursor() as cursor:
                cursor.executemany(SAVE_MESSAGE, rows)
            if stamps:
                connection.execute(LOWER_BOOKMARK, {"uaid": user.uaid, "lowered": min(stamps) - 1, "now": self._now()})

    def delete_message(self, user: User, sort_key: str, updateid: str | None = None) -> bool:
        return self.cancel_message(user.uaid, sort_key, updateid)

    def cancel_message(self, uaid: str, sort_key: str, updateid: str | None = None) -> bool:
        """Without ``updateid`` a delete always succeeds, as an unconditional DynamoDB delete does."""
        params = {"uaid": uaid, "sort_key": sort_key, "updateid": updateid}
        deleted = self._execute("delete_message", DELETE_MESSAGE, params)
        return updateid is None or deleted == 1

    def fetch_topic_messages(self, user: User, limit: int = TOPIC_FETCH_LIMIT) -> tuple[int | None, list[Notification]]:
        params = {
            "uaid": user.uaid,
            "now": self._now(),
            "limit": max(limit - 1, 0),
            "from": TIMESTAMP_KEYS_FROM,
            "below": TIMESTAMP_KEYS_BELOW,
        }
        rows = self._fetch("fetch_topic_messages", FETCH_TOPIC_MESSAGES, params)
        messages = self._notifications(row for row in rows if row["chidmessageid"] is not None)
        return rows[0]["bookmark"], messages

    def fetch_timestamp_messages(
        self, user: User, bookmark: int | None, limit: int = TIMESTAMP_FETCH_LIMIT
    ) -> tuple[int | None, list[Notification]]:
        params = {
            "uaid": user.uaid,
            "now": self._now(),
            "limit": limit,
            "after": max(after_bookmark_key(bookmark), TIMESTAMP_KEYS_FROM),
            "below": TIMESTAMP_KEYS_BELOW,
        }
        messages = self._notifications(self._fetch("fetch_timestamp_messages", FETCH_TIMESTAMP_MESSAGES, params))
        stamps = [m.sortkey_timestamp for m in messages if m.sortkey_timestamp is not None]
        return (max(stamps) if stamps else None), messages

    def advance_bookmark(self, user: User, expected: int | None, bookmark: int) -> bool:
        now = self._now()
        params = {"uaid": user.uaid, "bookmark": bookmark, "expected": expected, "now": now, "expiry": now + SIXTY_DAYS}
        query = SET_FIRST_BOOKMARK if expected is None else MOVE_BOOKMARK
        return self._execute("advance_bookmark", query, params) == 1

    def _notifications(self, rows: Any) -> list[Notification]:
        return parse_notifications(rows, self._metrics)


def _only_row(cursor: psycopg.Cursor[Any]) -> Any:
    """The row of a query that always returns exactly one (an aggregate, a function call)."""
    row = cursor.fetchone()
    if row is None:  # a psycopg.Error, so it leaves ``_connection`` as a StorageError
        raise psycopg.InterfaceError("expected one row, got none")
    return row


def _connection_options(url: str) -> dict[str, Any]:
    """Autocommit, dict rows, and connect and statement timeouts unless the URL sets its own.

    A statement stalled on a stuck server must fail well inside the
    bookmark margin (60 s, ``session._advance_bookmark``): 10 s, DynamoDB's
    read timeout, turns it into a retryable ``StorageUnavailable``.
    """
    options: dict[str, Any] = {"autocommit": True, "row_factory": dict_row}
    try:
        given = conninfo_to_dict(url)
    except psycopg.Error:
        return options  # a malformed URL fails at connect time, as a StorageError
    if "connect_timeout" not in given:
        options["connect_timeout"] = CONNECT_TIMEOUT_SECONDS
    if "application_name" not in given:
        options["application_name"] = "autopush-flask"
    given_options = str(given.get("options") or "")
    if "statement_timeout" not in given_options:
        options["options"] = f"{given_options} -c statement_timeout={STATEMENT_TIMEOUT_MS}".strip()
    return options


def _configuration_error(error: psycopg.Error) -> bool:
    """A refusal that waiting cannot fix: bad credentials, unknown role or database.

    psycopg's connection errors carry no SQLSTATE (measured with 3.3.9: a
    refused role gives ``sqlstate=None``), so the server's FATAL text decides.
    """
    if error.sqlstate in CONFIGURATION_SQLSTATES:
        return True
    text = str(error)
    return any(phrase in text for phrase in CONFIGURATION_PHRASES)


def _warn_if_blocking() -> None:
    """Log when gevent patched ``select`` after psycopg chose its blocking C wait."""
    monkey = sys.modules.get("gevent.monkey")
    if monkey is None or not monkey.is_module_patched("select"):
        return
    from psycopg import waiting

    if waiting.wait is getattr(waiting, "wait_c", None):
        log.warning("psycopg was imported before gevent's monkey-patching: queries block the worker")


def _user(row: dict[str, Any]) -> User | None:
    if row["uaid"] is None:
        return None
    return User.from_item({name: row[name] for name in ROUTER_COLUMNS if row[name] is not None})


def _channels(channel_ids: list[str] | None) -> list[str]:
    return registered_channels({"chids": channel_ids or []})


def _json(value: dict | None) -> Jsonb | None:
    return None if value is None else Jsonb(value)


def _message_params(uaid: str, notification: Notification) -> dict[str, Any]:
    item = notification.to_item(uaid)
    return {
        "uaid": uaid,
        "sort_key": item["chidmessageid"],
        "ttl": item["ttl"],
        "timestamp": item["timestamp"],
        "updateid": item["updateid"],
        "expiry": item["expiry"],
        "data": item["data"],
        "headers": _json(item["headers"]),
        "urgency": item["urgency"],
        "sender": item["sender"],
    }
