"""Real processes: the local DynamoDB script and gunicorn serving the apps."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from autopush_flask.config import ENDPOINT, load_settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import create_storage
from autopush_flask.metrics import NullMetrics
from tests.support.processes import ROOT, LocalDynamoDB, free_port, stop_process, wait_for_port

GUNICORN = str(Path(sys.executable).parent / "gunicorn")


def test_local_dynamodb_persists_with_path(tmp_path: Path) -> None:
    database = LocalDynamoDB(path=tmp_path / "data")
    database.start()
    settings = load_settings(ENDPOINT, {"AUTOPUSH_DDB_ENDPOINT": database.url}, require_crypto_keys=False)
    try:
        assert create_storage(settings, NullMetrics()).set_up() == ["router", "message"]
        database.stop()
        database.start()
        assert create_storage(settings, NullMetrics()).set_up() == []
    finally:
        database.stop()


def test_local_dynamodb_without_path_is_in_memory() -> None:
    database = LocalDynamoDB()
    database.start()
    settings = load_settings(ENDPOINT, {"AUTOPUSH_DDB_ENDPOINT": database.url}, require_crypto_keys=False)
    try:
        create_storage(settings, NullMetrics()).set_up()
        database.stop()
        database.start()
        assert create_storage(settings, NullMetrics()).set_up() == ["router", "message"]
    finally:
        database.stop()


def test_local_dynamodb_requires_a_port() -> None:
    result = subprocess.run([str(ROOT / "scripts" / "local-dynamodb")], capture_output=True, text=True)
    assert result.returncode == 2
    assert "usage" in result.stderr


def gunicorn_env(dynalite: LocalDynamoDB, table_prefix: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
        "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
        "AUTOPUSH_STATSD_HOST": "",
        "AUTOPUSH_CRYPTO_KEYS": CryptoKeys.generate_key(),
        **extra,
    }


def test_gunicorn_serves_the_endpoint_app(dynalite: LocalDynamoDB, table_prefix: str) -> None:
    port = free_port()
    process = subprocess.Popen(
        [GUNICORN, "wsgi:endpoint_app"],
        cwd=ROOT,
        env=gunicorn_env(dynalite, table_prefix, AUTOPUSH_PORT=str(port)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_for_port(port, timeout=30)
        assert requests.get(f"http://127.0.0.1:{port}/status", timeout=5).json()["status"] == "OK"
        health = requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
        assert (health.status_code, health.json()["status"]) == (200, "OK")
    finally:
        stop_process(process)
    output = process.stdout.read().decode()
    lines = [line for line in output.splitlines() if line.startswith("{")]
    assert any('"Type": "autoendpoint:log"' in line and "Created table" in line for line in lines)


def test_gunicorn_refuses_a_bad_setting_with_one_line(dynalite: LocalDynamoDB, table_prefix: str) -> None:
    process = subprocess.run(
        [GUNICORN, "--bind", f"127.0.0.1:{free_port()}", "wsgi:endpoint_app"],
        cwd=ROOT,
        env=gunicorn_env(dynalite, table_prefix, AUTOPUSH_MAX_DATA="lots"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode != 0
    assert "invalid setting AUTOPUSH_MAX_DATA: Not a valid integer." in process.stderr


@pytest.mark.parametrize("app", ["wsgi:endpoint_app", "wsgi:connection_app"])
def test_wsgi_builds_only_the_app_asked_for(app: str, dynalite: LocalDynamoDB, table_prefix: str) -> None:
    code = (
        "import sys, wsgi; getattr(wsgi, sys.argv[1].split(':')[1]); "
        "print(sorted(m for m in sys.modules if m.startswith('autopush_flask.') and m.endswith('.app')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, app], cwd=ROOT, env=gunicorn_env(dynalite, table_prefix),
        capture_output=True, text=True, timeout=60, check=True,
    )
    expected = "connection" if "connection" in app else "endpoint"
    assert result.stdout.strip().splitlines()[-1] == f"['autopush_flask.{expected}.app']"
