"""A 201 names one message, and the browser sees it under that one version.

Real gunicorn nodes on the real dynalite. The endpoint used to stamp a
message again when it stored it after a failed ``PUT /push``; a node that
had taken the message but answered too late (paused, overloaded, stopping)
still delivered the original, so the browser got the payload twice under two
versions, and the 201's ``Location`` named only one of them. Now a message
is stamped once when accepted, sent to the node with its stamp, and stored
under the same version whatever the node did; a keep-alive retry repeats
the request byte for byte. Each test mounts one way for the answer to go
missing and counts versions per payload. Run with ``-s`` for the figures.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.faults_support import (
    Pusher,
    StreamClient,
    children,
    pid_listening_on,
    port_of,
    report,
    settle,
    tally,
)
from tests.support.delivery import location_id, notifications, payload, point_at, push, stored, subscribe
from tests.support.fake_node import FakeNode
from tests.support.http_relay import HttpRelay
from tests.support.postgres import STORES
from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.timeout(150)

NODE_TIMEOUT = 1.0  # AUTOPUSH_NODE_REQUEST_TIMEOUT of these stacks
LATE = NODE_TIMEOUT + 1.0  # how long the scripted node takes to answer


@pytest.fixture(scope="module", params=STORES)
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "accepted-once", store=request.param, AUTOPUSH_NODE_REQUEST_TIMEOUT=str(NODE_TIMEOUT))


@pytest.fixture
def relay(stack: Stack) -> Iterator[HttpRelay]:
    running = HttpRelay(stack.router_port)
    yield running
    running.stop()


# ---- a node that takes the message and answers too late ----------------------------------


def test_push_answered_too_late_is_stored_under_the_version_the_node_got(
        stack: Stack, fake_node: FakeNode) -> None:
    client, uaid, endpoint = subscribe(stack)
    client.close()
    point_at(stack, uaid, fake_node.url)
    fake_node.before_answer = lambda path: time.sleep(LATE) if path.startswith("/push") else None
    started = time.monotonic()
    response = push(endpoint, b"late")
    elapsed = time.monotonic() - started
    version = location_id(response)
    [offered] = [json.loads(body) for body, (_, path) in zip(fake_node.bodies, fake_node.requests)
                 if path.startswith("/push")]
    [message] = stored(stack, uaid)
    assert offered["version"] == message.version == version
    assert offered["sortkey_timestamp"] == message.sortkey_timestamp
    assert "stored" not in offered  # direct mode: the node may store it itself if its browser leaves
    assert NODE_TIMEOUT <= elapsed < NODE_TIMEOUT + 2
    report(f"late-node: versions=1 post_seconds={elapsed:.2f} node_timeout={NODE_TIMEOUT}")


def test_paused_connection_worker_delivers_the_version_that_was_stored(stack: Stack) -> None:
    """SIGSTOP the worker holding the browser: the endpoint gives up and stores; SIGCONT: it delivers."""
    client, uaid, endpoint = subscribe(stack)
    warm = push(endpoint, b"warm")  # a pooled connection to the worker now exists
    assert [n["version"] for n in notifications(client, wait=0.5)] == [location_id(warm)]
    [worker] = children(stack.connection.process.pid)
    os.kill(worker, signal.SIGSTOP)
    try:
        started = time.monotonic()
        response = push(endpoint, b"paused")
        elapsed = time.monotonic() - started
    finally:
        os.kill(worker, signal.SIGCONT)
    version = location_id(response)
    assert [m.version for m in stored(stack, uaid)] == [version]
    received = notifications(client)  # the resumed worker delivers what it had taken
    client.close()
    again = stack.client()  # and a fresh connection drains what was stored
    assert again.hello(uaid)["uaid"] == uaid
    received += notifications(again)
    versions_of_payload = {n["version"] for n in received if payload(n) == b"paused"}
    assert versions_of_payload == {version}, (version, versions_of_payload)
    report(f"paused-worker: versions=1 receipts={len(received)} post_seconds={elapsed:.2f}")


# ---- keep-alive retries ---------------------------------------------------------------------


def test_stale_pooled_connection_is_retried_once_and_delivers_once(stack: Stack, relay: HttpRelay) -> None:
    client, uaid, endpoint = subscribe(stack)
    point_at(stack, uaid, relay.url)
    first = push(endpoint, b"first")
    assert [n["version"] for n in notifications(client, wait=0.5)] == [location_id(first)]
    relay.cut_all()  # the endpoint's pooled connection is now stale
    second = push(endpoint, b"second")
    received = notifications(client)
    assert [n["version"] for n in received] == [location_id(second)]
    assert relay.connections == 2  # the failed exchange was repeated on one new connection
    assert len(relay.bodies()) == 2
    assert stored(stack, uaid) == []  # delivered directly, nothing stored
    report(f"stale-retry: deliveries={len(received)} relay_connections={relay.connections} stored=0")


def test_answer_lost_after_the_node_took_the_push_repeats_the_same_request(
        stack: Stack, relay: HttpRelay) -> None:
    """The node acts on the request, then the connection closes before its answer
    (what the router's 1-s stop at shutdown can do): the endpoint repeats it."""
    client, uaid, endpoint = subscribe(stack)
    point_at(stack, uaid, relay.url)
    warm = push(endpoint, b"warm")
    assert [n["version"] for n in notifications(client, wait=0.5)] == [location_id(warm)]
    relay.swallow_next_answer()
    response = push(endpoint, b"swallowed")
    version = location_id(response)
    attempts = relay.bodies()[1:]
    assert len(attempts) == 2 and attempts[0] == attempts[1]  # byte for byte, the same version
    assert json.loads(attempts[0])["version"] == version
    received = notifications(client)
    assert [n["version"] for n in received] == [version]  # the node recognised the repeat
    assert stored(stack, uaid) == []
    report(f"answer-lost: node_attempts={len(attempts)} identical=1 deliveries={len(received)}")


# ---- a connection worker stopped while pushes are in flight -----------------------------------


def test_term_of_a_connection_worker_mid_stream_gives_each_payload_one_version(
        dynalite, tmp_path: Path) -> None:
    clients: list[StreamClient] = []
    with Stack(dynalite.url, tmp_path, connection_workers=2) as stack:
        try:
            clients = [StreamClient(stack.ws_url, ack_delay=0.5, reconnect_delay=0.5).subscribe() for _ in range(8)]
            for client in clients:
                client.start()
            pusher = Pusher(clients, 300, interval=0.01, label="term").start()
            pusher.wait_for(100)
            nodes = [stack.storage.get_user(c.uaid).node_id for c in clients]
            victim_node = max(set(nodes), key=nodes.count)
            victim = pid_listening_on(port_of(victim_node), children(stack.connection.process.pid))
            os.kill(victim, signal.SIGTERM)  # graceful: unacked notifications are kept, clients closed 1012
            pusher.join()
            settle(clients)
            assert pusher.unexpected == [], pusher.unexpected[:5]
            versions: dict[bytes, set[str]] = defaultdict(set)
            for client in clients:
                with client.lock:
                    for version, data in client.data.items():
                        versions[payload({"data": data})].add(version)
            doubled = {body: found for body, found in versions.items() if len(found) > 1}
            result = tally(pusher, clients)
            assert doubled == {}, list(doubled.items())[:3]
            assert result.lost == 0, result.lost_versions[:5]
            assert result.extras == 0
            report(result.line("term-worker", payloads=len(versions), payloads_with_two_versions=len(doubled),
                               clients_on_victim=nodes.count(victim_node),
                               closes_1012=sum(c.close_codes.count(1012) for c in clients)))
        finally:
            for client in clients:
                client.stop()
