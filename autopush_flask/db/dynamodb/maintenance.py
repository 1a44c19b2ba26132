"""``flask maintain-tables`` for DynamoDB: create missing tables, report each on one line.

Single-table mode: the router and message tables, both with TTL on
``expiry``. Rotation mode: also this month's and next month's message
tables (next month's gets this month's provisioned capacity), and older
monthly tables listed or, with ``drop_older_than``, dropped.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

from autopush_flask.config import Settings
from autopush_flask.db import MIN_MONTHS_KEPT
from autopush_flask.db.dynamodb.rotation import month_shift, monthly_table_name, table_month
from autopush_flask.db.dynamodb.tables import TableAdmin, TableInfo

Capacity = tuple[int, int]


def describe_status(info: TableInfo | None) -> str:
    if info is None:
        return "missing"
    if info.on_demand:
        return f"{info.status}, on-demand"
    return f"{info.status}, capacity {info.read_capacity}/{info.write_capacity}"


def ttl_status(admin: TableAdmin, name: str) -> str:
    """Make sure TTL on ``expiry`` is on; dynalite and DynamoDB Local lack TTL."""
    enabled = admin.ttl_enabled(name)
    if enabled is None:
        return "TTL unsupported by this DynamoDB"
    if enabled:
        return "TTL on expiry"
    return "TTL on expiry enabled now" if admin.enable_ttl(name) else "TTL unsupported by this DynamoDB"


def router_line(admin: TableAdmin, settings: Settings) -> str:
    """The router table, with TTL on ``expiry`` so records of vanished browsers go."""
    name = settings.router_table
    read, write = settings.router_read_throughput, settings.router_write_throughput
    if admin.ensure_router_table(name, read, write):
        return f"{name}: created ({read}/{write}), {ttl_status(admin, name)}"
    return f"{name}: exists, {describe_status(admin.describe(name))}, {ttl_status(admin, name)}"


def message_line(admin: TableAdmin, name: str, capacity: Capacity) -> str:
    if admin.ensure_message_table(name, *capacity):
        head = f"created ({capacity[0]}/{capacity[1]})"
    else:
        head = f"exists, {describe_status(admin.describe(name))}"
    return f"{name}: {head}, {ttl_status(admin, name)}"


def provisioned(info: TableInfo | None) -> Capacity | None:
    if info is None or info.read_capacity is None or info.write_capacity is None:  # absent or on demand
        return None
    return info.read_capacity, info.write_capacity


def next_month_line(admin: TableAdmin, name: str, source: TableInfo | None, configured: Capacity) -> str:
    """Next month's table, created with (or given) this month's capacity."""
    wanted = provisioned(source)
    if admin.ensure_message_table(name, *(wanted or configured)):
        read, write = wanted or configured
        return f"{name}: created ({read}/{write}), {ttl_status(admin, name)}"
    info = admin.describe(name)
    current = provisioned(info)
    if source is None or wanted is None or current is None or current == wanted:
        return f"{name}: exists, {describe_status(info)}, {ttl_status(admin, name)}"
    admin.wait_active(name)
    admin.update_capacity(name, *wanted)
    admin.wait_active(name)
    change = f"{current[0]}/{current[1]} -> {wanted[0]}/{wanted[1]}"
    return f"{name}: exists, capacity {change} (copied from {source.name}), {ttl_status(admin, name)}"


def months_back(now: dt.datetime, year: int, month: int) -> int:
    return (now.year * 12 + now.month) - (year * 12 + month)


def other_monthly_tables(admin: TableAdmin, prefix: str, now: dt.datetime, skip: set[str]) -> list[tuple[str, int]]:
    """Every other ``{prefix}_YYYY_MM`` table with its age in months, oldest first."""
    found = []
    for name in admin.list_tables(f"{prefix}_"):
        month = table_month(prefix, name)
        if month is not None and name not in skip:
            found.append((name, months_back(now, *month)))
    return sorted(found)


def old_table_line(admin: TableAdmin, name: str, age: int, drop_older_than: int | None) -> str:
    threshold = drop_older_than or MIN_MONTHS_KEPT
    if age <= threshold:
        return f"{name}: exists, {describe_status(admin.describe(name))}"
    if drop_older_than is None:
        return f"{name}: older than {threshold} months (kept; use --drop-older-than to drop)"
    admin.delete_table(name)
    return f"{name}: older than {threshold} months, dropped"


def rotation_lines(
    admin: TableAdmin, settings: Settings, now: dt.datetime, drop_older_than: int | None
) -> Iterator[str]:
    prefix = settings.message_table
    configured = (settings.message_read_throughput, settings.message_write_throughput)
    this_month = monthly_table_name(prefix, now.year, now.month)
    next_month = monthly_table_name(prefix, *month_shift(now.year, now.month, 1))
    yield message_line(admin, this_month, configured)
    yield next_month_line(admin, next_month, admin.describe(this_month), configured)
    for name, age in other_monthly_tables(admin, prefix, now, {this_month, next_month}):
        yield old_table_line(admin, name, age, drop_older_than)


def maintenance_lines(
    admin: TableAdmin, settings: Settings, now: dt.datetime, drop_older_than: int | None
) -> Iterator[str]:
    yield router_line(admin, settings)
    if settings.table_rotation:
        yield from rotation_lines(admin, settings, now, drop_older_than)
    else:
        capacity = (settings.message_read_throughput, settings.message_write_throughput)
        yield message_line(admin, settings.message_table, capacity)
