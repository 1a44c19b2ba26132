"""The operations commands as an operator runs them (docs/operations.md#operations-tools, checklist 155–156).

Every command runs as a real subprocess from the repository root: ``flask
<command>`` found through ``wsgi.create_app`` (no FLASK_APP), and the
``scripts/`` wrappers, against the session's dynalite and this test's own
tables. Tables and users are prepared through the storage interface.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Storage, User, create_storage
from autopush_flask.db.dynamodb.rotation import month_shift, monthly_table_name
from autopush_flask.metrics import NullMetrics
from tests.support.processes import ROOT, LocalDynamoDB, free_port

VENV_BIN = Path(sys.executable).parent
FLASK = str(VENV_BIN / "flask")
CRYPTO_KEY = Fernet.generate_key().decode()
# An uncompressed P-256 point's length; any bytes bind a v2 endpoint.
APP_SERVER_KEY = b"\x04" + bytes(range(64))

Run = Callable[..., subprocess.CompletedProcess]


def operator_environment(**variables: str) -> dict[str, str]:
    """The caller's environment without AUTOPUSH_/FLASK_ settings, venv first on PATH."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AUTOPUSH_", "FLASK_"))}
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(variables)
    return env


@pytest.fixture
def variables(dynalite: LocalDynamoDB, table_prefix: str) -> dict[str, str]:
    return {
        "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
        "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
        "AUTOPUSH_HOSTNAME": "localhost",
        "AUTOPUSH_STATSD_HOST": "",
        "AUTOPUSH_CRYPTO_KEYS": CRYPTO_KEY,
    }


@pytest.fixture
def run(variables: dict[str, str]) -> Run:
    """Run a command from the repository root; keyword arguments add settings."""

    def run_command(*args: str, **extra: str) -> subprocess.CompletedProcess:
        env = operator_environment(**{**variables, **extra})
        return subprocess.run(
            list(args), cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
        )

    return run_command


def make_storage(make_settings, **variables: str) -> Storage:
    return create_storage(make_settings(AUTOPUSH_CRYPTO_KEYS=CRYPTO_KEY, **variables), NullMetrics())


def month_table(prefix: str, months_from_now: int) -> str:
    now = dt.datetime.now()
    return monthly_table_name(f"{prefix}_message", *month_shift(now.year, now.month, months_from_now))


def capacity(storage: Storage, name: str) -> tuple[int, int] | None:
    info = storage.admin.describe(name)
    return None if info is None else (info.read_capacity, info.write_capacity)


def lines(result: subprocess.CompletedProcess) -> list[str]:
    return result.stdout.splitlines()


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout, result.stderr)


# --------------------------------------------------------------------------
# flask maintain-tables: rotation mode (checklist 155)


def test_155_creates_next_month_with_this_months_capacity_and_a_second_run_changes_nothing(
    run: Run, make_settings, table_prefix: str
) -> None:
    storage = make_storage(make_settings)
    this_month, next_month = month_table(table_prefix, 0), month_table(table_prefix, 1)
    storage.admin.ensure_message_table(this_month, 7, 3)

    first = run(FLASK, "maintain-tables", AUTOPUSH_TABLE_ROTATION="true")

    assert_ok(first)
    assert lines(first) == [
        f"{table_prefix}_router: created (5/5), TTL unsupported by this DynamoDB",
        f"{this_month}: exists, ACTIVE, capacity 7/3, TTL unsupported by this DynamoDB",
        f"{next_month}: created (7/3), TTL unsupported by this DynamoDB",
    ]
    assert capacity(storage, next_month) == (7, 3)
    tables = storage.admin.list_tables(table_prefix)
    described = [storage.admin.describe(name) for name in tables]

    second = run(FLASK, "maintain-tables", AUTOPUSH_TABLE_ROTATION="true")

    assert_ok(second)
    assert len(lines(second)) == 3
    assert all(": exists, ACTIVE" in line for line in lines(second)), second.stdout
    assert storage.admin.list_tables(table_prefix) == tables
    assert [storage.admin.describe(name) for name in tables] == described


def test_155_an_existing_next_month_table_gets_this_months_capacity(
    run: Run, make_settings, table_prefix: str
) -> None:
    storage = make_storage(make_settings)
    this_month, next_month = month_table(table_prefix, 0), month_table(table_prefix, 1)
    storage.admin.ensure_message_table(this_month, 8, 6)
    storage.admin.ensure_message_table(next_month, 5, 5)

    result = run(FLASK, "maintain-tables", AUTOPUSH_TABLE_ROTATION="true")

    assert_ok(result)
    assert f"{next_month}: exists, capacity 5/5 -> 8/6 (copied from {this_month})" in result.stdout
    assert capacity(storage, next_month) == (8, 6)


def test_155_drop_older_than_2_drops_a_three_month_old_table_and_keeps_last_month(
    run: Run, make_settings, table_prefix: str
) -> None:
    storage = make_storage(make_settings)
    old = {months: month_table(table_prefix, -months) for months in (1, 2, 3)}
    for name in old.values():
        storage.admin.ensure_message_table(name, 5, 5)

    listed = run(FLASK, "maintain-tables", AUTOPUSH_TABLE_ROTATION="true")

    assert_ok(listed)
    assert f"{old[3]}: older than 2 months (kept; use --drop-older-than to drop)" in lines(listed)
    assert f"{old[1]}: exists, ACTIVE, capacity 5/5" in lines(listed)
    assert len(lines(listed)) == 6  # router, this and next month, three old ones
    assert capacity(storage, old[3]) == (5, 5)

    dropped = run(FLASK, "maintain-tables", "--drop-older-than", "2", AUTOPUSH_TABLE_ROTATION="true")

    assert_ok(dropped)
    assert f"{old[3]}: older than 2 months, dropped" in lines(dropped)
    assert storage.admin.describe(old[3]) is None
    assert capacity(storage, old[1]) == (5, 5)
    assert capacity(storage, old[2]) == (5, 5)


def test_155_drop_older_than_1_is_a_usage_error(run: Run, make_settings, table_prefix: str) -> None:
    result = run(FLASK, "maintain-tables", "--drop-older-than", "1", AUTOPUSH_TABLE_ROTATION="true")

    assert result.returncode == 2
    assert "Invalid value for '--drop-older-than': 1 is not in the range x>=2" in result.stderr
    assert make_storage(make_settings).admin.list_tables(table_prefix) == []


# --------------------------------------------------------------------------
# flask maintain-tables: single-table mode, failures (checklist 156)


def test_single_table_mode_ensures_and_reports_router_and_message_tables(
    run: Run, table_prefix: str
) -> None:
    first = run(FLASK, "maintain-tables")
    assert_ok(first)
    assert lines(first) == [
        f"{table_prefix}_router: created (5/5), TTL unsupported by this DynamoDB",
        f"{table_prefix}_message: created (5/5), TTL unsupported by this DynamoDB",
    ]

    second = run(FLASK, "maintain-tables", FLASK_APP="wsgi")

    assert_ok(second)
    assert lines(second) == [
        f"{table_prefix}_router: exists, ACTIVE, capacity 5/5, TTL unsupported by this DynamoDB",
        f"{table_prefix}_message: exists, ACTIVE, capacity 5/5, TTL unsupported by this DynamoDB",
    ]


@pytest.mark.parametrize("rotation", ["false", "true"])
def test_156_unreachable_dynamodb_exits_non_zero_with_one_line(run: Run, rotation: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()

    result = run(FLASK, "maintain-tables", AUTOPUSH_DDB_ENDPOINT=url, AUTOPUSH_TABLE_ROTATION=rotation)

    assert time.monotonic() - started < 10
    assert result.returncode == 1
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"maintain-tables: cannot reach DynamoDB at {url}: ")


def test_156_a_table_that_cannot_be_created_exits_non_zero_with_one_line(run: Run, table_prefix: str) -> None:
    result = run(FLASK, "maintain-tables", AUTOPUSH_MESSAGE_TABLE=f"{table_prefix} bad name")

    assert result.returncode == 1
    assert lines(result) == [f"{table_prefix}_router: created (5/5), TTL unsupported by this DynamoDB"]
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("maintain-tables: DynamoDB at http://127.0.0.1:")
    assert "ValidationException" in result.stderr


def test_a_bad_setting_is_one_line_and_exit_1(run: Run) -> None:
    result = run(FLASK, "maintain-tables", AUTOPUSH_ROUTER_READ_THROUGHPUT="many")

    assert result.returncode == 1
    assert result.stderr.splitlines() == [
        "maintain-tables: invalid setting AUTOPUSH_ROUTER_READ_THROUGHPUT: Not a valid integer."
    ]


# --------------------------------------------------------------------------
# flask generate-keys / scripts/autokey (docs/operations.md#operations-tools)


@pytest.mark.parametrize("command", [(FLASK, "generate-keys"), ("scripts/autokey",)])
def test_generate_keys_prints_two_fresh_fernet_keys(run: Run, command: tuple[str, ...]) -> None:
    result = run(*command)

    assert_ok(result)
    crypto, auth = lines(result)
    names = [crypto.partition("=")[0], auth.partition("=")[0]]
    keys = [crypto.partition("=")[2], auth.partition("=")[2]]
    assert names == ["AUTOPUSH_CRYPTO_KEYS", "AUTOPUSH_AUTH_KEYS"]
    assert [len(key) for key in keys] == [44, 44] and keys[0] != keys[1]
    for key in keys:
        Fernet(key.encode())


# --------------------------------------------------------------------------
# flask endpoint-diagnostic / scripts/endpoint-diagnostic (docs/operations.md#operations-tools)


@pytest.fixture
def registered(make_settings) -> tuple[Storage, uuid.UUID, uuid.UUID]:
    """A webpush user with one channel in single-table storage."""
    storage = make_storage(make_settings)
    storage.set_up()
    uaid, chid = uuid.uuid4(), uuid.uuid4()
    storage.add_user(User(uaid=uaid.hex, connected_at=1_700_000_000_000, record_version=1))
    storage.add_channel(User(uaid=uaid.hex), str(chid))
    return storage, uaid, chid


def endpoint(make_settings, uaid: uuid.UUID, chid: uuid.UUID, key: bytes | None = None) -> str:
    settings = make_settings(AUTOPUSH_CRYPTO_KEYS=CRYPTO_KEY)
    return make_endpoint_url(CryptoKeys([CRYPTO_KEY]), settings.endpoint_url, uaid, chid, key)


def test_endpoint_diagnostic_of_a_v1_endpoint(run: Run, make_settings, registered, table_prefix: str) -> None:
    _, uaid, chid = registered

    result = run(FLASK, "endpoint-diagnostic", endpoint(make_settings, uaid, chid))

    assert_ok(result)
    output = lines(result)
    assert output[:2] == [f"UAID: {uaid.hex}", f"CHID: {chid}"]
    assert not any(line.startswith("Key hash") for line in output)
    record_start, record_end = output.index("Router record: {"), output.index("}")
    record = json.loads("".join(["{", *output[record_start + 1 : record_end + 1]]))
    expiry = record.pop("expiry")
    assert record == {
        "uaid": uaid.hex, "router_type": "webpush", "connected_at": 1_700_000_000_000, "record_version": 1
    }
    assert abs(expiry - (time.time() + 60 * 24 * 3600)) < 600  # AUTOPUSH_ROUTER_TTL_DAYS
    assert output[-2:] == [f"Channels: {chid}", "CHID registered: yes"]


def test_endpoint_diagnostic_of_a_v2_endpoint_prints_the_key_hash(run: Run, make_settings, registered) -> None:
    _, uaid, chid = registered

    result = run("scripts/endpoint-diagnostic", endpoint(make_settings, uaid, chid, APP_SERVER_KEY))

    assert_ok(result)
    output = lines(result)
    assert output[:3] == [
        f"UAID: {uaid.hex}",
        f"CHID: {chid}",
        f"Key hash: {hashlib.sha256(APP_SERVER_KEY).hexdigest()}",
    ]
    assert output[-1] == "CHID registered: yes"


def test_endpoint_diagnostic_of_a_garbage_token_says_invalid_token(run: Run) -> None:
    result = run(FLASK, "endpoint-diagnostic", "http://localhost:8082/wpush/v1/gAAAAABgarbage")

    assert result.returncode == 1
    assert lines(result) == ["Token could not be deciphered: token does not decrypt"]
    assert result.stderr.splitlines() == ["Invalid Token"]


def test_endpoint_diagnostic_of_a_url_that_is_no_endpoint(run: Run) -> None:
    result = run(FLASK, "endpoint-diagnostic", "https://example.com/not/an/endpoint")

    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == ["Not a valid endpoint"]


def test_endpoint_diagnostic_of_a_uaid_without_record_says_not_found(run: Run, make_settings) -> None:
    make_storage(make_settings).set_up()
    uaid, chid = uuid.uuid4(), uuid.uuid4()

    result = run(FLASK, "endpoint-diagnostic", endpoint(make_settings, uaid, chid))

    assert_ok(result)
    assert lines(result) == [f"UAID: {uaid.hex}", f"CHID: {chid}", "Router record: Not Found"]


# --------------------------------------------------------------------------
# flask drop-user / scripts/drop-user


def test_drop_user_deletes_a_router_record_given_in_any_uuid_spelling(run: Run, registered) -> None:
    storage, uaid, _ = registered

    dropped = run(FLASK, "drop-user", str(uaid).upper())
    again = run("scripts/drop-user", f"{{{uaid}}}")
    invalid = run(FLASK, "drop-user", "not-a-uaid")

    assert_ok(dropped)
    assert lines(dropped) == [f"{uaid.hex}: router record dropped"]
    assert storage.get_user(uaid.hex) is None
    assert_ok(again)
    assert lines(again) == [f"{uaid.hex}: no router record (nothing dropped)"]
    assert invalid.returncode == 2
    assert "'not-a-uaid' is not a UUID" in invalid.stderr


# --------------------------------------------------------------------------
# --help of every command


@pytest.mark.parametrize(
    "command, usage",
    [
        ((FLASK, "maintain-tables"), "Usage: flask maintain-tables [OPTIONS]"),
        ((FLASK, "generate-keys"), "Usage: flask generate-keys [OPTIONS]"),
        ((FLASK, "endpoint-diagnostic"), "Usage: flask endpoint-diagnostic [OPTIONS] URL"),
        ((FLASK, "drop-user"), "Usage: flask drop-user [OPTIONS] UAID"),
        (("scripts/autokey",), "Usage: autokey [OPTIONS]"),
        (("scripts/endpoint-diagnostic",), "Usage: endpoint-diagnostic [OPTIONS] URL"),
        (("scripts/drop-user",), "Usage: drop-user [OPTIONS] UAID"),
    ],
)
def test_help_of_each_command(run: Run, command: tuple[str, ...], usage: str) -> None:
    result = run(*command, "--help")

    assert_ok(result)
    assert lines(result)[0] == usage


def test_flask_lists_the_commands_without_flask_app(run: Run) -> None:
    result = run(FLASK, "--help")

    assert_ok(result)
    for name in ("maintain-tables", "generate-keys", "endpoint-diagnostic", "drop-user"):
        assert f"  {name} " in result.stdout
