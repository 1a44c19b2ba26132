"""Logs never hold capabilities whole, nor raw control characters.

Endpoint URLs and tokens, message ids, Authorization headers and UAIDs are
capabilities (or identify a user): whoever reads the logs must not be able to
push to, delete from or track a subscription. A real connection node and a real
endpoint node (gunicorn, logs in files, as an operator runs them) go through a
client's life: hello, register (v1 and VAPID-bound v2), a push delivered
directly, a push stored while the client is away and fetched at its next hello,
a stored message deleted by its ``Location``, unregister; then what attackers
send: undecryptable and tampered tokens (404), a wrong VAPID signature (401),
URL paths and a User-Agent carrying ANSI escapes and line breaks, a malformed
request line carrying a real token (which gunicorn itself logs). Then every
line of both nodes' logs is searched for each secret the test saw on the wire,
and for raw control characters, in the JSON and in the human format.

At info the UAID appears only as ``uaid_hash``, which must equal the keyed hash
an operator computes from the deployment's crypto keys (HMAC-SHA256 under the
keys' HKDF subkey "autopush-flask log uaid hash v1", first 16 hex digits), so
one user can be followed across lines and nodes. At debug the raw ``uaid`` is
added, and nothing else changes. Error reports (Sentry, whose logging
integration sends every record's fields) get the redacted fields too.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import os
import socket
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field

import pytest
import requests

from autopush_flask.config import ENDPOINT, load_settings
from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.crypto.keys import CryptoKeys
from tests.integration.test_sentry import FakeSentry
from tests.support.processes import ROOT
from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer

# Control characters a log line must never carry raw (its own line break aside).
RAW_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202e]")
ANSI = "\x1b[31mRED\x1b[0m"
FORGED = "\r\n2026-01-01 00:00:00.000 ERROR autoendpoint: forged"
# No blank in it: a value with blanks was already quoted (and so escaped) before.
HOSTILE_USER_AGENT = f"Evil/1.0{ANSI}\x07\x08(evil)"


def expected_uaid_hash(stack: Stack, uaid: str) -> str:
    """Computed the way an operator would, from the deployment's settings."""
    keys = CryptoKeys(load_settings(ENDPOINT, stack.environ).crypto_keys)
    key = keys.derive(b"autopush-flask log uaid hash v1")[0]
    return hmac.new(key, uuid.UUID(uaid).hex.encode(), hashlib.sha256).hexdigest()[:16]


@dataclass
class Secrets:
    """Everything the scenario saw that a log line must not hold whole."""

    uaid: str = ""
    endpoints: list[str] = field(default_factory=list)
    message_ids: list[str] = field(default_factory=list)
    authorizations: list[str] = field(default_factory=list)

    def strings(self) -> dict[str, str]:
        """name → secret; tokens also by a 20-character infix (a prefix is allowed, a chunk is not)."""
        found = {"uaid": self.uaid, "uaid (dashed)": str(uuid.UUID(self.uaid))}
        for index, endpoint in enumerate(self.endpoints):
            token = endpoint.rsplit("/", 1)[1]
            found[f"endpoint {index}"] = endpoint
            found[f"endpoint token {index}"] = token
            found[f"endpoint token {index} infix"] = token[10:30]
        for index, message_id in enumerate(self.message_ids):
            found[f"message id {index} infix"] = message_id[10:30]
        for index, authorization in enumerate(self.authorizations):
            found[f"authorization {index}"] = authorization
            found[f"authorization {index} JWT claims"] = authorization.split(".")[1]
        return found


def push(url: str, **headers: str) -> requests.Response:
    return requests.post(url, data=b"opaque ciphertext", timeout=10,
                         headers={"TTL": "60", "Content-Encoding": "aes128gcm", **headers})


def raw_request(port: int, request: bytes) -> bytes:
    """For request lines ``requests`` refuses to send (raw control characters)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        answer = b""
        try:
            while chunk := sock.recv(65536):
                answer += chunk
        except ConnectionResetError:
            pass
    return answer


def client_life(stack: Stack) -> Secrets:
    """The whole scenario; returns what it saw on the wire."""
    secrets = Secrets()
    app_server = AppServer()
    client = PushClient(stack.ws_url, header=[f"User-Agent: {HOSTILE_USER_AGENT}"])
    assert client.hello()["status"] == 200
    secrets.uaid = client.uaid
    v1 = client.register(str(uuid.uuid4()))
    v2 = client.register(str(uuid.uuid4()), key=app_server.application_server_key)
    assert v1["status"] == v2["status"] == 200
    secrets.endpoints += [v1["pushEndpoint"], v2["pushEndpoint"]]

    direct = push(v1["pushEndpoint"])  # delivered to the open socket
    assert direct.status_code == 201, direct.text
    notification = client.receive()
    client.ack(notification)
    secrets.message_ids.append(notification["version"])
    client.close()
    time.sleep(0.3)  # the node forgets the session: the next pushes are stored

    claims = {"sub": "mailto:ops@example.com", "aud": stack.endpoint_url, "exp": int(time.time()) + 3600}
    authorization = app_server.vapid.sign(claims)["Authorization"]
    secrets.authorizations.append(authorization)
    stored = [push(v2["pushEndpoint"], Authorization=authorization) for _ in range(2)]
    assert [r.status_code for r in stored] == [201, 201], [r.text for r in stored]
    locations = [r.headers["Location"] for r in stored]
    secrets.message_ids += [location.rsplit("/", 1)[1] for location in locations]
    assert requests.delete(locations[1], timeout=10).status_code == 204

    client = PushClient(stack.ws_url, header=[f"User-Agent: {HOSTILE_USER_AGENT}"])
    assert client.hello(uaid=secrets.uaid)["uaid"] == secrets.uaid
    fetched = client.receive()
    client.ack(fetched)
    client.send({"messageType": "unregister", "channelID": v1["channelID"]})
    assert client.receive()["status"] == 200
    client.close()

    hostile(stack, secrets, v2["pushEndpoint"])
    time.sleep(0.5)  # the Session lines of the closed clients are written
    return secrets


def hostile(stack: Stack, secrets: Secrets, v2_endpoint: str) -> None:
    """Bad tokens, a wrong VAPID signature, control characters in paths."""
    base = stack.endpoint_url
    token = secrets.endpoints[0].rsplit("/", 1)[1]
    assert push(f"{base}/wpush/v1/not-a-token").status_code == 404
    assert push(f"{base}/wpush/v1/{token[:-6]}AAAAAA").status_code == 404  # tampered
    stranger = AppServer().vapid.sign({"sub": "mailto:x@example.com", "aud": base, "exp": int(time.time()) + 60})
    secrets.authorizations.append(stranger["Authorization"])
    assert push(v2_endpoint, Authorization=stranger["Authorization"]).status_code == 401
    assert push(f"{base}/wpush/v1/%1b%5b31mX%0d%0aFAKE%07").status_code == 404
    assert requests.get(f"{base}/%1b%5b2J%1b%5bH{FORGED.replace(chr(13), '%0d').replace(chr(10), '%0a')}",
                        timeout=10).status_code == 404
    raw = raw_request(stack.endpoint_port, f"GET /wpush/v1/{ANSI} HTTP/1.1\r\nHost: x\r\n\r\n".encode("latin-1"))
    assert raw.startswith(b"HTTP/1.1 400"), raw[:100]
    # gunicorn refuses a malformed request line and logs it, real token and all.
    raw = raw_request(stack.endpoint_port, f"POST /wpush/v1/{token}\x7f HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    assert raw.startswith(b"HTTP/1.1 400"), raw[:100]


# ---- the nodes --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def info_run(request: pytest.FixtureRequest) -> tuple[Stack, Secrets]:
    stack = start_stack(request, "logs-info", AUTOPUSH_LOG_LEVEL="info")
    return stack, client_life(stack)


def log_lines(stack: Stack) -> list[str]:
    lines = []
    for node in (stack.connection, stack.endpoint):
        lines += node.log_path.read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    return lines


def leaks(lines: list[str], secrets: Secrets) -> list[str]:
    """``name: line`` for every line holding a secret."""
    return [f"{name}: {line[:300]}" for line in lines for name, secret in secrets.strings().items() if secret in line]


def raw_controls(lines: list[str]) -> list[str]:
    return [repr(line[:300]) for line in lines if RAW_CONTROL.search(line)]


def fields_of(lines: list[str]) -> list[dict]:
    """The ``Fields`` of the JSON log lines (gunicorn's own lines are plain text)."""
    parsed = []
    for line in lines:
        if line.startswith("{"):
            parsed.append(json.loads(line)["Fields"])
    return parsed


def test_info_logs_hold_no_capability_and_a_keyed_uaid_hash(info_run) -> None:
    stack, secrets = info_run
    lines = log_lines(stack)
    fields = fields_of(lines)
    expected = expected_uaid_hash(stack, secrets.uaid)
    hashed = [f for f in fields if f.get("uaid_hash") == expected]
    events = {f["message"] for f in hashed}
    other_hashes = {f["uaid_hash"] for f in fields if f.get("uaid_hash") not in (None, "", expected)}

    assert leaks(lines, secrets) == []
    assert raw_controls(lines) == []
    assert {"Register", "Unregister", "Session"} <= events, events
    assert other_hashes == set()  # only one client here: every uaid_hash is its hash
    assert all("uaid" not in f for f in fields)
    registers = [f["endpoint"] for f in hashed if f["message"] == "Register"]
    assert len(registers) == 2 and all(re.fullmatch(r"http://127\.0\.0\.1:\d+/wpush/v[12]/gAAAAA…#[0-9a-f]{8}", e)
                                       for e in registers), registers
    sessions = [f for f in hashed if f["message"] == "Session"]
    assert sessions and all(f["user_agent"] == HOSTILE_USER_AGENT for f in sessions)  # JSON-escaped, intact
    print(f"\ninfo logs: {len(lines)} lines ({len(fields)} JSON) from 2 nodes, 0 leaks;"
          f" {len(hashed)} lines carry uaid_hash={expected} ({', '.join(sorted(events))})")


@pytest.fixture(scope="module")
def human_run(request: pytest.FixtureRequest) -> tuple[Stack, Secrets]:
    stack = start_stack(request, "logs-human", AUTOPUSH_LOG_LEVEL="info", AUTOPUSH_HUMAN_LOGS="true")
    return stack, client_life(stack)


def test_human_logs_escape_control_characters(human_run) -> None:
    stack, secrets = human_run
    lines = log_lines(stack)
    expected = expected_uaid_hash(stack, secrets.uaid)
    sessions = [line for line in lines if " autoconnect: Session " in line]

    assert raw_controls(lines) == []
    assert leaks(lines, secrets) == []
    assert sessions and all(f"uaid_hash={expected}" in line for line in sessions), sessions
    assert all(r'user_agent="Evil/1.0\u001b[31mRED\u001b[0m\u0007\b(evil)"' in line for line in sessions), sessions
    assert not [line for line in lines if "forged" in line and not line.startswith("20")]
    print(f"\nhuman logs: {len(lines)} lines from 2 nodes, 0 raw control characters, 0 leaks;"
          f" {len(sessions)} Session lines with the escaped User-Agent")


@pytest.fixture(scope="module")
def debug_run(request: pytest.FixtureRequest) -> tuple[Stack, Secrets]:
    stack = start_stack(request, "logs-debug", AUTOPUSH_LOG_LEVEL="debug")
    return stack, client_life(stack)


def test_debug_logs_add_the_raw_uaid_and_nothing_else(debug_run) -> None:
    stack, secrets = debug_run
    lines = log_lines(stack)
    fields = fields_of(lines)
    expected = expected_uaid_hash(stack, secrets.uaid)
    with_raw = [f for f in fields if f.get("uaid") == secrets.uaid]

    assert with_raw and all(f["uaid_hash"] == expected for f in with_raw)
    assert {"Register", "Session", "Successful delivery", "Router miss, message stored."} <= {
        f["message"] for f in with_raw}
    # The raw UAID is allowed here, and only in the ``uaid`` field; every other secret still is not.
    without_uaid_field = [line.replace(f'"uaid": "{secrets.uaid}"', '"uaid": "-"') for line in lines]
    assert leaks(without_uaid_field, secrets) == []
    assert raw_controls(lines) == []
    print(f"\ndebug logs: {len(lines)} lines, {len(with_raw)} with the raw uaid beside uaid_hash, 0 other leaks")


# ---- error reports ----------------------------------------------------------------------

REPORTING_NODE = """
import logging, os, sentry_sdk
from autopush_flask.config import load_settings
from autopush_flask.logging import log_fields
from autopush_flask.services import build_services
build_services(load_settings("endpoint", os.environ))
log = logging.getLogger("autopush.endpoint")
log.info("Register", extra=log_fields(uaid_hash=os.environ["TEST_UAID"], endpoint=os.environ["TEST_ENDPOINT"]))
log.error("Test Error", extra=log_fields(uaid_hash=os.environ["TEST_UAID"]))
sentry_sdk.flush(5)
"""


def test_error_reports_carry_the_redacted_fields(make_settings) -> None:
    """Sentry's logging integration sends every record's extra attributes (as breadcrumbs
    and with error events): it gets the same redacted fields as the log."""
    settings = make_settings()
    keys = CryptoKeys(settings.crypto_keys)
    uaid = uuid.uuid4()
    endpoint = make_endpoint_url(keys, "https://push.example.com", uaid, uuid.uuid4(), None)
    sentry = FakeSentry()
    try:
        environ = {
            "AUTOPUSH_DDB_ENDPOINT": settings.ddb_endpoint, "AUTOPUSH_ROUTER_TABLE": settings.router_table,
            "AUTOPUSH_MESSAGE_TABLE": settings.message_table, "AUTOPUSH_STATSD_HOST": "",
            "AUTOPUSH_CRYPTO_KEYS": settings.crypto_keys[0], "AUTOPUSH_SENTRY_DSN": sentry.dsn,
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "TEST_UAID": uaid.hex, "TEST_ENDPOINT": endpoint,
        }
        subprocess.run([sys.executable, "-c", REPORTING_NODE], cwd=ROOT, env=environ, check=True, timeout=60,
                       capture_output=True)
    finally:
        sentry.httpd.shutdown()
    sent = json.dumps(sentry.envelopes)
    key = keys.derive(b"autopush-flask log uaid hash v1")[0]
    expected = hmac.new(key, uaid.hex.encode(), hashlib.sha256).hexdigest()[:16]
    token = endpoint.rsplit("/", 1)[1]
    assert "Test Error" in sent and "Register" in sent  # the event and its breadcrumb arrived
    assert uaid.hex not in sent and token[6:] not in sent
    assert sent.count(expected) >= 2
