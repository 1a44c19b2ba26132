"""Settings that promised what they did not do, against real gunicorn nodes.

* A typo'd ``AUTOPUSH_*`` variable used to be ignored (``AUTOPUSH_CRYPTO_KEY``:
  every worker then invented its own key). Now the master refuses before any
  worker boots, naming the variable and the closest setting; a node started
  without our gunicorn.conf.py refuses in its first workers, without a
  boot loop.
* Without ``AUTOPUSH_CRYPTO_KEYS`` each worker invented a key, so endpoints
  minted by one worker were 404 on every other. Now the node refuses.
* ``AUTOPUSH_SSL_KEY``/``AUTOPUSH_SSL_CERT``/``AUTOPUSH_SSL_DH_PARAM`` were
  parsed and ignored. Now both node types serve TLS on their public port:
  a ``wss://`` hello and register, an ``https://`` push delivered through
  it, ``/health`` over https, DHE only with the DH parameters, and plain HTTP
  to the TLS port gets no push-service answer.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
import websocket

from autopush_flask.crypto.keys import CryptoKeys
from tests.support.processes import ROOT, free_port, free_port_range, stop_process
from tests.support.push_client import PushClient
from tests.support.stack import Stack
from tests.support.tls import TlsFiles, make_tls_files

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
FLASK = str(Path(sys.executable).parent / "flask")
APPS = ["wsgi:connection_app", "wsgi:endpoint_app"]
BOOT_ERROR_STATUS = 3
# A refusing master is gone well before an orchestrator's health check: it
# only imports the settings module (0.5-0.7 s measured here). Refusing workers
# first import gevent, Flask and the app: 3-6 s on this 2-core machine under load.
REFUSAL_SECONDS = 5.0
WORKER_REFUSAL_SECONDS = 15.0
# Without the refusal the node keeps running: give up on it after this long.
RUNNING_GRACE_SECONDS = 20.0
WORKERS = 2


def caller_environment() -> dict[str, str]:
    """The caller's environment without its own AUTOPUSH_ settings (a key there would mask a refusal)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("AUTOPUSH_")}


def node_environ(dynalite, table_prefix: str, **variables: str) -> dict[str, str]:
    return {
        **caller_environment(),
        "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
        "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
        "AUTOPUSH_ROUTER_HOSTNAME": "127.0.0.1",
        "AUTOPUSH_ROUTER_PORT": str(free_port_range(WORKERS)),
        "AUTOPUSH_STATSD_HOST": "",
        **variables,
    }


@dataclass
class Outcome:
    returncode: int | None  # None: still running after RUNNING_GRACE_SECONDS
    seconds: float
    stderr: str

    @property
    def worker_boots(self) -> int:
        return self.stderr.count("Booting worker")


def run_node(app: str, environ: dict[str, str], config: str = "gunicorn.conf.py") -> Outcome:
    """Start a node as an operator does and wait for it to exit (or stop it when it does not)."""
    started = time.monotonic()
    process = subprocess.Popen(
        [GUNICORN, "-c", config, "--workers", str(WORKERS), "--bind", f"127.0.0.1:{free_port()}", app],
        cwd=ROOT, env=environ, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    try:
        _, stderr = process.communicate(timeout=RUNNING_GRACE_SECONDS)
        returncode = process.returncode
    except subprocess.TimeoutExpired:
        stop_process(process)
        stderr, returncode = process.stderr.read(), None
    return Outcome(returncode, time.monotonic() - started, stderr)


# ---- unknown variables ----------------------------------------------------------


@pytest.mark.parametrize("app", APPS)
def test_typo_stops_the_master_before_any_worker_boots(app: str, dynalite, table_prefix: str) -> None:
    key = CryptoKeys.generate_key()
    outcome = run_node(app, node_environ(dynalite, table_prefix, AUTOPUSH_CRYPTO_KEY=key))
    assert outcome.returncode == BOOT_ERROR_STATUS, outcome.stderr[-2000:]
    assert outcome.seconds < REFUSAL_SECONDS
    assert outcome.worker_boots == 0
    expected = "unknown setting AUTOPUSH_CRYPTO_KEY (did you mean AUTOPUSH_CRYPTO_KEYS?)"
    assert outcome.stderr.strip() == expected


@pytest.mark.parametrize("app", APPS)
def test_typo_stops_a_node_started_without_our_config_without_a_boot_loop(
    app: str, dynalite, table_prefix: str, tmp_path: Path
) -> None:
    """gunicorn with another config file: the workers refuse, and the master stops instead of respawning."""
    bare_config = tmp_path / "bare.conf.py"
    bare_config.write_text(
        "worker_class = 'autopush_flask.connection.worker.ConnectionWorker' "
        f"if {app!r} == 'wsgi:connection_app' else 'gevent'\n"
    )
    environ = node_environ(
        dynalite, table_prefix, AUTOPUSH_CRYPTO_KEYS=CryptoKeys.generate_key(), AUTOPUSH_MAX_DATUM="8192"
    )
    outcome = run_node(app, environ, config=str(bare_config))
    # When both workers fail at once, gunicorn's master can raise its "failed
    # to boot" halt a second time while handling the first and exit 1 instead
    # of 3: either way it stopped, which is what matters here.
    assert outcome.returncode in (BOOT_ERROR_STATUS, 1), outcome.stderr[-2000:]
    assert outcome.seconds < WORKER_REFUSAL_SECONDS
    assert 1 <= outcome.worker_boots <= WORKERS  # each worker slot boots at most once
    assert "unknown setting AUTOPUSH_MAX_DATUM (did you mean AUTOPUSH_MAX_DATA?)" in outcome.stderr
    assert "Worker failed to boot" in outcome.stderr


# ---- crypto keys --------------------------------------------------------------------


@pytest.mark.parametrize("app", APPS)
def test_node_without_crypto_keys_refuses_to_start(app: str, dynalite, table_prefix: str) -> None:
    outcome = run_node(app, node_environ(dynalite, table_prefix))
    assert outcome.returncode == BOOT_ERROR_STATUS, outcome.stderr[-2000:]
    assert outcome.seconds < REFUSAL_SECONDS
    assert outcome.worker_boots == 0
    [line] = outcome.stderr.strip().splitlines()
    assert line.startswith("missing setting AUTOPUSH_CRYPTO_KEYS: ")
    assert "flask generate-keys" in line and "AUTOPUSH_ENV=development" in line


def test_maintain_tables_needs_no_crypto_keys(dynalite, table_prefix: str) -> None:
    environ = node_environ(dynalite, table_prefix, PATH=f"{Path(FLASK).parent}{os.pathsep}/usr/bin:/bin")
    result = subprocess.run([FLASK, "maintain-tables"], cwd=ROOT, env=environ, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == f"{table_prefix}_router: created (5/5), TTL unsupported by this DynamoDB"


# ---- TLS on the public listener -----------------------------------------------------


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("public-tls"))


@pytest.fixture(scope="module")
def tls_stack(dynalite, tls: TlsFiles, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Both nodes on TLS; only the connection node has DH parameters."""
    stack = Stack(
        dynalite.url, tmp_path_factory.mktemp("tls-stack"),
        AUTOPUSH_SSL_KEY=str(tls.key), AUTOPUSH_SSL_CERT=str(tls.cert),
        AUTOPUSH_SSL_DH_PARAM=str(tls.dh_param),
    )
    stack.environ["AUTOPUSH_ENDPOINT_URL"] = f"https://127.0.0.1:{stack.endpoint_port}"
    stack.endpoint.environ = {**stack.environ, "AUTOPUSH_SSL_DH_PARAM": ""}
    for node in (stack.connection, stack.endpoint):
        node.tls_ca = tls.ca
    with stack:
        yield stack


def https(method: str, url: str, tls: TlsFiles, **headers: str) -> requests.Response:
    """One request trusting the test CA; ``Connection: close`` so no idle TLS
    connection outlives the test (it would hold up the node's graceful stop)."""
    return requests.request(method, url, headers={**headers, "Connection": "close"}, timeout=10,
                            verify=str(tls.ca))


def wss_client(stack: Stack, tls: TlsFiles) -> PushClient:
    client = PushClient(f"wss://127.0.0.1:{stack.connection.port}/", sslopt={"ca_certs": str(tls.ca)})
    stack.clients.append(client)
    return client


def test_wss_hello_and_https_push_are_delivered(tls_stack: Stack, tls: TlsFiles) -> None:
    client = wss_client(tls_stack, tls)
    hello = client.hello()
    assert hello["status"] == 200 and hello["uaid"]
    assert client.ws.sock.version() == "TLSv1.3"
    channel_id = str(uuid.uuid4())
    endpoint = client.register(channel_id)["pushEndpoint"]
    assert endpoint.startswith(f"https://127.0.0.1:{tls_stack.endpoint_port}/")
    response = https("POST", endpoint, tls, TTL="60")
    assert response.status_code == 201, response.text
    assert client.receive()["channelID"] == channel_id
    health = https("GET", f"{tls_stack.endpoint.url}/health", tls)
    assert (health.status_code, health.json()["status"]) == (200, "OK")


def plain_http_answer(port: int) -> bytes:
    """What a plain-HTTP client reads back from a port (first bytes, b"" when closed)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            return sock.recv(4096)
        except ConnectionResetError:
            return b""


@pytest.mark.parametrize("node", ["connection", "endpoint"])
def test_plain_http_to_the_tls_port_gets_no_push_service_answer(
    tls_stack: Stack, tls: TlsFiles, node: str
) -> None:
    port = getattr(tls_stack, node).port
    answers = [plain_http_answer(port) for _ in range(20)]
    assert not any(answer.startswith(b"HTTP/") for answer in answers), answers[0]
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{port}/health", timeout=5)
    if node == "connection":
        with pytest.raises((websocket.WebSocketException, OSError)):
            PushClient(f"ws://127.0.0.1:{port}/", timeout=5)
    # The worker lives on and still serves TLS.
    if node == "connection":
        assert wss_client(tls_stack, tls).hello()["status"] == 200
    else:
        assert https("GET", f"{tls_stack.endpoint.url}/health", tls).status_code == 200


def test_failed_handshakes_leave_no_traceback_on_the_connection_node(tls_stack: Stack) -> None:
    """gevent reported each failed handshake as an uncaught greenlet error: 1.3 KB of stderr each."""
    before = len(tls_stack.connection.log())
    for _ in range(20):
        plain_http_answer(tls_stack.connection.port)
    time.sleep(0.5)
    added = tls_stack.connection.log()[before:]
    assert "Traceback" not in added and "SSLError" not in added, added[:2000]


def dhe_only_tls12_handshake(port: int, tls: TlsFiles) -> str:
    """The cipher a TLS 1.2 client that offers only DHE-RSA gets (raises when the server offers none)."""
    context = tls.client_context()
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers("DHE-RSA-AES128-GCM-SHA256")
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="127.0.0.1") as sock:
            return sock.cipher()[0]


def test_dh_parameters_enable_dhe_for_tls12_clients(tls_stack: Stack, tls: TlsFiles) -> None:
    assert dhe_only_tls12_handshake(tls_stack.connection.port, tls) == "DHE-RSA-AES128-GCM-SHA256"
    with pytest.raises(ssl.SSLError):  # the endpoint node has no DH parameters
        dhe_only_tls12_handshake(tls_stack.endpoint.port, tls)


def test_a_stalled_tls_handshake_is_dropped(tls_stack: Stack) -> None:
    """A client that connects and never says hello holds its socket for 10 s, not forever."""
    with socket.create_connection(("127.0.0.1", tls_stack.connection.port), timeout=30) as sock:
        started = time.monotonic()
        try:
            assert sock.recv(1) == b""
        except ConnectionResetError:
            pass
        waited = time.monotonic() - started
    assert 9.0 <= waited <= 13.0, waited

