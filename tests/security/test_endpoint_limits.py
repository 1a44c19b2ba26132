"""The endpoint node's memory and time per request stay bounded under hostile clients.

Every attack is mounted over real sockets against a real gunicorn endpoint
node (gevent worker) on the real dynalite, with the fake FCM and APNs servers
behind the bridges. Each test asserts the protection and a measured figure:
the worker's resident memory (``VmRSS`` from ``/proc``), elapsed times,
latencies, or the number of DynamoDB requests.
"""

from __future__ import annotations

import base64
import http.client
import json
import select
import socket
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.vapid import VapidError, VapidVerifier
from autopush_flask.db import User
from autopush_flask.endpoint.body_limits import DRAIN_SECONDS, READ_PIECE
from autopush_flask.endpoint.errors import MAX_AUTHORIZATION
from autopush_flask.endpoint.registration import MAX_BODY as REGISTRATION_MAX_BODY
from autopush_flask.health import TABLE_CHECK_MAX_AGE
from tests.support.bridges import APNS_CHANNEL, FCM_APP, FakeBridges
from tests.support.processes import GunicornNode, LocalDynamoDB, running_node, stopping
from tests.support.stack import Stack, start_stack
from tests.support.throttle_proxy import ThrottleProxy
from tests.support.webpush import AppServer, Subscription

AUTH_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="
GRACE = 2.0  # AUTOPUSH_BODY_GRACE of the node under test
MIN_RATE = 500  # AUTOPUSH_BODY_MIN_RATE (its default)
MAX_DATA = 5630  # AUTOPUSH_MAX_DATA default: the stack leaves it unset
HUGE = 100 * 1024 * 1024
MIB = 1024 * 1024


# --------------------------------------------------------------------------
# The node under test
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, fakes: FakeBridges) -> Stack:
    key_dir = request.getfixturevalue("tmp_path_factory").mktemp("p8")
    settings = {
        "AUTOPUSH_AUTH_KEYS": AUTH_KEY,
        "AUTOPUSH_BODY_GRACE": str(GRACE),
        "AUTOPUSH_BODY_MIN_RATE": str(MIN_RATE),
        **fakes.node_settings(key_dir),
    }
    return start_stack(request, "limits", **settings)


@pytest.fixture(scope="module")
def endpoint(stack: Stack) -> str:
    """A live v1 push endpoint: the node reads bodies sent to it."""
    client = stack.client()
    client.hello()
    return client.register(str(uuid.uuid4()))["pushEndpoint"]


def worker_pid(node: GunicornNode) -> int:
    """The endpoint's one gevent worker (a child of the gunicorn master)."""
    master = node.process.pid
    children = [int(entry.name) for entry in Path("/proc").iterdir() if entry.name.isdigit()
                and _parent_of(entry) == master]
    assert len(children) == 1, children
    return children[0]


def _parent_of(proc_entry: Path) -> int | None:
    try:
        stat = (proc_entry / "stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[1])


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


def path_of(url: str) -> str:
    return "/" + url.split("/", 3)[3]


def assert_error(status: int, body: bytes | dict, expected_status: int, errno: int | None) -> dict:
    document = body if isinstance(body, dict) else json.loads(body)
    assert status == expected_status, document
    assert set(document) == {"code", "errno", "error", "message", "more_info"}
    assert (document["code"], document["errno"]) == (expected_status, errno)
    return document


# --------------------------------------------------------------------------
# Raw HTTP/1.1 over a socket: what requests/http.client cannot send
# --------------------------------------------------------------------------


class RawResponse:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        length = int(self.headers.get("content-length", "0"))
        self.body = self.body[:length]


def flood(port: int, head: str, chunked: bool, total: int = HUGE) -> tuple[RawResponse, int, float]:
    """Send ``head`` and then up to ``total`` body bytes as fast as the server takes them.

    Reads the response as soon as it starts, like a client that watches for an
    early answer. Returns the response, the body bytes the server accepted,
    and how long the server kept the connection open after answering.
    """
    block = b"x" * 65536
    piece = (b"%x\r\n" % len(block) + block + b"\r\n") if chunked else block
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head.encode("latin-1"))
    sock.setblocking(False)
    sent, received = 0, b""
    try:
        while sent < total and b"\r\n\r\n" not in received:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            assert readable or writable, "the server neither reads nor answers"
            if readable:
                data = sock.recv(65536)
                if not data:
                    break
                received += data
            elif writable:
                try:
                    sent += sock.send(piece)
                except (BrokenPipeError, ConnectionResetError):
                    break
        answered = time.monotonic()
        received += _read_until_closed(sock, deadline=answered + 10)
        return RawResponse(received), sent, time.monotonic() - answered
    finally:
        sock.close()


def _read_until_closed(sock: socket.socket, deadline: float) -> bytes:
    """What the server still sends until it closes the connection (or the deadline)."""
    data = b""
    sock.setblocking(True)
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:  # closed with our unread bytes pending: a RST
            return data
        except socket.timeout:
            raise AssertionError("the server kept the connection open") from None
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server kept the connection open")


def post_head(path: str, length: int | None, **headers: str) -> str:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "TTL: 60", "Content-Encoding: aes128gcm"]
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return "\r\n".join(lines) + "\r\n\r\n"


# --------------------------------------------------------------------------
# 1. Bodies are capped before they are read
# --------------------------------------------------------------------------


def registration_path() -> str:
    return f"/v1/fcm/{FCM_APP}/registration"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("route", ["push", "registration"])
def test_100_mb_body_is_413_104_and_the_worker_does_not_grow(stack, endpoint, route, chunked) -> None:
    path = path_of(endpoint) if route == "push" else registration_path()
    pid = worker_pid(stack.endpoint)
    before = rss_bytes(pid)
    response, sent, open_after_answer = flood(stack.endpoint_port, post_head(path, None if chunked else HUGE), chunked)
    growth = rss_bytes(pid) - before
    document = assert_error(response.status, response.body, 413, 104)
    limit = MAX_DATA if route == "push" else REGISTRATION_MAX_BODY
    assert document["message"].endswith(f"smaller than {limit} bytes")
    assert response.headers["connection"] == "close"
    # Figures: the worker kept none of it, and closed instead of draining 100 MB.
    assert growth < 3 * MIB, f"worker RSS grew by {growth / MIB:.1f} MiB"
    assert sent < HUGE / 4, f"the client got {sent / MIB:.0f} MiB in"
    assert open_after_answer < 2.0
    print(f"{route}/{'chunked' if chunked else 'length'}: 413 after {sent / MIB:.1f} MiB sent, "
          f"RSS +{growth / 1024:.0f} KiB, closed {open_after_answer * 1000:.0f} ms after answering")


def test_an_early_answer_to_a_small_body_keeps_the_connection(stack) -> None:
    """Only bodies too large or too slow to drop cost the client its connection."""
    connection = http.client.HTTPConnection("127.0.0.1", stack.endpoint_port, timeout=10)
    try:
        for _ in range(3):  # an app server pushing to dead endpoints, on one connection
            connection.request("POST", "/wpush/v1/not-a-token", body=b"e" * 3000,
                               headers={"TTL": "60", "Content-Encoding": "aes128gcm"})
            response = connection.getresponse()
            assert_error(response.status, response.read(), 404, 102)
            assert response.getheader("Connection") == "keep-alive"
        first_socket = connection.sock
        connection.request("GET", "/__lbheartbeat__")
        assert connection.getresponse().status == 200
        assert connection.sock is first_socket
    finally:
        connection.close()


@pytest.mark.parametrize("size, status", [(4096, 201), (MAX_DATA, 201), (MAX_DATA + 1, 413)])
def test_push_cap_is_exact_for_chunked_bodies_too(endpoint, size: int, status: int) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: requests sends it chunked
        yield b"y" * (size // 2)
        yield b"y" * (size - size // 2)

    response = requests.post(endpoint, data=chunks(), timeout=10,
                             headers={"TTL": "60", "Content-Encoding": "aes128gcm"})
    assert response.status_code == status, response.text
    if status == 413:
        assert response.json()["errno"] == 104


def test_registration_body_cap(stack) -> None:
    url = stack.endpoint_url + registration_path()
    padded = {"token": "device-token-1", "padding": "p" * REGISTRATION_MAX_BODY}
    response = requests.post(url, json=padded, timeout=10)
    assert_error(response.status_code, response.json(), 413, 104)
    assert requests.post(url, json={"token": "device-token-1"}, timeout=10).status_code == 200


# --------------------------------------------------------------------------
# 2. Slow bodies are cut off
# --------------------------------------------------------------------------


def cutoff_bound(declared_length: int) -> float:
    """When a 1 byte/s body is due to be cut off: the grace plus one read piece at the minimum rate."""
    return GRACE + min(declared_length, READ_PIECE) / MIN_RATE


class Tricklers:
    """Many connections each sending a POST head and then one body byte per second."""

    def __init__(self, port: int, head: str, count: int) -> None:
        self.started = time.monotonic()
        self.sockets = [socket.create_connection(("127.0.0.1", port)) for _ in range(count)]
        self.sent_head: dict[socket.socket, float] = {}
        for sock in self.sockets:
            sock.sendall(head.encode("latin-1"))
            self.sent_head[sock] = time.monotonic()
            sock.setblocking(False)
        # Per connection: seconds from its request head to the answer, and the answer.
        self.answers: dict[socket.socket, tuple[float, bytes]] = {}
        self._next_byte = time.monotonic()

    def run_until_answered(self, deadline: float) -> None:
        while len(self.answers) < len(self.sockets) and time.monotonic() < self.started + deadline:
            self.step(timeout=0.05)

    def step(self, timeout: float) -> None:
        pending = [sock for sock in self.sockets if sock not in self.answers]
        if time.monotonic() >= self._next_byte:
            self._next_byte += 1.0
            for sock in pending:
                try:
                    sock.send(b"z")
                except OSError:
                    pass
        readable, _, _ = select.select(pending, [], [], timeout) if pending else ([], [], [])
        for sock in readable:
            answered = time.monotonic() - self.sent_head[sock]
            self.answers[sock] = (answered, _read_until_closed(sock, deadline=time.monotonic() + 5))

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


def test_a_1_byte_per_second_body_is_cut_off_with_408(stack, endpoint) -> None:
    tricklers = Tricklers(stack.endpoint_port, post_head(path_of(endpoint), 100), 1)
    try:
        tricklers.run_until_answered(deadline=cutoff_bound(100) + 10)
    finally:
        tricklers.close()
    assert tricklers.answers, "never cut off"
    [(elapsed, raw)] = tricklers.answers.values()
    response = RawResponse(raw)
    assert_error(response.status, response.body, 408, None)
    assert response.headers["connection"] == "close"
    assert GRACE <= elapsed <= cutoff_bound(100) + 1.0, f"cut off after {elapsed:.2f} s"


def test_a_slow_body_the_app_does_not_read_costs_at_most_the_drain_time(stack) -> None:
    tricklers = Tricklers(stack.endpoint_port, post_head("/wpush/v1/not-a-token", 60_000), 1)
    try:
        tricklers.run_until_answered(deadline=10)
    finally:
        tricklers.close()
    [(elapsed, raw)] = tricklers.answers.values()
    response = RawResponse(raw)
    assert_error(response.status, response.body, 404, 102)
    assert response.headers["connection"] == "close"
    assert elapsed <= DRAIN_SECONDS + 0.5, f"answered after {elapsed:.2f} s"


def test_200_slow_clients_are_all_cut_off_and_do_not_delay_a_real_push(stack, endpoint) -> None:
    app_server, subscriber = AppServer(), stack.client()
    subscriber.hello()
    subscription = Subscription(subscriber.register(str(uuid.uuid4()))["pushEndpoint"])
    tricklers = Tricklers(stack.endpoint_port, post_head(path_of(endpoint), 2000), 200)
    try:
        while time.monotonic() - tricklers.started < GRACE / 2:  # all connected and trickling
            tricklers.step(timeout=0.05)
        started = time.monotonic()
        response = app_server.push(subscription, "through the crowd")
        push_latency = time.monotonic() - started
        tricklers.run_until_answered(deadline=cutoff_bound(2000) + 10)
    finally:
        tricklers.close()
        subscriber.close()
    assert response.status_code == 201
    assert push_latency < 1.0, f"push took {push_latency:.2f} s among 200 slow clients"
    statuses = {RawResponse(raw).status for _, raw in tricklers.answers.values() if raw}
    slowest = max(elapsed for elapsed, _ in tricklers.answers.values())
    assert len(tricklers.answers) == 200 and statuses == {408}
    assert slowest <= cutoff_bound(2000) + 1.5, f"last slow client cut off after {slowest:.2f} s"
    print(f"push among 200 slow clients: {push_latency * 1000:.0f} ms; all 408 within {slowest:.2f} s")


def test_a_5_kb_registration_at_56_kbit_per_second_is_not_cut_off(stack) -> None:
    """A slow mobile link: 7,000 bytes/s (the body is read in pieces as it arrives)."""
    body = json.dumps({"token": "device-token-1", "padding": "m" * 5000}).encode()
    head = (f"POST {registration_path()} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    with socket.create_connection(("127.0.0.1", stack.endpoint_port)) as sock:
        sock.sendall(head.encode())
        for offset in range(0, len(body), 700):
            sock.sendall(body[offset:offset + 700])
            time.sleep(0.1)
        sock.settimeout(10)
        response = RawResponse(sock.recv(65536))
    assert response.status == 200, response.body


# --------------------------------------------------------------------------
# 3. The Authorization header is capped
# --------------------------------------------------------------------------


@pytest.mark.parametrize("route", ["push", "registration"])
def test_authorization_longer_than_4096_is_401_109_before_parsing(stack, endpoint, route: str) -> None:
    if route == "push":
        url = endpoint
        send = lambda authorization: requests.post(  # noqa: E731
            url, headers={"TTL": "60", "Authorization": authorization}, timeout=10)
    else:
        reply = requests.post(stack.endpoint_url + registration_path(), json={"token": "device-token-1"},
                              timeout=10).json()
        url = f"{stack.endpoint_url}{registration_path()}/{reply['uaid']}"
        send = lambda authorization: requests.get(url, headers={"Authorization": authorization}, timeout=10)  # noqa: E731
    at_cap = "vapid t=" + "a" * (MAX_AUTHORIZATION - len("vapid t="))
    over_cap = at_cap + "a"
    refused = send(over_cap)
    document = assert_error(refused.status_code, refused.json(), 401, 109)
    assert document["message"] == "Authorization header too long"
    assert refused.headers["WWW-Authenticate"] == "webpush"
    parsed = send(at_cap)  # still parsed (and refused for what it is)
    assert_error(parsed.status_code, parsed.json(), 401, 109)
    assert parsed.json()["message"] != "Authorization header too long"


# --------------------------------------------------------------------------
# 4. The VAPID verification cache
# --------------------------------------------------------------------------

JUNK_TOKENS = 10_000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def junk_authorization(padding_items: int, audience: str) -> str:
    """A self-signed token with a fresh key: a valid signature, a wrong ``aud``, ``[]`` padding.

    Each ``[]`` is 3 bytes of JSON (4 of base64) but a 56-byte list once parsed.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    claims = {"aud": audience, "exp": int(time.time()) + 3600, "sub": "mailto:junk@example.com",
              "pad": [[]] * padding_items}
    token = jwt.encode(claims, key, algorithm="ES256")
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return f"vapid t={token}, k={_b64(public)}"


def test_10000_padded_junk_vapid_tokens_do_not_grow_the_worker(stack, endpoint) -> None:
    pid = worker_pid(stack.endpoint)
    connection = http.client.HTTPConnection("127.0.0.1", stack.endpoint_port, timeout=10)
    path = path_of(endpoint)
    # Just under the header cap (~700 lists each), and every tenth far over it.
    under_cap = [junk_authorization(700, "https://elsewhere.example") for _ in range(8)]
    assert all(len(a) <= MAX_AUTHORIZATION for a in under_cap)

    def send(authorization: str) -> int:
        connection.request("POST", path, headers={"TTL": "60", "Authorization": authorization})
        response = connection.getresponse()
        response.read()
        return response.status

    for authorization in under_cap:  # warm the worker up before measuring
        send(authorization)
    before = rss_bytes(pid)
    growth = 0
    try:
        for number in range(JUNK_TOKENS):
            huge = number % 10 == 9
            authorization = junk_authorization(1800 if huge else 700, "https://elsewhere.example")
            assert send(authorization) == 401
            if number % 500 == 499:  # stop early (and fail) rather than exhaust the machine
                growth = rss_bytes(pid) - before
                assert growth < 20 * MIB, f"worker RSS grew {growth / MIB:.0f} MiB after {number + 1} tokens"
    finally:
        connection.close()
    growth = rss_bytes(pid) - before
    assert growth < 20 * MIB
    app_server = AppServer()  # and a real, valid token is still accepted
    subscriber = stack.client()
    subscriber.hello()
    subscription = Subscription(subscriber.register(str(uuid.uuid4()))["pushEndpoint"])
    assert app_server.push(subscription, "hello").status_code == 201
    assert app_server.push(subscription, "again").status_code == 201
    subscriber.close()
    print(f"{JUNK_TOKENS} junk VAPID tokens: worker RSS +{growth / MIB:.1f} MiB")


AUD = "https://push.example.com"
NOW = 1_700_000_000


def signed(key: ec.EllipticCurvePrivateKey, **claims: object) -> str:
    public = key.public_key().public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    body = {"aud": AUD, "exp": NOW + 600, "sub": "mailto:ops@example.com", **claims}
    return f"vapid t={jwt.encode(body, key, algorithm='ES256')}, k={_b64(public)}"


def test_verifier_serves_a_valid_token_from_its_cache_and_still_checks_aud_and_exp() -> None:
    verifier = VapidVerifier(max_bytes=64 * 1024, clock=lambda: NOW)
    authorization = signed(ec.generate_private_key(ec.SECP256R1()), jti="first-call-only")
    assert verifier.verify(authorization, None, AUD).claims["jti"] == "first-call-only"
    cached = verifier.verify(authorization, None, AUD)
    assert cached.claims == {"aud": AUD, "exp": NOW + 600, "sub": "mailto:ops@example.com"}  # from the cache
    assert (cached.scheme, cached.version, cached.sub_problem) == ("vapid", 2, None)
    with pytest.raises(VapidError, match="bad_aud"):
        verifier.verify(authorization, None, "https://other.example")
    with pytest.raises(VapidError, match="expired"):
        verifier.verify(authorization, None, AUD, now=NOW + 601)
    assert len(verifier) == 1


def test_verifier_keeps_only_fully_valid_tokens_within_its_byte_budget() -> None:
    clock = [float(NOW)]
    verifier = VapidVerifier(max_bytes=16 * 1024, clock=lambda: clock[0])
    key = ec.generate_private_key(ec.SECP256R1())
    for claims in ({"aud": "https://other.example"}, {"sub": "nobody"}, {"exp": NOW - 1}):
        try:
            verifier.verify(signed(key, **claims), None, AUD)
        except VapidError:
            pass
    assert len(verifier) == 0  # wrong aud, bad sub, expired: never remembered
    for number in range(200):
        verifier.verify(signed(key, jti=str(number)), None, AUD)
    assert 0 < len(verifier) < 200 and len(verifier) * 700 <= 16 * 1024  # bounded in bytes
    clock[0] = NOW + 601
    verifier.verify(signed(key, exp=NOW + 1200), None, AUD)
    assert len(verifier) == 1  # the others' exp passed: dropped


# --------------------------------------------------------------------------
# 5. Deep or unsendable JSON on the bridge paths is a 400, never a 500
# --------------------------------------------------------------------------


def nested(depth: int) -> dict:
    value: dict = {"alert": "deep"}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


HOSTILE_APS = {
    "9 levels": nested(9),
    "400 levels": nested(400),
    "40 levels of lists": json.loads('{"a":' + "[" * 40 + "]" * 40 + "}"),
    "string nested 2000 deep": '{"a":' + "[" * 2000 + "]" * 2000 + "}",
    "NaN": {"badge": float("nan")},
    "NaN in a string": '{"badge": NaN}',
    "lone surrogate": {"alert": "\ud800"},
    "lone surrogate key": {"\udfff": 1},
    "41-digit number": {"badge": 10**40},
    "tiny float": {"badge": 1e-200},
}


def raw_json(value: object) -> bytes:
    """JSON as a hostile client writes it: NaN and lone surrogates included."""
    return json.dumps(value, allow_nan=True).encode()


@pytest.mark.parametrize("aps", HOSTILE_APS.values(), ids=HOSTILE_APS.keys())
def test_hostile_aps_is_refused_at_registration_and_update(stack, fakes, aps) -> None:
    _, apns = fakes
    url = f"{stack.endpoint_url}/v1/apns/{APNS_CHANNEL}/registration"
    body = raw_json({"token": "a1b2c3d4" * 8, "aps": aps})
    refused = requests.post(url, data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert_error(refused.status_code, refused.json(), 400, None)
    reply = requests.post(url, json={"token": "a1b2c3d4" * 8, "aps": {"alert": "fine"}}, timeout=10).json()
    update = requests.put(f"{url}/{reply['uaid']}", data=body, timeout=10,
                          headers={"Authorization": f"Bearer {reply['secret']}", "Content-Type": "application/json"})
    assert_error(update.status_code, update.json(), 400, None)
    before = len(apns.requests)
    assert requests.post(reply["endpoint"], headers={"TTL": "60"}, timeout=10).status_code == 201
    assert apns.requests[before].body["aps"] == {"alert": "fine"}  # the stored record was left alone


@pytest.mark.parametrize("kind, app", [("fcm", FCM_APP), ("apns", APNS_CHANNEL)])
def test_device_token_with_a_lone_surrogate_is_refused(stack, kind: str, app: str) -> None:
    body = raw_json({"token": "device-token-\udc80"})
    response = requests.post(f"{stack.endpoint_url}/v1/{kind}/{app}/registration", data=body, timeout=10,
                             headers={"Content-Type": "application/json"})
    assert_error(response.status_code, response.json(), 400, None)


def stored_bridge_endpoint(stack: Stack, router_type: str, router_data: dict) -> str:
    """A record written before registration checked its JSON (or by another server), and its endpoint."""
    uaid = uuid.uuid4()
    assert stack.storage.add_user(User(uaid=uaid.hex, router_type=router_type, router_data=router_data,
                                              connected_at=int(time.time() * 1000), record_version=1))
    keys = CryptoKeys([stack.environ["AUTOPUSH_CRYPTO_KEYS"]])
    return make_endpoint_url(keys, stack.endpoint_url, uaid, uuid.uuid4(), None)


@pytest.mark.parametrize("router_type, router_data", [
    ("apns", {"token": "device-\udc80-token", "rel_channel": APNS_CHANNEL}),
    ("fcm", {"token": "device-\udc80-token", "app_id": FCM_APP}),
], ids=["apns-token", "fcm-token"])
def test_push_to_an_unsendable_stored_record_is_400(stack, router_type: str, router_data: dict) -> None:
    endpoint = stored_bridge_endpoint(stack, router_type, router_data)
    response = requests.post(endpoint, headers={"TTL": "60"}, timeout=10)
    assert_error(response.status_code, response.json(), 400, None)


@pytest.mark.parametrize("aps", [nested(40), {"alert": "\ud800"}], ids=["40 levels", "lone surrogate"])
def test_push_with_an_unsendable_stored_aps_sends_the_default_aps(stack, fakes, aps) -> None:
    _, apns = fakes
    endpoint = stored_bridge_endpoint(stack, "apns", {"token": "a1b2c3d4" * 8, "rel_channel": APNS_CHANNEL, "aps": aps})
    before = len(apns.requests)
    assert requests.post(endpoint, headers={"TTL": "60"}, timeout=10).status_code == 201
    assert apns.requests[before].body["aps"]["alert"]["loc-key"] == "SentTab.NoTabArrivingNotification.body"


def test_deep_bodies_on_every_registration_route_are_400(stack) -> None:
    deep = b'{"token": "device-token-1", "channelID": ' + b"[" * 3000 + b"]" * 3000 + b"}"
    base = f"{stack.endpoint_url}/v1/fcm/{FCM_APP}/registration"
    reply = requests.post(base, json={"token": "device-token-1"}, timeout=10).json()
    headers = {"Authorization": f"Bearer {reply['secret']}", "Content-Type": "application/json"}
    for method, url in (("POST", base), ("PUT", f"{base}/{reply['uaid']}"),
                        ("POST", f"{base}/{reply['uaid']}/subscription")):
        response = requests.request(method, url, data=deep, headers=headers, timeout=10)
        assert_error(response.status_code, response.json(), 400, None)


# --------------------------------------------------------------------------
# 6. Health checks are cached
# --------------------------------------------------------------------------


def test_health_burst_costs_a_couple_of_storage_calls_and_an_outage_still_shows(tmp_path) -> None:
    database = LocalDynamoDB(path=tmp_path / "data")
    database.start()
    proxy = ThrottleProxy(database.port).start()  # counts every DynamoDB request
    environ = Stack(proxy.url, tmp_path).environ
    with stopping(database), stopping(proxy), running_node(
            GunicornNode("wsgi:endpoint_app", environ), tmp_path / "endpoint.log") as node:
        time.sleep(TABLE_CHECK_MAX_AGE)  # any start-up check has aged out
        calls_before = proxy.requests
        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(lambda path: requests.get(node.url + path, timeout=10).status_code,
                                     ["/health", "/__heartbeat__"] * 100))
        storage_calls = proxy.requests - calls_before
        assert statuses == [200] * 200
        assert storage_calls <= 4, f"200 health requests cost {storage_calls} DynamoDB calls"  # 2 tables, ≤ 2 checks
        database.stop()
        stopped = time.monotonic()
        while requests.get(node.url + "/health", timeout=30).status_code != 503:
            assert time.monotonic() - stopped < TABLE_CHECK_MAX_AGE + 10
            time.sleep(0.2)
        noticed = time.monotonic() - stopped
    print(f"200 health requests: {storage_calls} DynamoDB calls; outage shown after {noticed:.1f} s")
