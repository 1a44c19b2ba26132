"""Operations commands, run as ``flask <command>`` from the repository root
(docs/operations.md#operations-tools).

    flask maintain-tables [--drop-older-than N] [--dry-run] [--purge-expired]
                                                   create/migrate tables
    flask generate-keys                            fresh Fernet keys
    flask endpoint-diagnostic URL                  who is behind an endpoint
    flask drop-user UAID                           delete one router record

``wsgi.create_app`` hands the Flask CLI the app built by ``create_cli_app``,
which holds these commands and nothing else: no storage is touched until a
command runs, so each command reports an unreachable database itself. The
commands are plain click commands, so ``scripts/autokey``,
``scripts/endpoint-diagnostic`` and ``scripts/drop-user`` run them directly.
Settings come from the ``AUTOPUSH_*`` environment, as for the endpoint node.
"""

from __future__ import annotations

import json
import logging
import os
import re
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import NoReturn

import click
from flask import Flask

from autopush_flask.config import ENDPOINT, Settings, SettingsError, load_settings
from autopush_flask.crypto.endpoints import parse_endpoint_token
from autopush_flask.crypto.keys import CryptoKeys, InvalidTokenError
from autopush_flask.db import MIN_MONTHS_KEPT, Storage, StorageError, StorageUnavailable, TableMissing, create_storage
from autopush_flask.ids import canonical_uaid
from autopush_flask.metrics import NullMetrics

ENDPOINT_PATTERN = re.compile(r"push/(?:(v\d+)/)?([^/]+)")
DEFAULT_API_VERSION = "v1"


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
    name, where = store_description(settings)
    # The connection pool warns on each failed connect; the command's own
    # one line says what failed.
    logging.getLogger("psycopg.pool").setLevel(logging.ERROR)
    try:
        storage = create_storage(settings, NullMetrics())
    except ValueError as error:  # botocore: "Invalid endpoint: …"
        fail(f"{command}: cannot use {name} at {where}: {error}")
    try:
        yield storage
    except StorageUnavailable as error:
        fail(f"{command}: cannot reach {name} at {where}: {error}")
    except StorageError as error:
        fail(f"{command}: {name} at {where} failed: {error}")


def store_description(settings: Settings) -> tuple[str, str]:
    """The store's name and where it is, without a password."""
    if settings.db_url:
        parts = urllib.parse.urlsplit(settings.db_url)
        return "PostgreSQL", f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path}"
    return "DynamoDB", settings.ddb_endpoint or "AWS"


# --------------------------------------------------------------------------
# flask maintain-tables (docs/operations.md#operations-tools)


@click.command("maintain-tables", short_help="Create or migrate the store's tables; one line each.")
@click.option(
    "--drop-older-than",
    type=click.IntRange(min=MIN_MONTHS_KEPT),
    metavar="N",
    help="DynamoDB rotation mode: delete message tables more than N months older than "
    "this month's (N >= 2). Without it, tables more than 2 months old are only listed.",
)
@click.option("--dry-run", is_flag=True, help="PostgreSQL: print the SQL that would run; change nothing.")
@click.option(
    "--purge-expired",
    is_flag=True,
    help="PostgreSQL: also delete expired records and messages now (DynamoDB's TTL does it by itself).",
)
def maintain_tables(drop_older_than: int | None, dry_run: bool, purge_expired: bool) -> None:
    """Create missing tables (or apply schema migrations) and report, one line each.

    DynamoDB, single-table mode: the router and message tables, with TTL on
    `expiry`. Rotation mode (AUTOPUSH_TABLE_ROTATION=true): also this
    month's and next month's message tables; next month's gets this month's
    provisioned capacity; run it at least weekly. PostgreSQL
    (AUTOPUSH_DB_URL): the versioned schema migrations not applied yet.
    Safe to run any time. Exits 1 with one line on stderr when the store is
    unreachable or a step fails.
    """
    settings = command_settings("maintain-tables")
    with command_storage("maintain-tables", settings) as storage:
        for line in storage.maintain_tables(drop_older_than, dry_run, purge_expired):
            click.echo(line)


# --------------------------------------------------------------------------
# flask generate-keys (docs/operations.md#operations-tools)


@click.command("generate-keys", short_help="Print new crypto and auth keys.")
def generate_keys() -> None:
    """Print a fresh crypto key and auth key, ready for the environment."""
    click.echo(f"AUTOPUSH_CRYPTO_KEYS={CryptoKeys.generate_key()}")
    click.echo(f"AUTOPUSH_AUTH_KEYS={CryptoKeys.generate_key()}")


# --------------------------------------------------------------------------
# flask endpoint-diagnostic (docs/operations.md#operations-tools)


def crypto_keys(settings: Settings) -> CryptoKeys:
    if settings.crypto_keys_generated:
        fail("endpoint-diagnostic: AUTOPUSH_CRYPTO_KEYS is not set, so no token can be deciphered")
    return CryptoKeys(settings.crypto_keys)


def show_subscription(storage: Storage, uaid: str, channel_id: str) -> None:
    user = storage.get_user(uaid)
    if user is None:
        click.echo("Router record: Not Found")
        return
    record = json.dumps(user.to_item(), indent=2, sort_keys=True, default=str)
    click.echo(f"Router record: {record}")
    if not storage.holds_data_of(user):
        click.echo("Channels: the router record names a message table this store no longer has")
        return
    try:
        channels = storage.get_channels(user)
    except TableMissing:
        click.echo("Channels: the message table does not exist")
        return
    click.echo(f"Channels: {', '.join(sorted(channels)) or 'none'}")
    click.echo(f"CHID registered: {'yes' if channel_id in channels else 'no'}")


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
    click.echo(f"UAID: {token.uaid_text}")
    click.echo(f"CHID: {token.channel_id}")
    if token.key_hash:
        click.echo(f"Key hash: {token.key_hash.hex()}")
    with command_storage("endpoint-diagnostic", settings) as storage:
        show_subscription(storage, token.uaid_text, token.channel_text)


# --------------------------------------------------------------------------
# flask drop-user


class UaidParam(click.ParamType):
    """A UAID in any UUID spelling (dashed, 32 hex digits, braces, urn:uuid:)."""

    name = "uaid"

    def convert(self, value: object, param: click.Parameter | None, ctx: click.Context | None) -> str:
        try:
            return canonical_uaid(str(value))
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
        existed = storage.drop_user(uaid)
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
