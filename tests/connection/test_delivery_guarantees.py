"""A 201 is a promise: what the session does so that no accepted message is lost or doubled.

State-machine tests (effects against a real dynalite, no sockets); the
socket-level paths are in ``tests/e2e/test_delivery_guarantees.py``.
"""

from __future__ import annotations

import dataclasses
import uuid

import pytest

from collections.abc import Iterator

from autopush_flask.connection.effects import Retry
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User, create_storage
from autopush_flask.db.models import timestamp_sort_key
from autopush_flask.metrics import RecordingMetrics
from tests.connection.harness import Client, Node
from tests.connection.test_session import chid, make_notification, registered_user, store
from tests.support.throttle_proxy import ThrottleProxy

@pytest.fixture
def keys() -> CryptoKeys:
    return CryptoKeys([CryptoKeys.generate_key()])


@pytest.fixture
def proxy(dynalite, storage) -> Iterator[ThrottleProxy]:
    """Between the node and dynalite: can answer "throttled" to chosen operations."""
    running = ThrottleProxy(dynalite.port).start()
    yield running
    running.stop()


@pytest.fixture
def node(proxy, make_settings, keys) -> Node:
    return Node(create_storage(make_settings(AUTOPUSH_DDB_ENDPOINT=proxy.url), RecordingMetrics()), keys)


def throttle(proxy: ThrottleProxy, *operations: str) -> None:
    """Every call of these operations fails (after the client's retries); none: all pass again."""
    proxy.throttle_targets = set(operations) or None
    proxy.throttling = bool(operations)


def throttle_all(proxy: ThrottleProxy) -> None:
    proxy.throttle_targets = None
    proxy.throttling = True


def connected(node: Node) -> tuple[Client, str, str]:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    return client, uaid, channel_id


def stored_items(node: Node, uaid: str) -> list[Notification]:
    _, topics = node.ctx.storage.fetch_topic_messages(User(uaid=uaid))
    _, stamped = node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None, limit=100)
    return topics + stamped


def reconnect(node: Node, uaid: str) -> Client:
    node.clock.advance(1)
    client = node.client()
    assert client.hello(uaid)["uaid"] == uaid
    return client


def bookmark(node: Node, uaid: str) -> int | None:
    return node.ctx.storage.fetch_topic_messages(User(uaid=uaid))[0]


# ---- the bookmark race ---------------------------------------------------------


def test_a_message_written_late_under_an_earlier_stamp_is_still_read(node: Node) -> None:
    """B is stamped after A but written first, drained and acked; then A's write lands."""
    uaid, [channel_id] = registered_user(node)
    late = make_notification(node, uaid, channel_id, data="QQ")  # A: stamped first ...
    node.clock.advance(2)
    early = make_notification(node, uaid, channel_id, data="Qg")  # B: stamped 2 s later
    store(node, uaid, early)
    client = node.client()
    client.hello(uaid)
    [sent] = client.notifications()
    client.ack(sent)
    store(node, uaid, late)  # ... and written last (a throttled write, a slow node, a skewed clock)
    client.run(client.session.on_check_storage())  # the endpoint's PUT /notif after storing
    assert [n["version"] for n in client.notifications()] == [early.version, late.version]
    assert bookmark(node, uaid) is None or bookmark(node, uaid) < late.sortkey_timestamp


def test_unacked_direct_notification_stored_below_a_bookmark_a_drain_passed(node: Node) -> None:
    """Stored at disconnect under its own, old stamp: the bookmark is lowered below it."""
    client, uaid, channel_id = connected(node)
    direct = make_notification(node, uaid, channel_id, ttl=3600, data="ZA")
    client.deliver(direct)  # read, never acked
    node.clock.advance(120)
    stored = make_notification(node, uaid, channel_id, ttl=3600)
    store(node, uaid, stored)
    client.run(client.session.on_check_storage())
    client.ack(client.notifications()[-1])
    assert bookmark(node, uaid) > direct.sortkey_timestamp  # the drain moved past the direct one's stamp
    client.disconnect()
    assert bookmark(node, uaid) < direct.sortkey_timestamp
    again = reconnect(node, uaid)
    assert [n["version"] for n in again.notifications()] == [direct.version]


def test_a_bookmark_lowered_during_a_drain_is_not_raised_over_it(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    old = [make_notification(node, uaid, channel_id, ttl=3600) for _ in range(2)]
    store(node, uaid, *old)
    node.clock.advance(120)
    client = node.client()
    client.hello(uaid)
    assert len(client.notifications()) == 2
    # Meanwhile another node stores a client's unacked notification under an old stamp.
    stamp = old[0].sortkey_timestamp + 1
    late = dataclasses.replace(make_notification(node, uaid, channel_id, ttl=3600), sortkey_timestamp=stamp)
    node.ctx.storage.save_late_messages(User(uaid=uaid), [late])
    client.ack(*client.notifications())  # the drain's conditional bookmark write fails ...
    client.fire_scheduled()  # ... and it drains again from the lowered bookmark
    assert client.notifications()[-1]["version"] == late.version


# ---- no restamping --------------------------------------------------------------


def test_stored_at_disconnect_under_its_own_version_and_sort_key(node: Node) -> None:
    client, uaid, channel_id = connected(node)
    direct = make_notification(node, uaid, channel_id)
    client.deliver(direct)
    client.disconnect()
    [item] = stored_items(node, uaid)
    assert (item.version, item.sort_key) == (direct.version, timestamp_sort_key(direct.sortkey_timestamp, channel_id))


def test_a_notification_the_endpoint_stored_is_not_stored_again(node: Node) -> None:
    client, uaid, channel_id = connected(node)
    direct = dataclasses.replace(make_notification(node, uaid, channel_id), stored=True)
    store(node, uaid, direct)
    client.deliver(direct)
    calls = len(client.db_calls)
    client.disconnect()
    assert "store_direct" not in client.db_calls[calls:]
    assert [n.version for n in stored_items(node, uaid)] == [direct.version]


def test_an_older_endpoint_without_the_stamp(node: Node) -> None:
    """The stamp comes from the message id when it is one; else one stamp, kept."""
    client, uaid, channel_id = connected(node)
    stamp = node.ctx.sortkeys.next()
    message_id = MessageId.for_timestamp(uuid.UUID(uaid), uuid.UUID(channel_id), stamp).encode(node.ctx.crypto_keys)
    from_id = Notification(channel_id=channel_id, version=message_id, ttl=60, timestamp=int(node.clock()))
    opaque = Notification(channel_id=channel_id, version="not-a-message-id", ttl=60, timestamp=int(node.clock()))
    client.deliver(from_id)
    client.deliver(opaque)
    client.disconnect()
    keys = {item.version: item.sortkey_timestamp for item in stored_items(node, uaid)}
    assert keys[message_id] == stamp
    assert keys["not-a-message-id"] > stamp


# ---- the same version twice --------------------------------------------------------


def test_a_retried_put_push_is_not_sent_twice(node: Node) -> None:
    client, uaid, channel_id = connected(node)
    direct = make_notification(node, uaid, channel_id)
    [sent] = client.deliver(direct)
    assert client.deliver(dataclasses.replace(direct)) == []  # still awaiting its ack
    client.ack(sent)
    assert client.deliver(dataclasses.replace(direct)) == []  # acked moments ago
    assert client.notifications() == [sent]


def test_a_drained_copy_of_an_unacked_direct_notification_is_not_sent_again(node: Node) -> None:
    """The endpoint timed out on PUT /push (which did arrive) and stored the message under the same version."""
    client, uaid, channel_id = connected(node)
    direct = make_notification(node, uaid, channel_id)
    [sent] = client.deliver(direct)
    store(node, uaid, direct)
    client.run(client.session.on_check_storage())
    assert client.notifications() == [sent]
    assert client.session.draining  # its ack is awaited as the stored batch's
    client.ack(sent)
    assert not client.session.draining and client.session.unacked_stored == {}
    assert stored_items(node, uaid) == []


def test_a_re_read_acked_message_whose_delete_failed_is_deleted_not_sent(node: Node, proxy: ThrottleProxy) -> None:
    uaid, [channel_id] = registered_user(node)
    message = make_notification(node, uaid, channel_id)
    store(node, uaid, message)
    client = node.client()
    client.hello(uaid)
    [sent] = client.notifications()
    throttle(proxy, "DeleteItem")
    client.ack(sent)  # its delete fails (and waits in the retry queue)
    throttle(proxy)
    node.retries.clear()
    client.run(client.session.on_check_storage())  # re-reads the margin: the acked message is there
    assert client.notifications() == [sent]
    assert stored_items(node, uaid) == []


# ---- durable direct acks ------------------------------------------------------------


@pytest.mark.parametrize("durable", [True, False])
def test_a_direct_ack_deletes_a_stored_copy_only_when_there_is_one(node: Node, durable: bool) -> None:
    client, uaid, channel_id = connected(node)
    direct = dataclasses.replace(make_notification(node, uaid, channel_id, topic="t"), stored=durable)
    if durable:
        store(node, uaid, direct)
    [sent] = client.deliver(direct)
    calls = len(client.db_calls)
    client.ack(sent)
    assert client.db_calls[calls:] == (["delete_message"] if durable else [])
    assert stored_items(node, uaid) == []


# ---- writes retried in the background -----------------------------------------------


def test_direct_notifications_not_stored_at_disconnect_are_retried(node: Node, proxy: ThrottleProxy) -> None:
    client, uaid, channel_id = connected(node)
    direct = [make_notification(node, uaid, channel_id, data=f"A{i}") for i in range(2)]
    for notification in direct:
        client.deliver(notification)
    throttle_all(proxy)
    client.disconnect()
    throttle(proxy)
    [retry] = node.retries
    assert (retry.operation, retry.notify, retry.uaid) == ("store_direct", True, uaid)
    assert retry.message_ids == tuple(n.version for n in direct)
    assert retry.give_up_at == max(n.timestamp + n.ttl for n in direct)
    node.run_retries()
    again = reconnect(node, uaid)
    assert [n["version"] for n in again.notifications()] == [n.version for n in direct]


def test_failed_ack_delete_and_bookmark_write_are_retried(node: Node, proxy: ThrottleProxy) -> None:
    uaid, [channel_id] = registered_user(node)
    message = make_notification(node, uaid, channel_id, ttl=3600)
    store(node, uaid, message)
    node.clock.advance(120)
    client = node.client()
    client.hello(uaid)
    [sent] = client.notifications()
    throttle(proxy, "DeleteItem", "UpdateItem")
    client.ack(sent)
    throttle(proxy)
    operations = [(r.operation, r.message_ids) for r in node.retries]
    assert operations == [("delete_message", (message.version,)), ("update_bookmark", ())]
    assert node.retries[0].give_up_at == message.timestamp + message.ttl
    node.run_retries()
    assert stored_items(node, uaid) == []
    assert bookmark(node, uaid) == message.sortkey_timestamp  # older than the margin: passed


def test_retry_effects_carry_what_a_queue_needs() -> None:
    fields = {f.name for f in dataclasses.fields(Retry)}
    assert fields == {"op", "give_up_at", "uaid", "message_ids", "notify"}
