"""Urgency (docs/protocol.md#urgency): the client's minimum, held messages and the bookmark.

State-machine tests on the in-memory store, as in tests/connection/test_session.py;
the same over real sockets and a real endpoint is in tests/integration/test_urgency.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Notification, User
from autopush_flask.db.memory import MemoryStorage
from tests.connection.harness import Client, Node
from tests.connection.test_session import chid, make_notification, store

OK = {"messageType": "urgency", "status": 200}


@pytest.fixture
def node(make_settings, metrics) -> Node:
    storage = MemoryStorage(make_settings(), metrics)
    storage.set_up()
    return Node(storage, CryptoKeys([CryptoKeys.generate_key()]))


def connected(node: Node, minimum: str | None = None) -> tuple[Client, str, str]:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    if minimum is not None:
        assert client.send({"messageType": "urgency", "min": minimum}) == [OK]
    return client, uaid, channel_id


def message(node: Node, uaid: str, channel_id: str, level: str | None, ttl: int = 86400, **kwargs) -> Notification:
    return dataclasses.replace(make_notification(node, uaid, channel_id, ttl=ttl, **kwargs), urgency=level)


def bookmark(node: Node, uaid: str) -> int | None:
    return node.ctx.storage.fetch_topic_messages(User(uaid=uaid))[0]


def stored_versions(node: Node, uaid: str) -> list[str]:
    _, topics = node.ctx.storage.fetch_topic_messages(User(uaid=uaid))
    _, stamped = node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None, limit=100)
    return [n.version for n in topics + stamped]


@pytest.mark.parametrize("value", ["urgent", "", 3, None, ["high"]])
def test_an_invalid_minimum_is_answered_400_and_changes_nothing(node: Node, value) -> None:
    client, uaid, _ = connected(node)
    reply = client.send({"messageType": "urgency", "min": value})
    assert reply == [{"messageType": "urgency", "status": 400, "reason": "min must be very-low, low, normal or high"}]
    assert client.closed is None
    assert node.ctx.storage.get_user(uaid).urgency is None


def test_the_minimum_is_kept_on_the_record_and_survives_a_reconnect(node: Node) -> None:
    client, uaid, channel_id = connected(node, "High")  # any case
    assert node.ctx.storage.get_user(uaid).urgency == "high"
    client.disconnect()
    node.clock.advance(1)
    again = node.client()
    assert again.hello(uaid)["uaid"] == uaid
    low = message(node, uaid, channel_id, "low")
    again.deliver(low)
    assert again.notifications() == []  # the minimum came back from the record
    assert node.metrics.find("ua.command.urgency")[0].tags == {"min": "high"}


def test_a_direct_message_below_the_minimum_is_stored_not_sent(node: Node) -> None:
    client, uaid, channel_id = connected(node, "normal")
    low, normal, plain = (message(node, uaid, channel_id, level) for level in ("low", "normal", None))
    for notification in (low, normal, plain):
        client.deliver(notification)
    assert [n["version"] for n in client.notifications()] == [normal.version, plain.version]
    assert stored_versions(node, uaid) == [low.version]
    assert low.version not in client.session.unacked_direct


def test_a_held_ttl0_message_is_dropped_and_one_the_endpoint_stored_is_not_written_again(node: Node) -> None:
    client, uaid, channel_id = connected(node, "high")
    client.deliver(message(node, uaid, channel_id, "low", ttl=0))
    client.deliver(dataclasses.replace(message(node, uaid, channel_id, "low"), stored=True))
    assert client.notifications() == [] and stored_versions(node, uaid) == []
    assert "store_direct" not in client.db_calls


def test_the_drain_skips_held_messages_and_the_bookmark_stays_below_them(node: Node) -> None:
    client, uaid, channel_id = connected(node, "high")
    client.disconnect()
    early_low = message(node, uaid, channel_id, "very-low")
    high = message(node, uaid, channel_id, "high")
    topic_low = message(node, uaid, channel_id, "low", topic="t1")
    store(node, uaid, early_low, high, topic_low)
    node.clock.advance(3600)  # far past the bookmark margin: only a held message keeps the bookmark back
    client = node.client()
    client.hello(uaid)
    assert [n["version"] for n in client.notifications()] == [high.version]
    client.ack(*client.notifications())
    assert bookmark(node, uaid) is not None and bookmark(node, uaid) < early_low.sortkey_timestamp
    assert sorted(stored_versions(node, uaid)) == sorted([early_low.version, topic_low.version])


def test_lowering_the_minimum_drains_the_held_messages(node: Node) -> None:
    client, uaid, channel_id = connected(node, "high")
    held = [message(node, uaid, channel_id, level) for level in ("low", "normal")]
    for notification in held:
        client.deliver(notification)
    later_high = message(node, uaid, channel_id, "high")
    store(node, uaid, later_high)
    client.send({"messageType": "ack", "updates": []})
    node.clock.advance(3600)
    assert client.send({"messageType": "urgency", "min": "normal"})[0] == OK
    sent = [n["version"] for n in client.notifications()]
    assert sent == [held[1].version, later_high.version]  # "low" stays held
    client.ack(*client.notifications())
    assert client.send({"messageType": "urgency", "min": "very-low"})[0] == OK
    assert [n["version"] for n in client.notifications()][-1] == held[0].version
    client.ack(client.notifications()[-1])
    assert stored_versions(node, uaid) == []


def test_raising_the_minimum_does_not_read_storage(node: Node) -> None:
    client, _, _ = connected(node, "low")
    client.db_calls.clear()
    assert client.send({"messageType": "urgency", "min": "high"}) == [OK]
    assert client.db_calls == ["set_min_urgency"]


def test_a_storage_failure_is_answered_503(node: Node) -> None:
    client, uaid, _ = connected(node)
    node.ctx.storage.fail_next("set_min_urgency")
    assert client.send({"messageType": "urgency", "min": "high"}) == [
        {"messageType": "urgency", "status": 503, "reason": "storage error"}
    ]
    assert client.closed is None and node.ctx.storage.get_user(uaid).urgency is None
