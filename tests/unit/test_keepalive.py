"""The keep-alive HTTP client against a real TCP peer that misbehaves on purpose."""

from __future__ import annotations

import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from autopush_flask.keepalive import ConnectionPool, HTTPFailure, HTTPTimeout, PoolManager
from tests.support.fake_apns import TestPki
from tests.support.processes import free_port
from tests.support.scripted_http import Answer, ScriptedServer, ok


@pytest.fixture
def server() -> Iterator[ScriptedServer]:
    running = ScriptedServer()
    yield running
    running.stop()


def pool_for(server: ScriptedServer, timeout: float = 2.0) -> ConnectionPool:
    return ConnectionPool(server.origin(), connect_timeout=1.0, timeout=timeout)


def test_requests_share_one_connection_and_carry_host_and_length(server: ScriptedServer) -> None:
    server.script(ok(b'{"a":1}'), ok(b"second"))
    pool = pool_for(server)
    first = pool.request("POST", "/x", [("X-Test", "1")], b"payload")
    second = pool.request("PUT", "/y", [], b"")
    assert (first.status, first.body, second.body) == (200, b'{"a":1}', b"second")
    assert first.headers["content-length"] == "7"
    assert server.connections == 1
    head = server.received[0].head.decode()
    assert head.startswith("POST /x HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{server.port}" in head
    assert "Content-Length: 7" in head and "X-Test: 1" in head
    assert server.received[0].body == b"payload"
    assert "Content-Length: 0" in server.received[1].head.decode()


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


def test_a_pooled_connection_closed_while_idle_is_replaced_once(server: ScriptedServer) -> None:
    server.script(ok(b"one"), ok(b"two"))
    pool = pool_for(server)
    assert pool.request("PUT", "/push/a", [], b"1").body == b"one"
    server.close_idle()
    time.sleep(0.05)
    assert pool.request("PUT", "/push/b", [], b"2").body == b"two"
    assert server.connections == 2
    assert [r.body for r in server.received] == [b"1", b"2"]  # sent once each


def test_a_new_connection_closed_without_answer_fails_without_retry(server: ScriptedServer) -> None:
    server.script(Answer(close=True))
    with pytest.raises(HTTPFailure, match="closed by peer"):
        pool_for(server).request("PUT", "/push/a", [], b"1")
    assert len(server.received) == 1


def test_an_answer_cut_short_is_a_failure_not_a_retry(server: ScriptedServer) -> None:
    server.script(ok(b"one"), Answer(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", close=True))
    pool = pool_for(server)
    pool.request("GET", "/", [])
    with pytest.raises(HTTPFailure):
        pool.request("GET", "/", [])
    assert len(server.received) == 2


def test_a_silent_peer_times_out_within_the_deadline(server: ScriptedServer) -> None:
    server.script(Answer(ok().raw, delay=3.0))
    started = time.monotonic()
    with pytest.raises(HTTPTimeout):
        pool_for(server, timeout=0.3).request("GET", "/", [])
    assert time.monotonic() - started < 1.5


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
    ids=["not-http", "bad-status", "bad-length", "bad-chunk", "head-too-large"],
)
def test_garbage_answers_are_failures(server: ScriptedServer, raw: bytes) -> None:
    server.script(Answer(raw, close=True))
    with pytest.raises(HTTPFailure):
        pool_for(server).request("GET", "/", [])


@pytest.mark.parametrize("origin", ["ftp://host", "http://", "http://host:99999", "not a url"])
def test_unusable_origins_are_failures(origin: str) -> None:
    with pytest.raises(HTTPFailure, match="not an http"):
        ConnectionPool(origin, connect_timeout=1.0, timeout=1.0)


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


def test_https_verifies_the_peer(tmp_path: Path) -> None:
    pki = TestPki(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(pki.server_cert_file, pki.server_key_file)
    running = ScriptedServer(tls=tls)
    try:
        running.script(ok(b"secure"))
        trusted = ssl.create_default_context(cafile=str(pki.ca_file))
        pool = ConnectionPool(running.origin("https"), 1.0, 2.0, ssl_context=trusted)
        assert pool.request("GET", "/", []).body == b"secure"
        untrusting = ConnectionPool(running.origin("https"), 1.0, 2.0, ssl_context=ssl.create_default_context())
        with pytest.raises(HTTPFailure, match="CERTIFICATE_VERIFY_FAILED"):
            untrusting.request("GET", "/", [])
    finally:
        running.stop()
