"""The endpoint node when connection nodes or the database misbehave (111–117).

Real gunicorn nodes; real HTTP to a scripted node; a real dynalite behind a
throttling proxy, or stopped outright. Nothing answered 201 may be lost.
"""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from autopush_flask.db import User
from tests.support.fake_node import ABORT, FakeNode
from tests.support.processes import LocalDynamoDB, stopping
from tests.support.stack import Stack, start_stack
from tests.support.throttle_proxy import ThrottleProxy


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "faults")


def offline_subscription(stack: Stack) -> tuple[str, str, str]:
    """A registered channel whose browser went away: (uaid, channel_id, endpoint)."""
    client = stack.client()
    uaid = client.hello()["uaid"]
    channel_id = str(uuid.uuid4())
    endpoint = client.register(channel_id)["pushEndpoint"]
    client.close()
    time.sleep(0.2)
    return uaid, channel_id, endpoint


def point_at(stack: Stack, uaid: str, node_url: str) -> int:
    """Make the record say the browser is connected to ``node_url``; returns connected_at."""
    connected_at = stack.storage.get_user(uaid).connected_at + 1
    assert stack.storage.claim_user(User(uaid=uaid), node_url, connected_at)[0]
    return connected_at


def stored_versions(stack: Stack, uaid: str) -> list[str]:
    return [m.version for m in stack.storage.fetch_timestamp_messages(User(uaid=uaid), None)[1]]


def push(endpoint: str) -> requests.Response:
    return requests.post(endpoint, headers={"TTL": "60"}, timeout=10)


def location_id(response: requests.Response) -> str:
    return response.headers["Location"].rsplit("/m/", 1)[1]


def test_112_115_busy_node_means_store_and_notify(stack: Stack, fake_node: FakeNode) -> None:
    uaid, _, endpoint = offline_subscription(stack)
    point_at(stack, uaid, fake_node.url)
    fake_node.answers["/push"] = 503
    response = push(endpoint)
    assert response.status_code == 201
    assert stored_versions(stack, uaid) == [location_id(response)]
    assert fake_node.paths() == [f"/push/{uaid}", f"/notif/{uaid}"]
    assert stack.storage.get_user(uaid).node_id == fake_node.url


def test_113_dropped_connection_forgets_the_node(stack: Stack, fake_node: FakeNode) -> None:
    uaid, _, endpoint = offline_subscription(stack)
    point_at(stack, uaid, fake_node.url)
    fake_node.answers["/push"] = ABORT
    response = push(endpoint)
    assert response.status_code == 201
    assert stack.storage.get_user(uaid).node_id is None
    assert stored_versions(stack, uaid) == [location_id(response)]


def test_114_node_id_kept_when_the_client_reconnected_meanwhile(stack: Stack, fake_node: FakeNode) -> None:
    uaid, _, endpoint = offline_subscription(stack)
    connected_at = point_at(stack, uaid, fake_node.url)

    def reconnect(path: str) -> None:
        if path.startswith("/push"):
            stack.storage.claim_user(User(uaid=uaid), fake_node.url, connected_at + 5)

    fake_node.before_answer = reconnect
    fake_node.answers["/push"] = ABORT
    response = push(endpoint)
    assert response.status_code == 201
    user = stack.storage.get_user(uaid)
    assert (user.node_id, user.connected_at) == (fake_node.url, connected_at + 5)
    assert stored_versions(stack, uaid) == [location_id(response)]
    assert fake_node.paths()[-1] == f"/notif/{uaid}"  # the re-read found the new connection


def test_116_record_deleted_between_store_and_reread(stack: Stack, fake_node: FakeNode) -> None:
    uaid, _, endpoint = offline_subscription(stack)
    point_at(stack, uaid, fake_node.url)
    fake_node.before_answer = lambda path: stack.storage.drop_user(uaid)
    fake_node.answers["/push"] = 503
    response = push(endpoint)
    assert response.status_code == 410
    assert response.json()["errno"] == 105


def test_117_throttled_store_is_503_201_and_nothing_accepted_is_lost(dynalite, tmp_path) -> None:
    proxy = ThrottleProxy(dynalite.port).start()
    with stopping(proxy), Stack(proxy.url, tmp_path) as stack:
        uaid, _, endpoint = offline_subscription(stack)
        proxy.throttle_targets = {"PutItem"}
        proxy.throttling = True
        refused = push(endpoint)
        assert refused.status_code == 503
        assert refused.json()["errno"] == 201
        assert refused.headers["Retry-After"] == "120"
        assert stored_versions(stack, uaid) == []
        proxy.throttling = False
        accepted = push(endpoint)
        assert accepted.status_code == 201
        client = stack.client()
        assert client.hello(uaid)["uaid"] == uaid
        assert client.receive()["version"] == location_id(accepted)


def test_throttled_lookup_is_503_201(dynalite, tmp_path) -> None:
    proxy = ThrottleProxy(dynalite.port).start()
    with stopping(proxy), Stack(proxy.url, tmp_path) as stack:
        _, _, endpoint = offline_subscription(stack)
        proxy.throttling = True
        response = push(endpoint)
        assert (response.status_code, response.json()["errno"]) == (503, 201)
        assert requests.delete(f"{stack.endpoint_url}/m/" + "x", timeout=5).status_code == 400


def test_database_down_is_503_202_then_recovers(tmp_path) -> None:
    database = LocalDynamoDB(path=tmp_path / "data")
    database.start()
    with stopping(database), Stack(database.url, tmp_path) as stack:
        uaid, _, endpoint = offline_subscription(stack)
        accepted_before = push(endpoint)
        assert accepted_before.status_code == 201
        database.stop()
        down = push(endpoint)
        assert down.status_code == 503
        assert down.json()["errno"] == 202
        assert down.headers["Retry-After"] == "120"
        health = requests.get(f"{stack.endpoint_url}/health", timeout=10)
        assert health.status_code == 503
        database.start()
        accepted_after = push(endpoint)
        assert accepted_after.status_code == 201
        client = stack.client()
        client.hello(uaid)
        received = {client.receive()["version"] for _ in range(2)}
        assert received == {location_id(accepted_before), location_id(accepted_after)}
