"""``AUTOPUSH_DURABLE_DIRECT``: an accepted message survives the loss of any one process.

Real gunicorn nodes on the real dynalite. By default a direct notification
lives only in the memory of the connection worker holding its browser until
the browser acks it: a SIGKILL of that worker (or of its host) loses what
was sent but not acked, although the endpoint answered 201. In durable mode
the endpoint stores every message with a TTL before handing it to the node
(flagged ``stored``); the node deletes it when the browser acks, and a
browser that reconnects after the crash drains it from storage under the
same version. TTL-0 messages are never stored (delivered now or dropped).
Run with ``-s`` for the figures.
"""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.e2e.faults_support import children, pid_listening_on, port_of, report, wait_until
from tests.support.delivery import location_id, notifications, payload, point_at, push, stored, subscribe
from tests.support.fake_node import FakeNode
from tests.support.postgres import STORES
from tests.support.stack import Stack, start_stack

pytestmark = pytest.mark.timeout(120)

DURABLE = {"AUTOPUSH_DURABLE_DIRECT": "true"}


@pytest.fixture(scope="module", params=STORES)
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "durable", store=request.param, **DURABLE)


def offered_pushes(node: FakeNode) -> list[dict]:
    return [json.loads(body) for body, (_, path) in zip(node.bodies, node.requests) if path.startswith("/push")]


@pytest.mark.parametrize(("answer", "paths"), [(200, ["/push"]), (404, ["/push", "/notif"])])
def test_message_is_stored_before_the_node_is_offered_it(
        stack: Stack, fake_node: FakeNode, answer: int, paths: list[str]) -> None:
    client, uaid, endpoint = subscribe(stack)
    client.close()
    point_at(stack, uaid, fake_node.url)
    fake_node.answers["/push"] = answer
    seen_stored: list[list[str]] = []
    fake_node.before_answer = lambda path: seen_stored.append([m.version for m in stored(stack, uaid)])
    version = location_id(push(endpoint, b"durable"))
    [offered] = offered_pushes(fake_node)
    assert offered["stored"] is True and offered["version"] == version
    assert seen_stored[0] == [version]  # already in the table while the node was deciding
    assert [m.version for m in stored(stack, uaid)] == [version]  # one copy, whatever the node said
    assert [path.split("/", 2)[1] for _, path in fake_node.requests] == [p.strip("/") for p in paths]
    report(f"durable-offer(node answers {answer}): stored_copies=1 node_requests={len(fake_node.requests)}")


@pytest.mark.parametrize("answer", [200, 404])
def test_ttl_zero_is_never_stored(stack: Stack, fake_node: FakeNode, answer: int) -> None:
    client, uaid, endpoint = subscribe(stack)
    client.close()
    point_at(stack, uaid, fake_node.url)
    fake_node.answers["/push"] = answer
    location_id(push(endpoint, b"now or never", ttl=0))
    [offered] = offered_pushes(fake_node)
    assert "stored" not in offered
    assert stored(stack, uaid) == []


def test_sigkill_of_the_worker_holding_an_unacked_message_loses_nothing(dynalite, tmp_path: Path) -> None:
    with Stack(dynalite.url, tmp_path, connection_workers=2, **DURABLE) as stack:
        client, uaid, endpoint = subscribe(stack)
        acked = location_id(push(endpoint, b"acked"))
        assert [n["version"] for n in notifications(client, wait=0.5)] == [acked]  # and acked
        wait_until(lambda: acked not in {m.version for m in stored(stack, uaid)}, 5, what="the ack's delete")
        unacked = location_id(push(endpoint, b"unacked"))
        assert [n["version"] for n in notifications(client, wait=0.5, ack=False)] == [unacked]
        assert [m.version for m in stored(stack, uaid)] == [unacked]
        node_id = stack.storage.get_user(uaid).node_id
        victim = pid_listening_on(port_of(node_id), children(stack.connection.process.pid))
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        assert client.close_code() is None  # the TCP connection died with the worker
        again = stack.client()
        assert again.hello(uaid)["uaid"] == uaid
        received = notifications(again)
        redelivered_after = time.monotonic() - killed_at
        assert [(n["version"], payload(n)) for n in received] == [(unacked, b"unacked")]
        wait_until(lambda: stored(stack, uaid) == [], 5, what="the ack's delete after the redelivery")
        report(f"durable-sigkill: lost=0 redelivered_same_version=1 seconds_to_redelivery={redelivered_after:.2f} "
               f"stored_left_after_acks=0")


def test_durable_mode_off_loses_the_unacked_message_to_a_sigkill(dynalite, tmp_path: Path) -> None:
    """The loss the mode exists for, shown with the mode off (the default)."""
    with Stack(dynalite.url, tmp_path, connection_workers=2) as stack:
        client, uaid, endpoint = subscribe(stack)
        unacked = location_id(push(endpoint, b"unacked"))
        assert [n["version"] for n in notifications(client, wait=0.5, ack=False)] == [unacked]
        assert stored(stack, uaid) == []  # only the worker's memory holds it
        node_id = stack.storage.get_user(uaid).node_id
        os.kill(pid_listening_on(port_of(node_id), children(stack.connection.process.pid)), signal.SIGKILL)
        assert client.close_code() is None
        again = stack.client()
        assert again.hello(uaid)["uaid"] == uaid
        assert notifications(again) == []
        report("direct-sigkill: lost=1 (the documented loss of the default mode)")
