"""Attacks on a connection node's private router port, over real sockets.

Real gunicorn nodes on the real dynalite. Whoever reaches a router port and
knows a UAID used to be able to inject notifications (``PUT /push``), force
drains (``PUT /notif``) and kick sessions (``DELETE /notif``); bodies were
read whole and requests queued without bound; the TLS settings changed the
``node_id`` scheme while the port kept speaking plain HTTP. Each test mounts
one attack, checks the protection, and asserts a figure (a count, a time or
a memory delta). Run with ``-s`` to see the figures.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import uuid
from pathlib import Path

import pytest
import requests
import websocket

from autopush_flask.connection.app import create_connection_app
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Notification, User
from autopush_flask.node_auth import RouterRequestKeys
from tests.e2e.faults_support import children
from tests.support.fake_apns import TestPki
from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.statsd_sink import StatsdSink

pytestmark = pytest.mark.timeout(120)

MAX_REQUESTS = 4  # the router's concurrency cap in the shared stack
TEN_MB = 10 * 1024 * 1024
QUIET_SECONDS = 2.0
AUTH_ERRORS = "autoconnect.router.auth.error"
REJECTED = "autoconnect.router.request.rejected"
DIRECT_STATUS = "autoendpoint.notification.direct.delivery_status"


# ---- fixtures and helpers ------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, statsd: StatsdSink) -> Stack:
    """One connection worker bound to 127.0.0.1 with a small concurrency cap, and an endpoint."""
    return start_stack(
        request, "router-port", **statsd.settings(),
        AUTOPUSH_ROUTER_BIND="127.0.0.1", AUTOPUSH_ROUTER_MAX_REQUESTS=str(MAX_REQUESTS),
    )


def report(line: str) -> None:
    print(line, flush=True)


def subscribe(stack: Stack, uaid: str | None = None) -> tuple[PushClient, str, str, str]:
    """A connected, registered browser: (client, uaid, channel_id, push endpoint)."""
    client = stack.client()
    uaid = client.hello(uaid)["uaid"]
    channel_id = str(uuid.uuid4())
    reply = client.register(channel_id)
    assert reply["status"] == 200
    return client, uaid, channel_id, reply["pushEndpoint"]


def router_keys(crypto_keys: str) -> RouterRequestKeys:
    return RouterRequestKeys.from_crypto_keys(CryptoKeys(crypto_keys.split(",")))


def push_body(channel_id: str, version: str) -> bytes:
    return json.dumps({"channelID": channel_id, "version": version, "ttl": 60, "timestamp": int(time.time())}).encode()


def assert_quiet_and_connected(client: PushClient, seconds: float = QUIET_SECONDS) -> None:
    """Nothing arrives for ``seconds``, and the session still answers a ping (not kicked)."""
    client.ws.settimeout(seconds)
    try:
        with pytest.raises(websocket.WebSocketTimeoutException):
            client.ws.recv()
    finally:
        client.ws.settimeout(5)
    client.send({})
    assert client.receive() == "{}"


def stored_versions(stack: Stack, uaid: str) -> list[str]:
    return [m.version for m in stack.storage.fetch_timestamp_messages(User(uaid=uaid), None)[1]]


def push_via(origin: str, endpoint: str) -> requests.Response:
    """POST a push to ``endpoint``'s path on the endpoint node at ``origin``."""
    path = endpoint.split("/wpush/", 1)[1]
    return requests.post(f"{origin}/wpush/{path}", headers={"TTL": "60"}, timeout=10)


def worker_memory_kb(stack: Stack) -> tuple[int, int, int]:
    """(pid, VmRSS, VmHWM) of the single connection worker."""
    [pid] = children(stack.connection.process.pid)
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return pid, int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def raw_head(method: str, path: str, headers: dict[str, str], content_length: int) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: router", f"Content-Length: {content_length}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def read_status(sock: socket.socket, timeout: float = 5.0) -> int:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a status line: {data!r}")
        data += chunk
    return int(data.split(b" ", 2)[1])


# ---- 1. signatures -------------------------------------------------------------------


def test_unsigned_forged_stale_tampered_and_replayed_requests_are_refused(stack: Stack, statsd: StatsdSink) -> None:
    client, uaid, channel_id, endpoint = subscribe(stack)
    user = stack.storage.get_user(uaid)
    node_id, connected_at = user.node_id, user.connected_at
    # A stored message a forged PUT /notif would make the node deliver.
    stack.storage.save_message(User(uaid=uaid), Notification(
        channel_id=channel_id, version="stored-forged", ttl=60, timestamp=int(time.time()),
        sortkey_timestamp=int(time.time() * 1e6)))
    node_keys = router_keys(stack.environ["AUTOPUSH_CRYPTO_KEYS"])
    stranger_keys = router_keys(CryptoKeys.generate_key())
    other_uaid = uuid.uuid4().hex
    targets = {  # name → (method, path, body sent, a path it was not signed for)
        "push": ("PUT", f"/push/{uaid}", push_body(channel_id, "forged"), f"/push/{other_uaid}"),
        "notif": ("PUT", f"/notif/{uaid}", b"", f"/notif/{other_uaid}"),
        "delete": ("DELETE", f"/notif/{uaid}/{connected_at}", b"", f"/notif/{uaid}/{connected_at + 1}"),
    }
    attacks = {  # name → (expected reason, headers for (method, path, body, other path))
        "unsigned": ("missing", lambda m, p, b, o: []),
        "forged": ("signature", lambda m, p, b, o: stranger_keys.sign(m, p, b)),
        "stale": ("stale", lambda m, p, b, o: node_keys.sign(m, p, b, now=time.time() - 120)),
        "tampered": ("body", lambda m, p, b, o: node_keys.sign(m, p, b + b" ")),
        "replayed": ("signature", lambda m, p, b, o: node_keys.sign(m, o, b)),
    }
    before = {reason: statsd.count(AUTH_ERRORS, reason=reason) for reason, _ in attacks.values()}
    statuses = []
    for attack, (reason, sign) in attacks.items():
        for target, (method, path, body, other_path) in targets.items():
            response = requests.request(method, node_id + path, data=body, headers=dict(sign(method, path, body, other_path)),
                                        timeout=5)
            statuses.append((attack, target, response.status_code))
    assert {status for _, _, status in statuses} == {401}, statuses
    expected = {reason: sum(1 for r, _ in attacks.values() if r == reason) * len(targets) for reason in before}
    counted = {reason: statsd.wait_count(AUTH_ERRORS, before[reason] + n, reason=reason) - before[reason]
               for reason, n in expected.items()}
    assert counted == expected
    assert_quiet_and_connected(client)  # nothing injected, no drain, not kicked

    # The head alone is enough to refuse: a body that never comes is not waited for.
    with socket.create_connection(("127.0.0.1", stack.router_port)) as sock:
        started = time.monotonic()
        sock.sendall(raw_head("PUT", f"/push/{uaid}", {}, 8000))
        assert read_status(sock) == 401
        refused_in = time.monotonic() - started
    assert refused_in < 1.0

    # A real push, signed by the endpoint, still goes straight to the browser.
    direct_before = statsd.count(DIRECT_STATUS, status="200")
    assert push_via(stack.endpoint_url, endpoint).status_code == 201
    notification = client.receive()
    assert notification["channelID"] == channel_id and notification["version"] != "stored-forged"
    assert statsd.wait_count(DIRECT_STATUS, direct_before + 1, status="200") == direct_before + 1
    client.ack(notification)
    report(f"router auth: {len(statuses)} forged requests → {len(statuses)}×401, 0 delivered, 0 kicked; "
           f"reasons {counted}; head-only refusal in {refused_in * 1000:.0f} ms; signed push delivered directly")


def read_response(sock: socket.socket, buffered: bytearray, timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """One whole answer (status, lower-case headers, body) from ``sock``; what follows stays in ``buffered``."""
    sock.settimeout(timeout)
    while b"\r\n\r\n" not in buffered:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed before a whole head: {bytes(buffered)!r}")
        buffered += chunk
    head, _, _ = bytes(buffered).partition(b"\r\n\r\n")
    del buffered[: len(head) + 4]
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
    length = int(headers.get("content-length", "0"))
    while len(buffered) < length:
        chunk = sock.recv(4096)
        if not chunk:
            raise ConnectionError("closed before the whole body")
        buffered += chunk
    body = bytes(buffered[:length])
    del buffered[:length]
    return int(status_line.split(" ", 2)[1]), headers, body


def test_one_connection_carries_pipelined_split_and_unusual_push_requests_in_order(
    stack: Stack, statsd: StatsdSink
) -> None:
    """The router answers the plain ``PUT /push`` from what it has buffered, and hands
    anything else to gevent's handling: on one kept-alive connection, each request
    must still get its own answer, in order, and leave the next one whole."""
    client, uaid, channel_id, _ = subscribe(stack)
    keys = router_keys(stack.environ["AUTOPUSH_CRYPTO_KEYS"])
    path = f"/push/{uaid}"

    def signed(version: str, **extra: str) -> bytes:
        body = push_body(channel_id, version)
        return raw_head("PUT", path, {**dict(keys.sign("PUT", path, body)), **extra}, len(body)) + body

    unsigned_body = push_body(channel_id, "unsigned")
    auth_before = statsd.count(AUTH_ERRORS, reason="missing")
    answers = []
    buffered = bytearray()
    with socket.create_connection(("127.0.0.1", stack.router_port)) as sock:
        # Two pushes and an unsigned one (its body left unread by the 401) in one write.
        sock.sendall(signed("pipelined-1") + raw_head("PUT", path, {}, len(unsigned_body)) + unsigned_body
                     + signed("pipelined-2"))
        answers += [read_response(sock, buffered) for _ in range(3)]
        # A head whose body comes later.
        whole = signed("split")
        sock.sendall(whole[:-20])
        time.sleep(0.2)
        sock.sendall(whole[-20:])
        answers.append(read_response(sock, buffered))
        # Forms left to gevent: a folded header line, Expect: 100-continue, a UAID to unquote.
        folded = signed("folded").replace(b"Host: router\r\n", b"Host: router\r\nX-Folded: a\r\n b\r\n", 1)
        sock.sendall(folded)
        answers.append(read_response(sock, buffered))
        expecting = signed("expect", Expect="100-continue")
        head, _, body = expecting.partition(b"\r\n\r\n")
        sock.sendall(head + b"\r\n\r\n")
        assert read_response(sock, buffered)[0] == 100
        sock.sendall(body)
        answers.append(read_response(sock, buffered))
        quoted = f"/push/{uaid[:4]}%{ord(uaid[4]):02x}{uaid[5:]}"
        quoted_body = push_body(channel_id, "quoted")
        sock.sendall(raw_head("PUT", quoted, dict(keys.sign("PUT", f"/push/{uaid}", quoted_body)), len(quoted_body))
                     + quoted_body)
        answers.append(read_response(sock, buffered))
    statuses = [status for status, _, _ in answers]
    assert statuses == [200, 401, 200, 200, 200, 200, 200], answers
    for status, headers, body in answers:
        assert headers["content-type"].startswith("text/plain")
        assert int(headers["content-length"]) == len(body) and headers["date"].endswith(" GMT")
    received = []
    for _ in range(6):
        notification = client.receive()
        received.append(notification["version"])
        client.ack(notification)
    assert received == ["pipelined-1", "pipelined-2", "split", "folded", "expect", "quoted"]
    assert statsd.wait_count(AUTH_ERRORS, auth_before + 1, reason="missing") == auth_before + 1
    report(f"router keep-alive: {len(answers)} requests on one connection answered in order: {statuses}")


def test_key_rotation_and_an_endpoint_with_an_unrelated_key(dynalite, tmp_path: Path, statsd: StatsdSink) -> None:
    key_a, key_b, key_c = (CryptoKeys.generate_key() for _ in range(3))
    stack = Stack(dynalite.url, tmp_path, **statsd.settings())
    stack.connection.environ = {**stack.environ, "AUTOPUSH_CRYPTO_KEYS": f"{key_a},{key_b}"}
    stack.endpoint.environ = {**stack.environ, "AUTOPUSH_CRYPTO_KEYS": f"{key_b},{key_a}"}
    with stack:
        client, uaid, channel_id, endpoint = subscribe(stack)
        direct_before = statsd.count(DIRECT_STATUS, status="200")
        assert push_via(stack.endpoint_url, endpoint).status_code == 201
        rotated = client.receive()
        assert rotated["channelID"] == channel_id
        client.ack(rotated)
        assert statsd.wait_count(DIRECT_STATUS, direct_before + 1, status="200") == direct_before + 1
        assert stored_versions(stack, uaid) == []

        # Newest key C, unknown to the connection node: refused, stored, never lost.
        stranger = stack.another_endpoint("endpoint-c", AUTOPUSH_CRYPTO_KEYS=f"{key_c},{key_a},{key_b}")
        refused_before = statsd.count(AUTH_ERRORS, reason="signature")
        response = push_via(stranger.url, endpoint)
        assert response.status_code == 201
        assert statsd.wait_count(AUTH_ERRORS, refused_before + 2, reason="signature") == refused_before + 2
        assert statsd.count(DIRECT_STATUS, status="401") >= 1
        assert len(stored_versions(stack, uaid)) == 1
        assert_quiet_and_connected(client)
        client.close()
        later = stack.client()
        assert later.hello(uaid)["uaid"] == uaid
        assert later.receive()["channelID"] == channel_id  # delivered from storage on reconnect
        report("router key rotation: A,B ← B,A delivered directly (storage untouched); "
               "C,A,B → 2×401 (push, notif), 201, stored, delivered on reconnect")


# ---- 2. caps ---------------------------------------------------------------------------


def test_a_10_mb_body_is_refused_before_it_is_read(stack: Stack, statsd: StatsdSink) -> None:
    _, uaid, _, _ = subscribe(stack)
    path = f"/push/{uaid}"
    pid, rss_before, peak_before = worker_memory_kb(stack)
    rejected_before = statsd.count(REJECTED, reason="too_large")
    slowest = 0.0
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", stack.router_port)) as sock:
            started = time.monotonic()
            sock.sendall(raw_head("PUT", path, {"Content-Type": "application/json"}, TEN_MB))
            sender = threading.Thread(target=send_quietly, args=(sock, b"\0" * TEN_MB), daemon=True)
            sender.start()
            assert read_status(sock) == 413
            slowest = max(slowest, time.monotonic() - started)
            sender.join(10)
    # Chunked (no declared length), even validly signed: refused, as nodes always declare a length.
    headers = dict(router_keys(stack.environ["AUTOPUSH_CRYPTO_KEYS"]).sign("PUT", path, b""))
    chunked = requests.put(f"http://127.0.0.1:{stack.router_port}{path}", headers=headers,
                           data=(b"\0" * 65536 for _ in range(TEN_MB // 65536)), timeout=10)
    assert chunked.status_code == 411
    _, rss_after, peak_after = worker_memory_kb(stack)
    assert statsd.wait_count(REJECTED, rejected_before + 3, reason="too_large") == rejected_before + 3
    assert statsd.wait_count(REJECTED, 1, reason="length_required") == 1
    assert slowest < 1.0
    assert peak_after - peak_before < 4096, (peak_before, peak_after)
    assert rss_after - rss_before < 4096, (rss_before, rss_after)
    report(f"router body cap: 3×10 MB declared → 413 (10 MB chunked → 411), slowest answer {slowest * 1000:.0f} ms; "
           f"worker {pid} VmRSS {rss_before}→{rss_after} kB, VmHWM {peak_before}→{peak_after} kB")


def send_quietly(sock: socket.socket, data: bytes) -> None:
    try:
        sock.sendall(data)
    except OSError:
        pass  # the server may close once it has answered


def test_requests_beyond_the_cap_get_503_at_once(stack: Stack, statsd: StatsdSink) -> None:
    client, uaid, channel_id, endpoint = subscribe(stack)
    path = f"/push/{uaid}"
    body = push_body(channel_id, "slow")
    keys = router_keys(stack.environ["AUTOPUSH_CRYPTO_KEYS"])
    busy_before = statsd.count(REJECTED, reason="busy")
    held: list[socket.socket] = []
    try:
        # Validly signed requests whose bodies stall half way: each holds a slot.
        for _ in range(MAX_REQUESTS):
            sock = socket.create_connection(("127.0.0.1", stack.router_port))
            sock.sendall(raw_head("PUT", path, dict(keys.sign("PUT", path, body)), len(body)) + body[:10])
            held.append(sock)
        time.sleep(0.5)
        extra_times = []
        for _ in range(3):
            with socket.create_connection(("127.0.0.1", stack.router_port)) as sock:
                started = time.monotonic()
                sock.sendall(raw_head("PUT", path, dict(keys.sign("PUT", path, body)), len(body)) + body[:10])
                assert read_status(sock) == 503
                extra_times.append(time.monotonic() - started)
        # The endpoint meets the same 503 and stores the message instead.
        assert push_via(stack.endpoint_url, endpoint).status_code == 201
        assert len(stored_versions(stack, uaid)) == 1
        assert statsd.wait_count(REJECTED, busy_before + 5, reason="busy") == busy_before + 5  # 3 + PUT /push, /notif
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.3)  # the held requests end as their clients go away, freeing the slots
    signed = dict(keys.sign("PUT", path, push_body(channel_id, "after")))
    response = requests.put(f"http://127.0.0.1:{stack.router_port}{path}", data=push_body(channel_id, "after"),
                            headers=signed, timeout=5)
    assert response.status_code == 200
    assert client.receive()["version"] == "after"
    assert max(extra_times) < 0.5
    report(f"router concurrency cap {MAX_REQUESTS}: {MAX_REQUESTS} stalled requests held, 3 more → 503 in at most "
           f"{max(extra_times) * 1000:.0f} ms; endpoint stored the push (201); slots free again afterwards")


# ---- 3. TLS ------------------------------------------------------------------------------


def test_router_tls_delivers_directly_and_an_unverified_router_means_storage(
    dynalite, tmp_path: Path, statsd: StatsdSink
) -> None:
    pki = TestPki(tmp_path / "pki")  # a throw-away CA and a certificate for 127.0.0.1 it signed
    ca, cert, key = pki.ca_file, pki.server_cert_file, pki.server_key_file
    tls = {"AUTOPUSH_ROUTER_SSL_KEY": str(key), "AUTOPUSH_ROUTER_SSL_CERT": str(cert), "AUTOPUSH_ROUTER_CA": str(ca)}
    with Stack(dynalite.url, tmp_path, connection_workers=2, **statsd.settings(), **tls) as stack:
        client, uaid, channel_id, endpoint = subscribe(stack)
        node_id = stack.storage.get_user(uaid).node_id
        assert node_id in {f"https://127.0.0.1:{stack.router_port + slot}" for slot in range(2)}
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{stack.router_port}/health", timeout=5)  # no plain HTTP left
        assert requests.get(f"{node_id}/health", verify=str(ca), timeout=5).status_code == 200

        direct_before = statsd.count(DIRECT_STATUS, status="200")
        assert push_via(stack.endpoint_url, endpoint).status_code == 201
        notification = client.receive()
        assert notification["channelID"] == channel_id
        client.ack(notification)
        assert statsd.wait_count(DIRECT_STATUS, direct_before + 1, status="200") == direct_before + 1
        assert stored_versions(stack, uaid) == []  # storage never written: it went over TLS
        client = displaced_by_the_other_worker(stack, client, uaid, node_id)

        connect_errors = statsd.count("autoendpoint.error.node.connect")
        untrusting = stack.another_endpoint("endpoint-no-ca", AUTOPUSH_ROUTER_CA="")
        assert push_via(untrusting.url, endpoint).status_code == 201
        assert statsd.wait_count("autoendpoint.error.node.connect", connect_errors + 1) >= connect_errors + 1
        assert len(stored_versions(stack, uaid)) == 1  # not verified → stored, not lost
        assert_quiet_and_connected(client)
        report("router TLS: direct delivery over https verified by AUTOPUSH_ROUTER_CA (0 stored); "
               "duplicate closed by a worker's DELETE /notif over https; "
               "endpoint without the CA → handshake refused, 201, 1 stored")


def displaced_by_the_other_worker(stack: Stack, original: PushClient, uaid: str, node_id: str) -> PushClient:
    """Reconnect ``uaid`` until it lands on the other worker, whose ``DELETE /notif`` must close the original."""
    for _ in range(30):
        newer = stack.client()
        assert newer.hello(uaid)["uaid"] == uaid
        if stack.storage.get_user(uaid).node_id != node_id:
            assert original.close_code() == 1000  # closed by the other worker's signed request over TLS
            return newer
        assert original.close_code() == 1000  # a duplicate on the same worker
        original = newer
    raise AssertionError("the reconnections never reached the other worker")


# ---- 4. bind address ----------------------------------------------------------------------

OTHER_LOCAL_ADDRESS = "127.0.0.2"


def reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def test_router_bind_keeps_the_port_off_other_addresses(stack: Stack) -> None:
    """``AUTOPUSH_ROUTER_BIND=127.0.0.1``: not reachable on another local address.

    The other address is 127.0.0.2, which reaches any wildcard (0.0.0.0)
    listener on Linux; tests here only ever connect to loopback addresses.
    """
    with socket.socket() as wildcard:
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen(1)
        if not reachable(OTHER_LOCAL_ADDRESS, wildcard.getsockname()[1]):
            pytest.skip(f"{OTHER_LOCAL_ADDRESS} does not reach wildcard listeners on this machine")
    assert reachable("127.0.0.1", stack.router_port)
    assert not reachable(OTHER_LOCAL_ADDRESS, stack.router_port)
    report(f"router bind 127.0.0.1: reachable on 127.0.0.1, refused on {OTHER_LOCAL_ADDRESS}")


# ---- 5. the switch for tools ------------------------------------------------------------


@pytest.mark.parametrize(("router_auth", "unsigned_status"), [("true", 401), ("false", 404)])
def test_router_auth_false_lets_tools_call_the_router_unsigned(make_settings, router_auth: str,
                                                               unsigned_status: int) -> None:
    """``AUTOPUSH_ROUTER_AUTH=false`` skips verification (404: that UAID is not connected here)."""
    settings = make_settings("connection", AUTOPUSH_ROUTER_AUTH=router_auth)
    router = create_connection_app(settings).node_api_app.test_client()
    path = f"/notif/{uuid.uuid4().hex}"
    assert router.put(path).status_code == unsigned_status
    signed = dict(router_keys(",".join(settings.crypto_keys)).sign("PUT", path))
    assert router.put(path, headers=signed).status_code == 404
    assert router.get("/health").status_code == 200  # health stays open either way
