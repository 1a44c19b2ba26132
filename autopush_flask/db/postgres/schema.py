"""The PostgreSQL schema as ordered, versioned migrations.

Each migration runs in one transaction together with the row that records
it in ``schema_version``, under a transaction-scoped advisory lock: workers
that start together queue on the lock, and each one, once it holds it,
finds the migration applied or applies it. A migration is never edited once
released; a change of schema is a new entry at the end of ``MIGRATIONS``.

Table names are unqualified, so they resolve through the connection's
``search_path`` (tests give each test a schema of its own).

Why the columns are what they are:

- ``sort_key`` and ``uaid`` compare byte-wise (``COLLATE "C"``), as DynamoDB
  orders its sort keys: under a language collation ``"01;"`` would not sort
  between the topic keys ``"01:…"`` and the timestamp keys ``"02:…"``, and
  the range reads of ``storage.py`` would return the wrong messages.
- A user's channel list is one row holding an array of channel ids, with
  the drain bookmark and one expiry: adding or removing a channel, and
  reviving an expired list with an empty set, are each one atomic statement
  on one row, as they are one conditional update in DynamoDB.
- Every table has an ``expiry`` (unix seconds) and an index on it: reads
  filter on it, so a row is gone the moment it expires, and the purge finds
  expired rows without scanning.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import psycopg

# pg_advisory_xact_lock key serialising migrations across workers and nodes
# ("autopush" in ASCII, so another application's keys are unlikely to clash).
MIGRATION_LOCK = 0x6175746F70757368

VERSION_TABLE = (
    "CREATE TABLE IF NOT EXISTS schema_version ("
    "version integer PRIMARY KEY, "
    "applied_at timestamptz NOT NULL DEFAULT now())"
)


class Migration(NamedTuple):
    version: int
    statements: tuple[str, ...]


MIGRATIONS: tuple[Migration, ...] = (
    Migration(
        1,
        (
            """CREATE TABLE router (
            uaid text COLLATE "C" PRIMARY KEY,
            router_type text,
            connected_at bigint,
            node_id text,
            record_version integer,
            router_data jsonb,
            current_month text,
            last_connect bigint,
            critical_failure text,
            expiry bigint NOT NULL
        )""",
            "CREATE INDEX router_expiry ON router (expiry)",
            """CREATE TABLE channel_lists (
            uaid text COLLATE "C" PRIMARY KEY,
            channel_ids text[] NOT NULL DEFAULT '{}',
            bookmark bigint,
            expiry bigint NOT NULL
        )""",
            "CREATE INDEX channel_lists_expiry ON channel_lists (expiry)",
            """CREATE TABLE messages (
            uaid text COLLATE "C" NOT NULL,
            sort_key text COLLATE "C" NOT NULL,
            ttl bigint NOT NULL,
            "timestamp" bigint NOT NULL,
            updateid text NOT NULL,
            expiry bigint NOT NULL,
            data text,
            headers jsonb,
            PRIMARY KEY (uaid, sort_key)
        )""",
            "CREATE INDEX messages_expiry ON messages (expiry)",
        ),
    ),
    # Urgency (docs/protocol.md#urgency): the browser's minimum on its
    # record, the sender's level on each message (NULL means the default);
    # the sender's domain while delivery tracking tags senders
    # (docs/operations.md#delivery-tracking).
    Migration(
        2,
        (
            "ALTER TABLE router ADD COLUMN urgency text",
            "ALTER TABLE messages ADD COLUMN urgency text",
            "ALTER TABLE messages ADD COLUMN sender text",
        ),
    ),
)

LATEST_VERSION = MIGRATIONS[-1].version


def current_version(connection: psycopg.Connection[Any]) -> int:
    """The highest applied migration; 0 for a schema never migrated."""
    row = connection.execute("SELECT to_regclass('schema_version') IS NOT NULL AS present").fetchone()
    if not _value(row, "present"):
        return 0
    row = connection.execute("SELECT coalesce(max(version), 0) AS version FROM schema_version").fetchone()
    return int(_value(row, "version"))


def pending(version: int) -> list[Migration]:
    """The migrations a schema at ``version`` still needs, in order."""
    return [migration for migration in MIGRATIONS if migration.version > version]


def planned_statements(version: int) -> list[tuple[Migration, list[str]]]:
    """What ``apply`` would run for each pending migration (``--dry-run``)."""
    bootstrap = [VERSION_TABLE] if version == 0 else []
    return [
        (migration, [*(bootstrap if index == 0 else []), *migration.statements])
        for index, migration in enumerate(pending(version))
    ]


def apply(connection: psycopg.Connection[Any], migration: Migration) -> bool:
    """Apply one migration unless another worker did; ``True`` if this call applied it.

    ``connection`` must be in autocommit mode: the migration opens its own
    transaction, so its statements and its version row commit together or
    not at all.
    """
    with connection.transaction():
        connection.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        connection.execute(VERSION_TABLE)
        if current_version(connection) >= migration.version:
            return False
        for statement in migration.statements:
            connection.execute(statement)
        connection.execute("INSERT INTO schema_version (version) VALUES (%s)", (migration.version,))
    return True


def _value(row: object, name: str) -> Any:
    """A column of a row from a dict- or tuple-returning cursor."""
    if isinstance(row, dict):
        return row[name]
    return row[0]  # type: ignore[index]
