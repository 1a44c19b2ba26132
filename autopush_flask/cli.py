"""Operations commands (SPEC §9), run as ``flask <command>`` from the repository root.

    flask maintain-tables [--drop-older-than N]   create/check tables (§9.1)
    flask generate-keys                            fresh Fernet keys (§9.2)
    flask endpoint-diagnostic URL                  who is behind an endpoint (§9.4)
    flask drop-user UAID                           delete one router record

``wsgi.create_app`` hands the Flask CLI the app built by ``create_cli_app``,
which holds these commands and nothing else: no storage is touched until a
command runs, so each command reports an unreachable database itself. The
commands are plain click commands, so ``scripts/autokey``,
``scripts/endpoint-diagnostic`` and ``scripts/drop-user`` run them directly.
Settings come from the ``AUTOPUSH_*`` environment, as for the endpoint node.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from flask import Flask

from autopush_flask.config import ENDPOINT, Settings, SettingsError, load_settings
from autopush_flask.crypto import CryptoKeys, InvalidTokenError, parse_endpoint_token
from autopush_flask.db import Storage, StorageError, StorageUnavailable, TableMissing, create_storage
from autopush_flask.db.rotation import month_shift, monthly_table_name, table_month
from autopush_flask.db.tables import TableAdmin, TableInfo
from autopush_flask.metrics import NullMetrics

ENDPOINT_PATTERN = re.compile(r"push/(?:(v\d+)/)?([^/]+)")
DEFAULT_API_VERSION = "v1"
# Tables more than this many months old are listed (or dropped with the flag):
# nodes only know last month's and this month's tables (SPEC §7.7).
MIN_MONTHS_KEPT = 2

Capacity = tuple[int, int]


# --------------------------------------------------------------------------
# Shared plumbing: settings, storage, one-line failures


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 1."""
    click.echo(" ".join(str(message).split()), err=True)
    raise SystemExit(1)


def command_settings(command: str) -> Settings:
    """The endpoint node's settings; crypto keys are optional here.

    Only ``endpoint-diagnostic`` reads tokens, and it refuses without keys
    itself; table maintenance and ``drop-user`` must work without them.
    """
    try:
        return load_settings(ENDPOINT, os.environ, require_crypto_keys=False)
    except SettingsError as error:
        fail(f"{command}: {error}")


@contextmanager
def command_storage(command: str, settings: Settings) -> Iterator[Storage]:
    """Storage for one command; any storage failure ends it with one line."""
    where = settings.ddb_endpoint or "AWS"
    try:
        storage = create_storage(settings, NullMetrics())
    except ValueError as error:  # botocore: "Invalid endpoint: …"
        fail(f"{command}: cannot use DynamoDB at {where}: {error}")
    try:
        yield storage
    except StorageUnavailable as error:
        fail(f"{command}: cannot reach DynamoDB at {where}: {error}")
    except StorageError as error:
        fail(f"{command}: DynamoDB at {where} failed: {error}")


# --------------------------------------------------------------------------
# flask maintain-tables (SPEC §9.1)


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
    name = settings.router_table
    read, write = settings.router_read_throughput, settings.router_write_throughput
    if admin.ensure_router_table(name, read, write):
        return f"{name}: created ({read}/{write})"
    return f"{name}: exists, {describe_status(admin.describe(name))}"


def message_line(admin: TableAdmin, name: str, capacity: Capacity) -> str:
    if admin.ensure_message_table(name, *capacity):
        head = f"created ({capacity[0]}/{capacity[1]})"
    else:
        head = f"exists, {describe_status(admin.describe(name))}"
    return f"{name}: {head}, {ttl_status(admin, name)}"


def provisioned(info: TableInfo | None) -> Capacity | None:
    if info is None or info.on_demand:
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
    if wanted is None or current is None or current == wanted:
        return f"{name}: exists, {describe_status(info)}, {ttl_status(admin, name)}"
    admin.wait_active(name)
    admin.update_capacity(name, *wanted)
    admin.wait_active(name)
    change = f"{current[0]}/{current[1]} -> {wanted[0]}/{wanted[1]}"
    return f"{name}: exists, capacity {change} (copied from {source.name}), {ttl_status(admin, name)}"


def months_back(now: dt.datetime, year: int, month: int) -> int:
    return (now.year * 12 + now.month) - (year * 12 + month)


def other_monthly_tables(
    admin: TableAdmin, prefix: str, now: dt.datetime, skip: set[str]
) -> list[tuple[str, int]]:
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
    storage: Storage, settings: Settings, now: dt.datetime, drop_older_than: int | None
) -> Iterator[str]:
    admin, prefix = storage.admin, settings.message_table
    configured = (settings.message_read_throughput, settings.message_write_throughput)
    this_month = monthly_table_name(prefix, now.year, now.month)
    next_month = monthly_table_name(prefix, *month_shift(now.year, now.month, 1))
    yield message_line(admin, this_month, configured)
    yield next_month_line(admin, next_month, admin.describe(this_month), configured)
    for name, age in other_monthly_tables(admin, prefix, now, {this_month, next_month}):
        yield old_table_line(admin, name, age, drop_older_than)


def maintenance_lines(
    storage: Storage, settings: Settings, drop_older_than: int | None
) -> Iterator[str]:
    yield router_line(storage.admin, settings)
    if settings.table_rotation:
        yield from rotation_lines(storage, settings, dt.datetime.now(), drop_older_than)
    else:
        capacity = (settings.message_read_throughput, settings.message_write_throughput)
        yield message_line(storage.admin, settings.message_table, capacity)


@click.command("maintain-tables", short_help="Create missing tables; one line per table.")
@click.option(
    "--drop-older-than",
    type=click.IntRange(min=MIN_MONTHS_KEPT),
    metavar="N",
    help="Rotation mode: delete message tables more than N months older than "
    "this month's (N >= 2). Without it, tables more than 2 months old are only listed.",
)
def maintain_tables(drop_older_than: int | None) -> None:
    """Create missing tables and report their state, one line per table.

    Single-table mode: the router and message tables, with TTL on `expiry`.
    Rotation mode (AUTOPUSH_TABLE_ROTATION=true): also this month's and next
    month's message tables; next month's gets this month's provisioned
    capacity. Safe to run any time; run it at least weekly in rotation mode.
    Exits 1 with one line on stderr when DynamoDB is unreachable or a table
    cannot be created.
    """
    settings = command_settings("maintain-tables")
    with command_storage("maintain-tables", settings) as storage:
        for line in maintenance_lines(storage, settings, drop_older_than):
            click.echo(line)


# --------------------------------------------------------------------------
# flask generate-keys (SPEC §9.2)


@click.command("generate-keys", short_help="Print new crypto and auth keys.")
def generate_keys() -> None:
    """Print a fresh crypto key and auth key, ready for the environment."""
    click.echo(f"AUTOPUSH_CRYPTO_KEYS={CryptoKeys.generate_key()}")
    click.echo(f"AUTOPUSH_AUTH_KEYS={CryptoKeys.generate_key()}")


# --------------------------------------------------------------------------
# flask endpoint-diagnostic (SPEC §9.4)


def crypto_keys(settings: Settings) -> CryptoKeys:
    if settings.crypto_keys_generated:
        fail("endpoint-diagnostic: AUTOPUSH_CRYPTO_KEYS is not set, so no token can be deciphered")
    return CryptoKeys(settings.crypto_keys)


def show_channels(storage: Storage, table: str | None, uaid: str, channel_id: str) -> None:
    if not table:
        click.echo("Channels: the router record names no message table (current_month)")
        return
    try:
        channels = storage.messages(table).get_channels(uaid)
    except TableMissing:
        click.echo(f"Channels in {table}: table does not exist")
        return
    click.echo(f"Channels in {table}: {', '.join(sorted(channels)) or 'none'}")
    click.echo(f"CHID registered: {'yes' if channel_id in channels else 'no'}")


def show_subscription(storage: Storage, uaid: str, channel_id: str) -> None:
    user = storage.router.get_user(uaid)
    if user is None:
        click.echo("Router record: Not Found")
        return
    record = json.dumps(user.to_item(), indent=2, sort_keys=True, default=str)
    click.echo(f"Router record: {record}")
    table = user.current_month if storage.rotation else storage.tables.current
    show_channels(storage, table, uaid, channel_id)


@click.command("endpoint-diagnostic", short_help="Show who is behind an endpoint URL.")
@click.argument("url")
def endpoint_diagnostic(url: str) -> None:
    """Decipher a push endpoint URL and show the subscription behind it.

    Prints the UAID and CHID (and, for a v2 endpoint, the hash of the bound
    VAPID key), the router record ("Not Found" when missing) and the channel
    list of the user's message table. Needs the nodes' AUTOPUSH_CRYPTO_KEYS.
    """
    match = ENDPOINT_PATTERN.search(url)
    if match is None:
        fail("Not a valid endpoint")
    settings = command_settings("endpoint-diagnostic")
    api_version, token_text = match.group(1) or DEFAULT_API_VERSION, match.group(2)
    try:
        token = parse_endpoint_token(crypto_keys(settings), token_text, api_version)
    except InvalidTokenError as error:
        click.echo(f"Token could not be deciphered: {error}")
        fail("Invalid Token")
    click.echo(f"UAID: {token.uaid.hex}")
    click.echo(f"CHID: {token.channel_id}")
    if token.key_hash:
        click.echo(f"Key hash: {token.key_hash.hex()}")
    with command_storage("endpoint-diagnostic", settings) as storage:
        show_subscription(storage, token.uaid.hex, str(token.channel_id))


# --------------------------------------------------------------------------
# flask drop-user


class UaidParam(click.ParamType):
    """A UAID in any UUID spelling (dashed, 32 hex digits, braces, urn:uuid:)."""

    name = "uaid"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return uuid.UUID(str(value)).hex
        except ValueError:
            self.fail(f"{value!r} is not a UUID", param, ctx)


@click.command("drop-user", short_help="Delete the router record of a UAID.")
@click.argument("uaid", type=UaidParam())
def drop_user(uaid: str) -> None:
    """Delete the router record of UAID; its stored messages expire on their own.

    The client gets a new UAID at its next hello and its endpoints stop
    working (410).
    """
    settings = command_settings("drop-user")
    with command_storage("drop-user", settings) as storage:
        existed = storage.router.drop_user(uaid)
    outcome = "router record dropped" if existed else "no router record (nothing dropped)"
    click.echo(f"{uaid}: {outcome}")


# --------------------------------------------------------------------------
# The Flask CLI's app

COMMANDS = (maintain_tables, generate_keys, endpoint_diagnostic, drop_user)


def create_cli_app() -> Flask:
    """A Flask app carrying only the operations commands; it opens no storage."""
    app = Flask(__name__)
    for command in COMMANDS:
        app.cli.add_command(command)
    return app
