"""A 201 is a promise, over real sockets: the connection node's side.

Real gunicorn connection nodes, real dynalite (stopped, or slowed by a
proxy, where a test needs it), browsers over WebSockets, and ``PUT /push``
/ ``PUT /notif`` signed as an endpoint node signs them. Each test prints one
line with what it measured (``pytest -s`` shows them).
"""

from __future__ import annotations

import signal
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User
from autopush_flask.logging import Redactor, uaid_hash_key
from tests.e2e.faults_support import report
from tests.support.connection_nodes import (
    CRYPTO_KEY,
    ConnectionNodes,
    dynamodb_store,
    router,
    running_connection_nodes,
)
from tests.support.processes import LocalDynamoDB, stopping
from tests.support.delivery import notifications as delivered
from tests.support.push_client import PushClient
from tests.support.statsd_sink import StatsdSink
from tests.support.throttle_proxy import ThrottleProxy

pytestmark = pytest.mark.timeout(120)

KEYS = CryptoKeys([CRYPTO_KEY])
GRACEFUL_TIMEOUT = 10  # GunicornNode starts gunicorn with --graceful-timeout 10


@pytest.fixture
def node(dynalite, table_prefix, tmp_path) -> Iterator[ConnectionNodes]:
    with running_connection_nodes(dynamodb_store(dynalite.url, table_prefix), tmp_path / "connection.log") as running:
        yield running


def message_id(uaid: str, channel_id: str, stamp: int) -> str:
    return MessageId.for_timestamp(uuid.UUID(uaid), uuid.UUID(channel_id), stamp).encode(KEYS)


def stamped_push(uaid: str, channel_id: str, data: str, stamp: int | None = None, **extra) -> dict:
    """A ``PUT /push`` body as an endpoint sends it: stamped once, the version holding the stamp."""
    stamp = stamp or int(time.time() * 1_000_000)
    return {
        "channelID": channel_id, "version": message_id(uaid, channel_id, stamp), "ttl": 600,
        "topic": None, "timestamp": int(time.time()), "data": data, "headers": {"encoding": "aes128gcm"},
        "sortkey_timestamp": stamp, **extra,
    }


def put_push(node_id: str, uaid: str, body: dict) -> int:
    return router.put(f"{node_id}/push/{uaid}", json=body, timeout=5).status_code


def drop_tcp(client: PushClient) -> None:
    """Gone without a close frame, as a browser on a lost network is."""
    client.ws.sock.shutdown(socket.SHUT_RDWR)
    client.ws.sock.close()


def notifications(client: PushClient, quiet: float = 1.5) -> list[dict]:
    """Notifications until nothing comes for ``quiet`` seconds, read and not acknowledged."""
    return delivered(client, quiet, ack=False)


def wait_notifications(client: PushClient, count: int, timeout: float) -> list[dict]:
    """Notifications until ``count`` came, or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    found: list[dict] = []
    while len(found) < count and time.monotonic() < deadline:
        found += notifications(client, quiet=0.5)
    return found


def reconnect(node: ConnectionNodes, uaid: str, timeout: float = 20.0) -> PushClient:
    """Hello with ``uaid`` until it is answered 200 (the database may be coming back)."""
    deadline = time.monotonic() + timeout
    while True:
        client = node.client()
        reply = client.hello(uaid)
        if reply.get("status") == 200:
            assert reply["uaid"] == uaid
            return client
        client.close()
        assert time.monotonic() < deadline, reply
        time.sleep(0.5)


# ---- 1. repeated topic keys when a client drops -------------------------------------


def test_two_unacked_pushes_with_one_topic_then_tcp_dropped(node: ConnectionNodes) -> None:
    client, uaid, channel_id = node.subscribed()
    node_id = node.node_id(uaid)
    older = stamped_push(uaid, channel_id, "b2xkZXI", topic="inbox", version="topic-older")
    newer = stamped_push(uaid, channel_id, "bmV3ZXI", topic="inbox", version="topic-newer")
    for body in (older, newer):
        assert put_push(node_id, uaid, body) == 200
    assert [n["version"] for n in notifications(client)] == ["topic-older", "topic-newer"]  # read, not acked
    drop_tcp(client)
    time.sleep(0.5)
    again = reconnect(node, uaid)
    received = notifications(again)
    assert [(n["version"], n["data"]) for n in received] == [("topic-newer", "bmV3ZXI")]
    again.close()
    report(f"topic-keys-at-drop: pushed=2 unacked=2 redelivered={len(received)} (the newer)")


# ---- 2. the bookmark race --------------------------------------------------------------


def test_a_message_written_after_a_later_stamped_one_was_acked_is_delivered(node: ConnectionNodes) -> None:
    """A is stamped first but written after B, which the browser already drained and acked."""
    client, uaid, channel_id = node.subscribed()
    node_id = node.node_id(uaid)
    stamp_a = int(time.time() * 1_000_000)
    time.sleep(0.05)
    b = Notification(channel_id=channel_id, version="message-b", ttl=600, timestamp=int(time.time()),
                     sortkey_timestamp=int(time.time() * 1_000_000))
    node.storage.save_message(User(uaid=uaid), b)
    assert router.put(f"{node_id}/notif/{uaid}", timeout=5).status_code == 200
    [got_b] = notifications(client)
    client.ack(got_b)
    time.sleep(0.3)  # the ack's delete and the drain's end
    a = Notification(channel_id=channel_id, version="message-a", ttl=600, timestamp=int(time.time()),
                     sortkey_timestamp=stamp_a)
    node.storage.save_message(User(uaid=uaid), a)  # A's write lands late
    assert router.put(f"{node_id}/notif/{uaid}", timeout=5).status_code == 200
    received = [n["version"] for n in notifications(client)]
    bookmark, _ = node.storage.fetch_topic_messages(User(uaid=uaid))
    assert received == ["message-a"], f"bookmark={bookmark} A={stamp_a} B={b.sortkey_timestamp}"
    client.close()
    report(f"bookmark-race: late_by_stamp={(b.sortkey_timestamp - stamp_a) / 1000:.0f}ms delivered=1 "
           f"bookmark_behind_b={bookmark is None or bookmark < b.sortkey_timestamp}")


# ---- 4. the same version twice ------------------------------------------------------------


def test_a_retried_put_push_is_delivered_once(node: ConnectionNodes) -> None:
    client, uaid, channel_id = node.subscribed()
    node_id = node.node_id(uaid)
    body = stamped_push(uaid, channel_id, "b25jZQ")
    assert put_push(node_id, uaid, body) == 200
    assert put_push(node_id, uaid, body) == 200  # the endpoint's retry: accepted, not resent
    [first] = notifications(client, quiet=0.5)
    client.ack(first)
    time.sleep(0.2)
    assert put_push(node_id, uaid, body) == 200  # a retry after the ack
    marker = stamped_push(uaid, channel_id, "bWFya2Vy")
    assert put_push(node_id, uaid, marker) == 200
    later = notifications(client, quiet=1.0)
    assert [n["version"] for n in later] == [marker["version"]]
    client.close()
    report("same-version-twice: puts=3 delivered=1 duplicates=0")


# ---- 7 and 8. a write that failed is retried; no traceback noise -------------------------------


def test_unacked_direct_notifications_survive_a_database_outage_at_disconnect(
        table_prefix, tmp_path: Path) -> None:
    database = LocalDynamoDB(path=tmp_path / "dynamodb")
    database.start()
    sink = StatsdSink()
    with closing(sink), stopping(database), running_connection_nodes(
            dynamodb_store(database.url, table_prefix), tmp_path / "connection.log", **sink.settings()) as node:
        client, uaid, channel_id = node.subscribed()
        node_id = node.node_id(uaid)
        bodies = [stamped_push(uaid, channel_id, f"bm90aWZ{i}") for i in range(3)]
        for body in bodies:
            assert put_push(node_id, uaid, body) == 200
        assert len(notifications(client)) == 3  # read, never acked
        database.stop()
        drop_tcp(client)  # the node cannot store them now
        queued = sink.wait_count("autoconnect.storage.retry.queued", 1, timeout=15, operation="store_direct")
        outage_started = time.monotonic()
        time.sleep(2)
        database.start()
        again = reconnect(node, uaid)
        received = [n["version"] for n in wait_notifications(again, 3, timeout=30)]
        recovered_in = time.monotonic() - outage_started
        again.close()
        assert sorted(received) == sorted(b["version"] for b in bodies)
        assert queued == 1
        assert sink.count("autoconnect.storage.retry.given_up") == 0
        noise = [line for line in node.gunicorn.log().splitlines() if not line.startswith("{")]
        assert not [line for line in noise if "Traceback" in line or "SideGreenlet" in line], noise[:40]
        report(f"outage-at-disconnect: unacked=3 redelivered={len(received)} after {recovered_in:.1f}s "
               f"plain_traceback_lines=0")


def test_failed_storage_calls_are_logged_once_as_json(dynalite, table_prefix, tmp_path: Path) -> None:
    """Each failed storage call used to add a ~35-line plain-text traceback from gevent's hub."""
    proxy = ThrottleProxy(dynalite.port).start()
    with stopping(proxy), running_connection_nodes(
            dynamodb_store(proxy.url, table_prefix), tmp_path / "connection.log") as node:
        client = node.client()
        client.hello()
        proxy.throttling = True
        failures = 5
        for _ in range(failures):
            assert client.register(str(uuid.uuid4())) == {"messageType": "error", "reason": "overloaded", "status": 503}
        proxy.throttling = False
        client.close()
        time.sleep(0.5)
        text = node.gunicorn.log()
        plain = [line for line in text.splitlines() if not line.startswith("{")]
        assert not [line for line in plain if "Traceback" in line or "failed with" in line], plain[:40]
        assert proxy.throttled >= failures
        report(f"storage-error-noise: failed_calls={failures} plain_lines={len(plain)} "
               f"log_bytes={len(text)}")


# ---- 6. a graceful stop while storage is slow -----------------------------------------------------


class SlowBatchWrites(ThrottleProxy):
    """Batch writes pass one at a time, ``delay`` seconds each: a table at its write capacity.

    Once ``closed``, what is still waiting is refused: the node that sent it is gone.
    """

    def __init__(self, upstream_port: int, delay: float) -> None:
        super().__init__(upstream_port)
        self.delay = delay
        self.slow = False
        self.closed = False
        self.written = 0
        self._one_at_a_time = threading.Lock()
        # The node drops its connections when it exits: no traceback per reset socket.
        self._server.handle_error = lambda request, client_address: None

    def _forward(self, headers, body):  # noqa: ANN001, ANN202 - ThrottleProxy's hook
        if self.slow and headers.get("X-Amz-Target", "").endswith(".BatchWriteItem"):
            with self._one_at_a_time:
                time.sleep(self.delay)
                if self.closed:
                    return 500, b'{"__type": "InternalServerError", "message": "gone"}'
                self.written += 1
        return super()._forward(headers, body)


def test_graceful_stop_under_a_slow_store_counts_and_logs_what_it_could_not_store(
        dynalite, table_prefix, tmp_path: Path) -> None:
    proxy = SlowBatchWrites(dynalite.port, delay=1.0).start()
    sink = StatsdSink()
    clients: list[PushClient] = []
    with closing(sink), stopping(proxy), running_connection_nodes(
            dynamodb_store(proxy.url, table_prefix), tmp_path / "connection.log",
            storage_variables={"AUTOPUSH_DDB_ENDPOINT": dynalite.url}, **sink.settings()) as node:
        try:
            pushed: dict[str, str] = {}  # version → uaid
            for _ in range(12):
                client, uaid, channel_id = node.subscribed()
                clients.append(client)
                for index in range(2):
                    body = stamped_push(uaid, channel_id, f"c2xvd{index}")
                    assert put_push(node.node_id(uaid), uaid, body) == 200
                    pushed[body["version"]] = uaid
            idle = [node.client() for _ in range(3)]  # nothing to store
            for client in idle:
                client.hello()
            for client in clients:
                assert len(notifications(client, quiet=0.3)) == 2  # read, not acked
            for client in clients + idle:
                client.ws.settimeout(GRACEFUL_TIMEOUT + 5)
            proxy.slow = True
            node.gunicorn.signal(signal.SIGTERM)
            stopped_at = time.monotonic()
            codes = [c.close_code() for c in clients + idle]
            node.gunicorn.process.wait(timeout=GRACEFUL_TIMEOUT + 5)
            exited_in = time.monotonic() - stopped_at
            proxy.closed = True

            stored = set()
            for uaid in set(pushed.values()):
                stored |= {m.version for m in node.storage.fetch_timestamp_messages(User(uaid=uaid), None, limit=50)[1]}
            given_up_lines = [f for f in node.log_lines() if f["message"] == "storage write given up"]
            logged_ids = [i for f in given_up_lines for i in f["message_ids"]]
            redactor = Redactor(uaid_hash_key(KEYS))
            shortened = {redactor.secret(version): version for version in pushed}
            given_up = {shortened[i] for i in logged_ids}
            metric = sink.wait_count("autoconnect.storage.retry.given_up", len(logged_ids), operation="store_direct",
                                     reason="shutdown")

            assert set(pushed) - stored - given_up == set(), "lost without a word"
            assert codes == [1012] * len(codes)  # every client told to reconnect elsewhere
            assert exited_in < GRACEFUL_TIMEOUT
            assert given_up and stored  # the slow store ran out of time part-way
            assert metric == len(logged_ids) == len(given_up)
            assert all(len(i) < 20 for i in logged_ids)  # message ids shortened in the log
            report(f"slow-store-shutdown: unacked={len(pushed)} stored={len(stored)} given_up_logged={len(given_up)} "
                   f"metric={metric} closes_1012={codes.count(1012)}/{len(codes)} exited_in={exited_in:.1f}s")
        finally:
            for client in clients:
                client.close()
