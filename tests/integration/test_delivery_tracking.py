"""Delivery tracking over real sockets (docs/operations.md#delivery-tracking): a real
endpoint and connection node report each message's milestones, the push-to-ack
latency and a bounded sender tag to a real statsd receiver.
"""

from __future__ import annotations

import uuid

import pytest
import requests

from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.statsd_sink import StatsdSink
from tests.support.webpush import AppServer, Subscription

ENDPOINT = "autoendpoint.delivery.milestone"
CONNECTION = "autoconnect.delivery.milestone"
LATENCY = "autoconnect.delivery.latency"
SENDER_TAGS = 2
STEADY = "mailto:ops@steady.example"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, statsd: StatsdSink) -> Stack:
    return start_stack(request, "tracking", **statsd.settings(), AUTOPUSH_SENDER_TAGS=str(SENDER_TAGS))


@pytest.fixture(scope="module")
def app_server() -> AppServer:
    return AppServer()


def subscribe(stack: Stack) -> tuple[PushClient, Subscription]:
    client = stack.client()
    client.hello()
    reply = client.register(str(uuid.uuid4()))
    assert reply["status"] == 200
    return client, Subscription(reply["pushEndpoint"])


def settle(client: PushClient) -> None:
    """A ping's answer: everything the client sent before was handled."""
    client.send({})
    assert client.receive() == "{}"


def counts(statsd: StatsdSink, name: str, *milestones: str, **tags: str) -> dict[str, int]:
    return {milestone: statsd.count(name, milestone=milestone, **tags) for milestone in milestones}


def test_a_direct_message_is_accepted_delivered_and_acked_with_its_latency(
    stack: Stack, statsd: StatsdSink, app_server: AppServer
) -> None:
    client, subscription = subscribe(stack)
    before_endpoint = counts(statsd, ENDPOINT, "accepted", "delivered_direct", "stored")
    before_acked = statsd.count(CONNECTION, milestone="acked", code="100")
    before_latency = len(statsd.timings(LATENCY, source="Direct"))
    assert app_server.push(subscription, "direct").status_code == 201
    client.ack(client.receive())
    settle(client)
    assert statsd.wait_count(CONNECTION, before_acked + 1, milestone="acked", code="100") == before_acked + 1
    after = counts(statsd, ENDPOINT, "accepted", "delivered_direct", "stored")
    assert {k: after[k] - before_endpoint[k] for k in after} == {"accepted": 1, "delivered_direct": 1, "stored": 0}
    [latency] = statsd.timings(LATENCY, source="Direct")[before_latency:]
    assert 0 <= latency < 5000


def test_a_stored_message_is_stored_transmitted_and_acked(
    stack: Stack, statsd: StatsdSink, app_server: AppServer
) -> None:
    client, subscription = subscribe(stack)
    uaid = client.uaid
    client.close()
    before = counts(statsd, ENDPOINT, "accepted", "stored") | counts(statsd, CONNECTION, "transmitted")
    before_latency = len(statsd.timings(LATENCY, source="Stored"))
    assert app_server.push(subscription, "stored").status_code == 201
    again = stack.client()
    assert again.hello(uaid)["uaid"] == uaid
    again.ack(again.receive())
    settle(again)
    statsd.wait_count(CONNECTION, before["transmitted"] + 1, milestone="transmitted")
    after = counts(statsd, ENDPOINT, "accepted", "stored") | counts(statsd, CONNECTION, "transmitted")
    assert {k: after[k] - before[k] for k in after} == {"accepted": 1, "stored": 1, "transmitted": 1}
    assert len(statsd.timings(LATENCY, source="Stored")) == before_latency + 1


def test_a_ttl0_message_for_an_absent_browser_is_accepted_then_expired(stack: Stack, statsd: StatsdSink) -> None:
    client, subscription = subscribe(stack)
    client.close()
    before = counts(statsd, ENDPOINT, "accepted", "expired")
    assert requests.post(subscription.endpoint, headers={"TTL": "0"}, timeout=10).status_code == 201
    statsd.wait_count(ENDPOINT, before["expired"] + 1, milestone="expired")
    after = counts(statsd, ENDPOINT, "accepted", "expired")
    assert {k: after[k] - before[k] for k in after} == {"accepted": 1, "expired": 1}


def test_the_sender_tag_names_a_steady_sender_and_stays_bounded_under_forged_ones(
    stack: Stack, statsd: StatsdSink, app_server: AppServer
) -> None:
    """15 messages from one domain earn it a tag value on both nodes (each message is two
    milestones there: 20 sightings admit a domain); 30 forged domains, one message each, never do."""
    client, subscription = subscribe(stack)
    for number in range(15):
        assert app_server.push(subscription, f"steady {number}", sub=STEADY).status_code == 201
        client.ack(client.receive())
    settle(client)
    assert statsd.wait_count(ENDPOINT, 1, milestone="accepted", sender="steady.example") >= 1
    assert statsd.wait_count(CONNECTION, 1, milestone="acked", sender="steady.example") >= 1
    assert statsd.timings(LATENCY, sender="steady.example")

    offline, target = subscribe(stack)
    offline.close()
    for number in range(30):
        forged = f"mailto:x@forged-{number}.example"
        assert app_server.push(target, "forged", sub=forged).status_code == 201
    statsd.wait_count(ENDPOINT, 30, milestone="stored", sender="other")
    for name in (ENDPOINT, CONNECTION):
        values = statsd.tag_values(name, "sender")
        assert values - {"other", "none"} <= {"steady.example"}, values
        assert len(values - {"other", "none"}) <= SENDER_TAGS
    assert statsd.count(ENDPOINT, milestone="accepted", sender="other") >= 30
