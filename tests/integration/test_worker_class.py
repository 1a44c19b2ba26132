"""gunicorn.conf.py gives the connection app its worker class however gunicorn is started.

It used to pick the worker by looking for an argument starting with
``wsgi:``: the connection app under any other spelling got gevent's plain
worker, answered HTTP and never upgraded a WebSocket, without a word. Now
the app URI is read as gunicorn reads it, and whatever still contradicts
the app (an explicit ``--worker-class``, a connection app under another
name) stops the node at start-up with one line and exit status 3.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from autopush_flask.crypto.keys import CryptoKeys
from tests.support.processes import ROOT, LocalDynamoDB, free_port, free_port_range, stop_process, wait_for_port
from tests.support.push_client import PushClient

BOOT_ERROR_STATUS = 3
CONNECTION_WORKER = "autopush_flask.connection.worker.ConnectionWorker"
START_SECONDS = 30


def node_environ(dynalite: LocalDynamoDB, table_prefix: str, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
        "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
        "AUTOPUSH_STATSD_HOST": "",
        "AUTOPUSH_CRYPTO_KEYS": CryptoKeys.generate_key(),
        "AUTOPUSH_ROUTER_HOSTNAME": "127.0.0.1",
        "AUTOPUSH_ROUTER_BIND": "127.0.0.1",
        "AUTOPUSH_ROUTER_PORT": str(free_port_range(1)),
        **extra,
    }


@pytest.fixture
def entry_module(tmp_path: Path) -> Path:
    """A deployment's own module re-exporting the apps under other module paths and names."""
    (tmp_path / "push_entry.py").write_text(
        "import wsgi\n\n"
        "connection_app = wsgi.connection_app\n"
        "application = wsgi.connection_app\n"
    )
    return tmp_path


def refusal(arguments: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "gunicorn", *arguments], cwd=ROOT, env=environ,
        capture_output=True, text=True, timeout=START_SECONDS * 2,
    )


def test_connection_app_under_another_module_path_serves_websockets(
    dynalite: LocalDynamoDB, table_prefix: str, entry_module: Path, tmp_path: Path
) -> None:
    """``python -m gunicorn``, every option from GUNICORN_CMD_ARGS, the app as ``push_entry:connection_app``."""
    port = free_port()
    options = f"--config gunicorn.conf.py --bind 127.0.0.1:{port} --pythonpath {entry_module}"
    environ = node_environ(dynalite, table_prefix, GUNICORN_CMD_ARGS=options)
    log = tmp_path / "node.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "push_entry:connection_app"], cwd=ROOT, env=environ,
            stdout=output, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, timeout=START_SECONDS)
        assert process.poll() is None, log.read_text()[-2000:]
        client = PushClient(f"ws://127.0.0.1:{port}/")
        try:
            assert client.subprotocol == "push-notification"
            assert client.hello()["status"] == 200
        finally:
            client.close()
    finally:
        stop_process(process)


def test_explicit_worker_class_contradicting_the_app_stops_the_master(
    dynalite: LocalDynamoDB, table_prefix: str
) -> None:
    result = refusal(
        ["-c", "gunicorn.conf.py", "--worker-class", "gevent", "--bind", f"127.0.0.1:{free_port()}",
         "wsgi:connection_app"],
        node_environ(dynalite, table_prefix),
    )
    assert result.returncode == BOOT_ERROR_STATUS, result.stderr[-2000:]
    assert "Booting worker" not in result.stderr
    assert result.stderr.strip() == (
        f"worker class 'gevent' cannot serve wsgi:connection_app: it needs '{CONNECTION_WORKER}' "
        "(start it with -c gunicorn.conf.py and no --worker-class)"
    )


def test_connection_app_under_another_name_stops_at_start(
    dynalite: LocalDynamoDB, table_prefix: str, entry_module: Path
) -> None:
    """``push_entry:application`` names no node: the loaded app object gives it away in the worker."""
    result = refusal(
        ["-c", "gunicorn.conf.py", "--pythonpath", str(entry_module), "--bind", f"127.0.0.1:{free_port()}",
         "push_entry:application"],
        node_environ(dynalite, table_prefix),
    )
    assert result.returncode == BOOT_ERROR_STATUS, result.stderr[-2000:]
    expected = (
        f"worker class 'gevent' cannot serve a connection app: it needs '{CONNECTION_WORKER}' "
        "(start it with -c gunicorn.conf.py and no --worker-class)"
    )
    assert expected in result.stderr.splitlines()
    assert result.stderr.count("Booting worker") == 1  # no boot loop
