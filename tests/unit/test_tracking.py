"""Delivery tracking's pure parts (docs/operations.md#delivery-tracking): the sender
domain of a VAPID ``sub``, the bounded sender tag, and the milestones of a session."""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Notification
from autopush_flask.db.memory import MemoryStorage
from autopush_flask.metrics import RecordingMetrics
from autopush_flask.tracking import MILESTONE, OTHER_SENDER, DeliveryTracker, SenderTags, accepted_at, sender_domain
from tests.connection.harness import Node
from tests.connection.test_session import make_notification, store


@pytest.mark.parametrize(
    ("sub", "domain"),
    [
        ("mailto:ops@Example.COM", "example.com"),
        ("mailto:a@b@push.example.org.", "push.example.org"),
        ("https://example.com/contact?x=1", "example.com"),
        ("https://user@example.com:8443/", "example.com"),
        ("  https://EXAMPLE.com  ", "example.com"),
        ("mailto:", None),
        ("mailto:ops@", None),
        ("mailto:ops@exa mple.com", None),
        ("mailto:ops@-bad.example", None),
        ("mailto:ops@" + "a" * 254, None),
        ("http://example.com", None),
        ("tel:+123", None),
        ("", None),
        (None, None),
        (42, None),
    ],
)
def test_sender_domain(sub, domain) -> None:
    assert sender_domain(sub) == domain


def test_sender_tags_stay_bounded_under_a_flood_of_forged_domains() -> None:
    tags = SenderTags(limit=3, admit_after=5)
    seen = {tags.tag(f"forged-{number}.example") for number in range(10_000)}
    assert seen == {OTHER_SENDER}
    assert tags.admitted == set() and len(tags._counts) <= 64  # the candidate table is bounded too


def test_a_steady_sender_is_admitted_among_many_light_ones_and_the_set_never_passes_the_limit() -> None:
    tags = SenderTags(limit=2, admit_after=20)
    results = []
    for number in range(5_000):
        results.append(tags.tag("steady.example"))
        tags.tag(f"light-{number}.example")
    assert results[:19] == [OTHER_SENDER] * 19 and set(results[19:]) == {"steady.example"}
    for number in range(100):
        for _ in range(20):
            tags.tag(f"heavy-{number}.example")
    assert len(tags.admitted) == 2 and "steady.example" in tags.admitted
    assert tags.tag(None) == "none"


def test_no_sender_tag_unless_enabled() -> None:
    metrics = RecordingMetrics()
    DeliveryTracker(metrics).milestone("accepted", "example.com")
    DeliveryTracker(metrics, sender_tags=1).milestone("accepted", None)
    assert [call.tags for call in metrics.find(MILESTONE)] == [
        {"milestone": "accepted"}, {"milestone": "accepted", "sender": "none"}
    ]


def test_accepted_at_prefers_the_microsecond_stamp() -> None:
    stamped = Notification(channel_id="c", version="v", ttl=60, timestamp=100, sortkey_timestamp=100_250_000)
    assert accepted_at(stamped) == 100.25
    assert accepted_at(dataclasses.replace(stamped, topic="t")) == 100.0


# ---- a session's milestones (the harness; real sockets in tests/integration/test_delivery_tracking.py)


@pytest.fixture
def node(make_settings) -> Node:
    metrics = RecordingMetrics()
    storage = MemoryStorage(make_settings(), metrics)
    storage.set_up()
    return Node(storage, CryptoKeys([CryptoKeys.generate_key()]), msg_limit=2, metrics=metrics)


def milestones(node: Node) -> list[str]:
    return [call.tags["milestone"] for call in node.metrics.find(MILESTONE) for _ in range(int(call.value))]


def test_expired_transmitted_and_dropped_at_the_message_limit(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = str(uuid.uuid4())
    client.register(channel_id)
    client.disconnect()
    messages = [make_notification(node, uaid, channel_id, ttl=ttl) for ttl in (1, 600, 600, 600, 600)]
    store(node, uaid, *messages)
    node.clock.advance(5)  # the first has expired
    node.metrics.clear()
    again = node.client()
    again.hello(uaid)
    again.ack(*again.notifications())  # two sent: the limit; the drain goes on and resets the UAID
    assert milestones(node).count("expired") == 1
    assert milestones(node).count("transmitted") == 2
    assert milestones(node).count("acked") == 2
    assert milestones(node).count("dropped_msg_limit") == 2


def test_stored_at_disconnect_and_given_up_at_shutdown(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = str(uuid.uuid4())
    client.register(channel_id)
    client.deliver(make_notification(node, uaid, channel_id))
    node.metrics.clear()
    client.disconnect()
    assert milestones(node) == ["stored"]

    other = node.client()
    other_uaid = other.hello()["uaid"]
    other.register(channel_id)
    other.deliver(make_notification(node, other_uaid, channel_id))
    node.metrics.clear()
    other.run(other.session.on_shutdown())
    assert milestones(node) == ["given_up"]
