"""The pooled HTTP client of the push path against real TCP peers that misbehave on purpose."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest

from autopush_flask.http_client import ConnectionPool, HTTPFailure, HTTPTimeout, Origin, PoolManager
from autopush_flask.proxies import Proxy
from tests.support.fake_apns import TestPki
from tests.support.processes import free_port
from tests.support.scripted_http import Answer, ScriptedServer, ipv6_loopback, ok


needs_ipv6 = pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    yield running
    running.stop()


def pool_for(server: ScriptedServer, timeout: float = 2.0, concurrency: int = 10) -> ConnectionPool:
    return ConnectionPool(server.origin(), connect_timeout=1.0, timeout=timeout, concurrency=concurrency)


def test_requests_share_one_connection_and_carry_host_and_length(server: ScriptedServer) -> None:
    server.script(ok(b'{"a":1}'), ok(b"second"))
    pool = pool_for(server)
    first = pool.request("POST", "/x", [("X-Test", "1")], b"payload")
    second = pool.request("PUT", "/y", [], b"")
    assert (first.status, first.body, second.body) == (200, b'{"a":1}', b"second")
    assert first.header("content-length") == first.header("Content-Length") == "7"
    assert server.connections == 1
    head = server.received[0].head.decode()
    assert head.startswith("POST /x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}\r\n" in head
    assert "Content-Length: 7" in head and "X-Test: 1" in head
    assert server.received[0].body == b"payload"
    assert "Content-Length: 0" in server.received[1].head.decode()


def test_a_repeated_answer_header_reads_as_absent(server: ScriptedServer) -> None:
    """``x-amz-crc32`` twice would be ambiguous: neither value is checked against."""
    server.script(ok(b"{}", "X-Amz-Crc32: 1", "x-amz-crc32: 2", "X-Once: yes"))
    answer = pool_for(server).request("POST", "/", [], b"{}")
    assert answer.header("X-Amz-Crc32") is None
    assert answer.header("x-once") == "yes"


def test_a_chunked_answer_is_reassembled(server: ScriptedServer) -> None:
    server.script(
        Answer(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\nWiki\r\n6\r\npedia \r\n0\r\nX-Trailer: t\r\n\r\n"),
        ok(b"next"),
    )
    pool = pool_for(server)
    answer = pool.request("GET", "/", [])
    assert (answer.status, answer.body) == (201, b"Wikipedia ")
    assert pool.request("GET", "/", []).body == b"next"
    assert server.connections == 1


def test_connection_close_is_honoured(server: ScriptedServer) -> None:
    server.script(ok(b"one", "Connection: close"), ok(b"two"))
    pool = pool_for(server)
    assert pool.request("GET", "/", []).body == b"one"
    assert pool.request("GET", "/", []).body == b"two"
    assert server.connections == 2


def test_an_answer_without_length_is_read_to_the_close(server: ScriptedServer) -> None:
    server.script(Answer(b"HTTP/1.0 200 OK\r\n\r\nuntil the end", close=True), ok(b"after"))
    pool = pool_for(server)
    assert pool.request("GET", "/", []).body == b"until the end"
    assert pool.request("GET", "/", []).body == b"after"
    assert server.connections == 2


def test_informational_answers_are_skipped(server: ScriptedServer) -> None:
    server.script(Answer(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"))
    assert pool_for(server).request("PUT", "/", [], b"x").status == 204


@pytest.mark.parametrize("method", ["PUT", "POST"])
def test_a_pooled_connection_closed_while_idle_is_replaced_before_sending(server: ScriptedServer, method: str) -> None:
    server.script(ok(b"one"), ok(b"two"))
    pool = pool_for(server)
    assert pool.request(method, "/push/a", [], b"1").body == b"one"
    server.close_idle()
    time.sleep(0.05)
    assert pool.request(method, "/push/b", [], b"2").body == b"two"
    assert server.connections == 2
    assert [r.body for r in server.received] == [b"1", b"2"]  # sent once each


def test_a_post_whose_connection_closes_without_answer_is_not_repeated(server: ScriptedServer) -> None:
    """DynamoDB's calls: the storage retry policy decides (docs/architecture.md#storage-errors)."""
    server.script(Answer(close=True))
    with pytest.raises(HTTPFailure, match="closed"):
        pool_for(server).request("POST", "/", [], b"1")
    assert len(server.received) == 1


def test_a_put_whose_connection_closes_without_answer_is_repeated_a_bounded_number_of_times(
    server: ScriptedServer,
) -> None:
    """``PUT /push``: the node recognises the version; a peer that always hangs up gets ``MAX_REPEATS`` + 1 copies."""
    server.script(Answer(close=True), ok(b"took it"))
    assert pool_for(server, concurrency=1).request("PUT", "/push/a", [], b"v1").body == b"took it"
    assert [r.body for r in server.received] == [b"v1", b"v1"]
    server.script(*[Answer(close=True)] * 5)
    with pytest.raises(HTTPFailure):
        pool_for(server, concurrency=1).request("PUT", "/push/b", [], b"v2")
    assert [r.body for r in server.received[2:]] == [b"v2", b"v2", b"v2"]


def test_an_answer_cut_short_is_a_failure_not_a_retry(server: ScriptedServer) -> None:
    server.script(ok(b"one"), Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True))
    pool = pool_for(server)
    pool.request("GET", "/", [])
    with pytest.raises(HTTPFailure):
        pool.request("GET", "/", [])
    assert len(server.received) == 2


def test_a_silent_peer_times_out_within_the_deadline_and_the_pool_recovers(server: ScriptedServer) -> None:
    server.script(Answer(ok().raw, delay=3.0), ok(b"later"))
    pool = pool_for(server, timeout=0.3, concurrency=1)
    started = time.monotonic()
    with pytest.raises(HTTPTimeout):
        pool.request("GET", "/", [])
    assert time.monotonic() - started < 1.5
    assert pool.request("GET", "/", []).body == b"later"  # the one connection was not lost


def test_a_slow_drip_answer_is_bounded_by_the_whole_deadline(server: ScriptedServer) -> None:
    """Each read is quick, the answer is not: the deadline covers the exchange, not each read."""
    listener = socket.create_server(("127.0.0.1", 0))

    def drip() -> None:
        sock, _ = listener.accept()
        with contextlib.suppress(OSError), sock:  # the client hangs up at its deadline
            sock.recv(65536)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello":
                sock.sendall(bytes([byte]))
                time.sleep(0.1)

    threading.Thread(target=drip, daemon=True).start()
    pool = ConnectionPool(f"http://127.0.0.1:{listener.getsockname()[1]}", 1.0, 0.5)
    started = time.monotonic()
    with pytest.raises(HTTPTimeout):
        pool.request("GET", "/", [])
    assert time.monotonic() - started < 1.5
    listener.close()


def test_requests_beyond_the_concurrency_wait_for_a_connection(server: ScriptedServer) -> None:
    server.script(Answer(ok(b"first").raw, delay=0.2), ok(b"second"))
    pool = pool_for(server, concurrency=1)
    first = gevent.spawn(pool.request, "PUT", "/a", [], b"")
    second = gevent.spawn(pool.request, "PUT", "/b", [], b"")
    gevent.joinall([first, second], timeout=3)
    assert (first.value.body, second.value.body) == (b"first", b"second")
    assert server.connections == 1


def test_a_closed_port_is_a_failure() -> None:
    pool = ConnectionPool(f"http://127.0.0.1:{free_port()}", connect_timeout=1.0, timeout=1.0)
    with pytest.raises(HTTPFailure) as raised:
        pool.request("GET", "/", [])
    assert not isinstance(raised.value, HTTPTimeout)


@pytest.mark.parametrize(
    "raw",
    [
        b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
        b"HTTP/1.1 abc Nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000,
    ],
    ids=["not-http", "bad-status", "bad-length", "bad-chunk", "head-cut-short"],
)
def test_garbage_answers_are_failures(server: ScriptedServer, raw: bytes) -> None:
    server.script(Answer(raw, close=True))
    with pytest.raises(HTTPFailure):
        pool_for(server).request("GET", "/", [])


def test_a_header_value_carrying_a_line_break_is_refused_unsent(server: ScriptedServer) -> None:
    with pytest.raises(HTTPFailure, match="invalid value"):
        pool_for(server).request("PUT", "/", [("X-Sender", "a\r\nX-Injected: 1")], b"")
    assert server.received == []


@pytest.mark.parametrize("origin", ["ftp://host", "http://", "http://host:99999", "not a url", "http://[::1"])
def test_unusable_origins_are_failures(origin: str) -> None:
    with pytest.raises(HTTPFailure, match="not an http"):
        ConnectionPool(origin, connect_timeout=1.0, timeout=1.0)


@pytest.mark.parametrize(
    ("origin", "host", "port", "host_header"),
    [
        ("http://[::1]:8081", "::1", 8081, "[::1]:8081"),
        ("https://[2001:DB8::1]", "2001:db8::1", 443, "[2001:db8::1]"),
        ("http://[2001:db8::1]:80", "2001:db8::1", 80, "[2001:db8::1]"),
        ("https://Node-1.Example:8443", "node-1.example", 8443, "node-1.example:8443"),
        ("https://dynamodb.bücher.example", "dynamodb.xn--bcher-kva.example", 443, "dynamodb.xn--bcher-kva.example"),
        ("http://10.0.0.7:443", "10.0.0.7", 443, "10.0.0.7:443"),
    ],
)
def test_origins_give_the_host_connected_to_and_the_host_header(
    origin: str, host: str, port: int, host_header: str
) -> None:
    parsed = Origin.parse(origin)
    assert (parsed.host, parsed.port, parsed.host_header) == (host, port, host_header)


def test_pool_manager_routes_by_origin_and_bounds_its_pools() -> None:
    servers = [ScriptedServer() for _ in range(3)]
    try:
        manager = PoolManager(connect_timeout=1.0, timeout=2.0, max_pools=2)
        for index, running in enumerate(servers):
            running.script(ok(b"%d" % index), ok(b"again"))
            answer = manager.request("PUT", f"{running.origin()}/push/u{index}", [], b"")
            assert answer.body == b"%d" % index
            assert running.received[0].head.startswith(f"PUT /push/u{index} HTTP/1.1".encode())
        assert manager.request("PUT", f"{servers[2].origin()}/notif/x", [], b"").body == b"again"
        assert servers[2].connections == 1
        assert len(manager._pools) == 2
    finally:
        for running in servers:
            running.stop()


@needs_ipv6
def test_an_ipv6_literal_origin_is_reached_with_a_bracketed_host_header() -> None:
    running = ScriptedServer(host="::1")
    try:
        running.script(ok(b"v6"), ok(b"again"))
        manager = PoolManager(connect_timeout=1.0, timeout=2.0)
        assert manager.request("PUT", f"{running.origin()}/push/abc", [], b"{}").body == b"v6"
        assert manager.request("PUT", f"http://[::1]:{running.port}/notif/abc", [], b"").body == b"again"
        head = running.received[0].head.decode()
        assert head.startswith("PUT /push/abc HTTP/1.1\r\n")
        assert f"Host: [::1]:{running.port}\r\n" in head
        assert running.connections == 1
    finally:
        running.stop()


def test_https_verifies_the_peer_against_the_given_ca(tmp_path: Path) -> None:
    import ssl

    pki = TestPki(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert_file, pki.server_key_file)
    running = ScriptedServer(tls=tls)
    try:
        running.script(ok(b"secure"))
        pool = ConnectionPool(running.origin("https"), 1.0, 2.0, ca_file=str(pki.ca_file))
        assert pool.request("GET", "/", []).body == b"secure"
        untrusting = ConnectionPool(running.origin("https"), 1.0, 2.0)  # the system trust store
        with pytest.raises(HTTPFailure, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.request("GET", "/", [])
    finally:
        running.stop()


def test_an_http_origin_through_a_proxy_sends_the_absolute_uri(server: ScriptedServer) -> None:
    """The proxy is a scripted peer here: it sees the request as a forward proxy does."""
    server.script(ok(b"proxied"))
    pool = ConnectionPool("http://dynamodb.internal:8000", 1.0, 2.0, proxy=Proxy("127.0.0.1", server.port, "u", "p w"))
    assert pool.request("POST", "/", [("X-Amz-Target", "T")], b"{}").body == b"proxied"
    head = server.received[0].head.decode()
    assert head.startswith("POST http://dynamodb.internal:8000/ HTTP/1.1\r\n")
    assert "Host: dynamodb.internal:8000\r\n" in head
    assert "Proxy-Authorization: Basic dTpwIHc=\r\n" in head  # base64("u:p w")


def test_one_pool_serves_several_threads(server: ScriptedServer) -> None:
    """gevent sockets belong to one thread's hub: a storage client shared with a thread (tests, tools) still works."""
    server.script(ok(b"main"), ok(b"thread"), ok(b"main again"))
    pool = pool_for(server)
    assert pool.request("GET", "/", []).body == b"main"
    answers: list[bytes] = []
    worker = threading.Thread(target=lambda: answers.append(pool.request("GET", "/", []).body))
    worker.start()
    worker.join(5)
    assert answers == [b"thread"]
    assert pool.request("GET", "/", []).body == b"main again"
    assert server.connections == 2  # one per thread, each kept alive


def test_pooled_connections_above_select_range_are_reused(server: ScriptedServer) -> None:
    """A busy connection worker holds thousands of sockets: a pooled connection's
    file descriptor is past what ``select`` takes (1024), and reusing it must work."""
    server.script(ok(b"one"), ok(b"two"), ok(b"three"))
    filler = [socket.socket() for _ in range(1100)]
    try:
        pool = pool_for(server)
        assert pool.request("PUT", "/a", [], b"1").body == b"one"
        assert pool.request("PUT", "/b", [], b"2").body == b"two"
        server.close_idle()
        time.sleep(0.05)
        assert pool.request("PUT", "/c", [], b"3").body == b"three"  # the closed one noticed, not sent on
    finally:
        for sock in filler:
            sock.close()
    assert server.connections == 2
    assert [r.body for r in server.received] == [b"1", b"2", b"3"]
