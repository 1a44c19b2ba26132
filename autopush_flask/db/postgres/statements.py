"""The SQL of the PostgreSQL backend, one statement per operation.

Each mirrors a DynamoDB operation of ``db/dynamodb``: its condition
expression is the ``WHERE`` clause, its result the affected row count or
the ``RETURNING`` row. Reads filter ``expiry > %(now)s``, so expired rows
are absent at once, whenever the purge deletes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from psycopg import sql

from autopush_flask.db.models import TIMESTAMP_PREFIX, User

ROUTER_COLUMNS = tuple(f.name for f in dataclasses.fields(User))
# Timestamp sort keys are "02:{stamp}:{chid}": all of them sort inside
# ["02:", "02;"), byte-wise, and topic and legacy keys outside it.
TIMESTAMP_KEYS_FROM = f"{TIMESTAMP_PREFIX}:"
TIMESTAMP_KEYS_BELOW = f"{TIMESTAMP_PREFIX};"


def columns(names: Sequence[str], table: str | None = None) -> sql.Composable:
    """A quoted column list, qualified by ``table`` when given."""
    return sql.SQL(", ").join(sql.Identifier(table, name) if table else sql.Identifier(name) for name in names)


GET_USER = sql.SQL("SELECT {columns} FROM router WHERE uaid = %(uaid)s AND expiry > %(now)s").format(
    columns=columns(ROUTER_COLUMNS)
)
GET_USER_WITH_CHANNELS = sql.SQL(
    "SELECT {columns}, c.channel_ids FROM (SELECT %(uaid)s::text AS uaid) AS k "
    "LEFT JOIN router AS r ON r.uaid = k.uaid AND r.expiry > %(now)s "
    "LEFT JOIN channel_lists AS c ON c.uaid = k.uaid AND c.expiry > %(now)s"
).format(columns=columns(ROUTER_COLUMNS, "r"))
# Creates the record, or replaces one that has expired (it reads as absent).
ADD_USER = sql.SQL(
    "INSERT INTO router AS r ({columns}) VALUES ({values}) "
    "ON CONFLICT (uaid) DO UPDATE SET {updates} WHERE r.expiry <= %(now)s"
).format(
    columns=columns(ROUTER_COLUMNS),
    values=sql.SQL(", ").join(map(sql.Placeholder, ROUTER_COLUMNS)),
    updates=sql.SQL(", ").join(
        sql.SQL("{0} = EXCLUDED.{0}").format(sql.Identifier(name)) for name in ROUTER_COLUMNS[1:]
    ),
)
# The hello condition of db/dynamodb/router.py: the record exists, has the
# same or no router type and no connection at least as new. The CTE locks
# the row and keeps its values before the update, for RETURNING.
CLAIM_USER = (
    "WITH prior AS (SELECT {columns} FROM router WHERE uaid = %(uaid)s FOR UPDATE) "
    "UPDATE router AS r SET {updates} FROM prior "
    "WHERE r.uaid = prior.uaid AND prior.expiry > %(now)s "
    "AND (prior.router_type IS NULL OR prior.router_type = %(claim_router_type)s) "
    "AND (prior.node_id IS NULL OR prior.connected_at < %(claim_connected_at)s) "
    "RETURNING {prior_columns}"
)
REFRESH_USER = "UPDATE router SET expiry = %(expiry)s WHERE uaid = %(uaid)s AND expiry > %(now)s"
UPDATE_ROUTER_DATA = (
    "UPDATE router SET router_type = %(router_type)s, router_data = %(router_data)s, "
    "connected_at = %(connected_at)s, expiry = %(expiry)s "
    "WHERE uaid = %(uaid)s AND expiry > %(now)s"
)
REMOVE_NODE_ID = (
    "UPDATE router SET node_id = NULL WHERE uaid = %(uaid)s AND node_id = %(node_id)s "
    "AND connected_at = %(connected_at)s AND expiry > %(now)s"
)
DROP_USER = "DELETE FROM router WHERE uaid = %(uaid)s RETURNING expiry > %(now)s AS live"

GET_CHANNELS = "SELECT channel_ids FROM channel_lists WHERE uaid = %(uaid)s AND expiry > %(now)s"
# An expired list reads as absent, so writing to it starts a new one.
ADD_CHANNEL = (
    "INSERT INTO channel_lists AS c (uaid, channel_ids, expiry) "
    "VALUES (%(uaid)s, ARRAY[%(channel_id)s::text], %(expiry)s) "
    "ON CONFLICT (uaid) DO UPDATE SET "
    "channel_ids = CASE WHEN c.expiry <= %(now)s THEN EXCLUDED.channel_ids "
    "WHEN %(channel_id)s::text = ANY(c.channel_ids) THEN c.channel_ids "
    "ELSE array_append(c.channel_ids, %(channel_id)s::text) END, "
    "bookmark = CASE WHEN c.expiry <= %(now)s THEN NULL ELSE c.bookmark END, "
    "expiry = GREATEST(c.expiry, EXCLUDED.expiry)"
)
REMOVE_CHANNEL = (
    "UPDATE channel_lists SET channel_ids = array_remove(channel_ids, %(channel_id)s::text), "
    "expiry = GREATEST(expiry, %(expiry)s) "
    "WHERE uaid = %(uaid)s AND expiry > %(now)s AND %(channel_id)s::text = ANY(channel_ids)"
)
TOUCH_CHANNELS = (
    "UPDATE channel_lists SET expiry = GREATEST(expiry, %(expiry)s) WHERE uaid = %(uaid)s AND expiry > %(now)s"
)
# advance_bookmark from "unset": like DynamoDB's update with
# attribute_not_exists, it creates the list item when there is none.
SET_FIRST_BOOKMARK = (
    "INSERT INTO channel_lists AS c (uaid, bookmark, expiry) "
    "VALUES (%(uaid)s, %(bookmark)s, %(expiry)s) "
    "ON CONFLICT (uaid) DO UPDATE SET bookmark = EXCLUDED.bookmark, "
    "channel_ids = CASE WHEN c.expiry <= %(now)s THEN '{}' ELSE c.channel_ids END, "
    "expiry = GREATEST(c.expiry, EXCLUDED.expiry) "
    "WHERE c.bookmark IS NULL OR c.expiry <= %(now)s"
)
MOVE_BOOKMARK = (
    "UPDATE channel_lists SET bookmark = %(bookmark)s, expiry = GREATEST(expiry, %(expiry)s) "
    "WHERE uaid = %(uaid)s AND bookmark = %(expected)s AND expiry > %(now)s"
)
# lower_bookmark of db/dynamodb/messages.py in one statement: a bookmark
# above the late stamps goes just below them; an unset one becomes 0.
LOWER_BOOKMARK = (
    "UPDATE channel_lists SET bookmark = CASE WHEN bookmark IS NULL THEN 0 ELSE %(lowered)s END "
    "WHERE uaid = %(uaid)s AND expiry > %(now)s AND (bookmark IS NULL OR bookmark > %(lowered)s)"
)

MESSAGE_FIELDS = 'sort_key AS chidmessageid, ttl, "timestamp", updateid, data, headers, urgency, sender'
SAVE_MESSAGE = (
    'INSERT INTO messages (uaid, sort_key, ttl, "timestamp", updateid, expiry, data, headers, urgency, sender) '
    "VALUES (%(uaid)s, %(sort_key)s, %(ttl)s, %(timestamp)s, %(updateid)s, %(expiry)s, "
    "%(data)s, %(headers)s, %(urgency)s, %(sender)s) "
    'ON CONFLICT (uaid, sort_key) DO UPDATE SET ttl = EXCLUDED.ttl, "timestamp" = EXCLUDED."timestamp", '
    "updateid = EXCLUDED.updateid, expiry = EXCLUDED.expiry, data = EXCLUDED.data, "
    "headers = EXCLUDED.headers, urgency = EXCLUDED.urgency, sender = EXCLUDED.sender"
)
SET_MIN_URGENCY = "UPDATE router SET urgency = %(urgency)s WHERE uaid = %(uaid)s AND expiry > %(now)s"
DELETE_MESSAGE = (
    "DELETE FROM messages WHERE uaid = %(uaid)s AND sort_key = %(sort_key)s "
    "AND (%(updateid)s::text IS NULL OR updateid = %(updateid)s::text)"
)
# The bookmark and the first topic and legacy messages in one round trip;
# with no message, one row still carries the bookmark.
FETCH_TOPIC_MESSAGES = (
    "SELECT b.bookmark, m.* FROM (SELECT (SELECT bookmark FROM channel_lists "
    "WHERE uaid = %(uaid)s AND expiry > %(now)s) AS bookmark) AS b "
    f"LEFT JOIN LATERAL (SELECT {MESSAGE_FIELDS} FROM messages "
    "WHERE uaid = %(uaid)s AND (sort_key < %(from)s OR sort_key >= %(below)s) "
    "AND expiry > %(now)s ORDER BY sort_key LIMIT %(limit)s) AS m ON true "
    "ORDER BY m.chidmessageid"
)
FETCH_TIMESTAMP_MESSAGES = (
    f"SELECT {MESSAGE_FIELDS} FROM messages "
    "WHERE uaid = %(uaid)s AND sort_key > %(after)s AND sort_key < %(below)s "
    "AND expiry > %(now)s ORDER BY sort_key LIMIT %(limit)s"
)
# One bounded batch: row locks are held for one short statement, never for
# the whole purge. The inner SELECT locks the expired rows it picks, skipping
# rows a write holds, and re-checks the expiry of rows written since the
# statement began (a message replaced meanwhile is kept); the DELETE then
# finds them by tuple id alone, so the plan is a TID scan whatever the
# statistics say (with an extra expiry filter, PostgreSQL 15 chose an index
# scan on expiry when it expected few expired rows, filtering every expired
# row against the 10,000 ids).
PURGE_BATCH = (
    "DELETE FROM {table} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {table} "
    "WHERE expiry <= %(now)s LIMIT %(batch)s FOR UPDATE SKIP LOCKED))"
)
COUNT_EXPIRED = "SELECT count(*) AS expired FROM {table} WHERE expiry <= %(now)s"
