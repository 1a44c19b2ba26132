"""The session state machine, checklist 1–60 and 151–154, without sockets.

Storage effects run against the in-memory store (the same semantics as the
real ones: tests/storage/test_interface.py holds all three to them), except
where a test needs DynamoDB itself: monthly rotation and an unreachable
database run on dynalite. The rest is recorded.
"""

from __future__ import annotations

import datetime as dt
import uuid

import pytest

from autopush_flask.connection.effects import Close, NodeRequest
from autopush_flask.crypto.endpoints import parse_endpoint_token
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User, create_storage
from autopush_flask.db.memory import MemoryStorage
from autopush_flask.metrics import RecordingMetrics
from tests.connection.harness import NODE_ID, FakeClock, Node


@pytest.fixture
def keys() -> CryptoKeys:
    return CryptoKeys([CryptoKeys.generate_key()])


@pytest.fixture
def storage(make_settings, metrics) -> MemoryStorage:
    store = MemoryStorage(make_settings(), metrics)
    store.set_up()
    return store


@pytest.fixture
def node(storage, keys) -> Node:
    return Node(storage, keys)


def chid() -> str:
    return str(uuid.uuid4())


def make_notification(node: Node, uaid: str, channel_id: str, ttl: int = 60, topic: str | None = None,
                      data: str | None = None, timestamp: float | None = None) -> Notification:
    stamp = node.ctx.sortkeys.next()
    ids = (uuid.UUID(uaid), uuid.UUID(channel_id))
    message_id = MessageId.for_topic(*ids, topic) if topic else MessageId.for_timestamp(*ids, stamp)
    return Notification(
        channel_id=channel_id, version=message_id.encode(node.ctx.crypto_keys), ttl=ttl,
        timestamp=int(timestamp if timestamp is not None else node.clock()), topic=topic,
        sortkey_timestamp=None if topic else stamp, data=data,
        headers={"encoding": "aes128gcm"} if data else None,
    )


def registered_user(node: Node, channels: int = 1) -> tuple[str, list[str]]:
    """A user who connected, registered and went away."""
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_ids = [chid() for _ in range(channels)]
    for channel_id in channel_ids:
        assert client.register(channel_id)["status"] == 200
    client.disconnect()
    node.clock.advance(1)
    return uaid, channel_ids


def store(node: Node, uaid: str, *notifications: Notification) -> None:
    for notification in notifications:
        node.ctx.storage.save_message(User(uaid=uaid), notification)


# ---- hello ---------------------------------------------------------------


def test_01_hello_new_client(node: Node) -> None:
    reply = node.client().hello()
    assert reply["messageType"] == "hello" and reply["status"] == 200
    assert reply["use_webpush"] is True
    assert len(reply["uaid"]) == 32 and reply["uaid"] == uuid.UUID(reply["uaid"]).hex


def test_02_hello_reply_fields(storage, keys) -> None:
    with_ping = Node(storage, keys).client().hello()
    assert with_ping["broadcasts"] == {} and with_ping["env"] == "testing" and with_ping["ping"] == 300.0
    without_ping = Node(storage, keys, auto_ping_interval=0).client().hello()
    assert "ping" not in without_ping and without_ping["env"] == "testing"


def test_03_invalid_uaid_gets_a_new_one(node: Node) -> None:
    reply = node.client().hello("ajsidlfjlsdjflasjjailsdf")
    assert reply["status"] == 200 and reply["uaid"] != "ajsidlfjlsdjflasjjailsdf"
    assert node.metrics.find("ua.command.hello")[-1].tags == {"uaid": "reassigned"}


@pytest.mark.parametrize("spelling", [lambda u: str(uuid.UUID(u)), str.upper])
def test_04_other_spellings_of_an_existing_uaid_get_a_new_one(node: Node, spelling) -> None:
    uaid, _ = registered_user(node)
    reply = node.client().hello(spelling(uaid))
    assert reply["status"] == 200 and reply["uaid"] != uaid


def test_05_unknown_well_formed_uaid_gets_a_new_one(node: Node) -> None:
    uaid = uuid.uuid4().hex
    assert node.client().hello(uaid)["uaid"] != uaid


def test_06_returning_user_keeps_uaid_and_node_id_is_updated(node: Node) -> None:
    uaid, _ = registered_user(node)
    before = node.ctx.storage.get_user(uaid).connected_at
    node.clock.advance(5)
    client = node.client()
    assert client.hello(uaid)["uaid"] == uaid
    user = node.ctx.storage.get_user(uaid)
    assert user.node_id == NODE_ID and user.connected_at > before
    assert node.metrics.find("ua.command.hello")[-1].tags == {"uaid": "existing"}


def test_07_hello_without_use_webpush(node: Node) -> None:
    client = node.client()
    out = client.send({"messageType": "hello"})
    assert out == [{"messageType": "hello", "status": 401, "reason": "Simplepush not supported"}]
    assert client.closed.code == 1011


def test_08_channel_ids_field_is_ignored(node: Node) -> None:
    assert node.client().hello(channelIDs=["not-a-uuid"])["status"] == 200


def test_09_new_client_without_register_leaves_no_router_item(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    client.disconnect()
    assert node.ctx.storage.get_user(uaid) is None


def test_10_second_hello_is_refused(node: Node) -> None:
    client = node.client()
    client.hello()
    out = client.send({"messageType": "hello", "use_webpush": True})
    assert out == [{"messageType": "hello", "status": 401, "reason": "duplicate hello"}]
    assert client.closed.code == 1011


@pytest.mark.parametrize("first", [{"messageType": "register", "channelID": str(uuid.uuid4())}, {}])
def test_11_first_message_must_be_hello(node: Node, first: dict) -> None:
    client = node.client()
    assert client.send(first) == []
    assert client.closed.code == 1011


def test_12_hello_timeout_closes_only_before_hello(node: Node) -> None:
    waiting, identified = node.client(), node.client()
    identified.hello()
    waiting.run(waiting.session.on_hello_timeout())
    identified.run(identified.session.on_hello_timeout())
    assert waiting.closed.code == 1011 and identified.closed is None


def test_13_connected_at_in_the_future_is_already_connected(node: Node) -> None:
    uaid, _ = registered_user(node)
    node.ctx.storage.claim_user(User(uaid=uaid), "http://other:8081", node.ctx.now_ms() + 60_000)
    client = node.client()
    assert client.hello(uaid) == {"messageType": "hello", "status": 500, "reason": "already_connected"}
    assert client.closed.code == 1011
    assert node.metrics.find("ua.already_connected")


def test_14_record_without_connected_at_is_dropped(node: Node) -> None:
    uaid = uuid.uuid4().hex
    node.ctx.storage.add_user(User(uaid=uaid, record_version=1))
    assert node.client().hello(uaid)["uaid"] != uaid
    assert node.ctx.storage.get_user(uaid) is None


def test_15_bridge_record_is_left_alone(node: Node) -> None:
    uaid = uuid.uuid4().hex
    record = User(uaid=uaid, router_type="fcm", connected_at=1, record_version=1, router_data={"token": "t"})
    node.ctx.storage.add_user(record)
    assert node.client().hello(uaid)["uaid"] != uaid
    assert node.ctx.storage.get_user(uaid) == record


# ---- framing and errors ----------------------------------------------------


def test_16_binary_frame_closes_1003(node: Node) -> None:
    client = node.client()
    client.hello()
    client.run(client.session.on_binary())
    assert client.closed.code == 1003


@pytest.mark.parametrize("text", ["}{{bad_json", "[]", '"text"', "17"])
def test_17_18_invalid_json_or_not_an_object(node: Node, text: str) -> None:
    client = node.client()
    client.hello()
    client.send(text)
    assert client.closed.code == 1011


@pytest.mark.parametrize("message", [{"messageType": "wassup"}, {"data": "x"}, {"messageType": 7}])
def test_19_20_unknown_or_missing_message_type(node: Node, message: dict) -> None:
    client = node.client()
    client.hello()
    client.send(message)
    assert client.closed.code == 1011


def test_21_22_ping_and_ping_rate(node: Node) -> None:
    client = node.client()
    client.hello()
    assert client.send({}) == ["{}"]
    node.clock.advance(46)
    assert client.send({}) == ["{}"]
    node.clock.advance(44)
    assert client.send({}) == []
    assert client.closed == Close(4774, "too many pings")


def test_23_auto_ping_sends_a_ping_frame(node: Node) -> None:
    client = node.client()
    client.hello()
    client.run(client.session.on_auto_ping())
    assert client.pings == 1


# ---- register / unregister --------------------------------------------------


def test_24_first_register_creates_the_router_item(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    user = node.ctx.storage.get_user(uaid)
    assert (user.router_type, user.node_id, user.record_version) == ("webpush", NODE_ID, 1)
    assert user.connected_at == client.connected_at
    assert node.ctx.storage.get_channels(User(uaid=uaid)) == [channel_id]


def test_25_register_reply_and_v1_endpoint(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    reply = client.register(channel_id)
    assert set(reply) == {"messageType", "channelID", "status", "pushEndpoint"}
    assert (reply["messageType"], reply["channelID"], reply["status"]) == ("register", channel_id, 200)
    assert reply["pushEndpoint"].startswith("http://push.test/wpush/v1/")
    token = parse_endpoint_token(node.ctx.crypto_keys, reply["pushEndpoint"].rsplit("/", 1)[1], "v1")
    assert (token.uaid.hex, str(token.channel_id)) == (uaid, channel_id)


def test_26_27_register_with_key_gives_v2_bound_to_the_key(node: Node) -> None:
    import base64
    import hashlib

    raw_key = b"\x04" + bytes(range(64))
    padded = base64.urlsafe_b64encode(raw_key).decode()
    client = node.client()
    client.hello()
    for spelling in (padded, padded.rstrip("=")):
        endpoint = client.register(chid(), key=spelling)["pushEndpoint"]
        assert "/wpush/v2/" in endpoint
        token = parse_endpoint_token(node.ctx.crypto_keys, endpoint.rsplit("/", 1)[1], "v2")
        assert token.key_hash == hashlib.sha256(raw_key).digest()


def test_28_register_without_channel_id(node: Node) -> None:
    client = node.client()
    client.hello()
    assert client.send({"messageType": "register"}) == [{"messageType": "register", "status": 401}]
    assert client.send({}) == ["{}"]
    assert client.closed is None


@pytest.mark.parametrize(
    ("channel_id", "reply"),
    [
        ("oof", {"messageType": "register", "channelID": "oof", "status": 401, "reason": "Invalid UUID specified"}),
        (None, {"messageType": "register", "status": 401}),
        ("D9B74644-4F97-46AA-B8FA-9393985CD6CD", {"messageType": "register", "status": 401,
         "channelID": "D9B74644-4F97-46AA-B8FA-9393985CD6CD",
         "reason": "Bad UUID format, use lower case, dashed format"}),
        ("d9b746444f9746aab8fa9393985cd6cd", {"messageType": "register", "status": 401,
         "channelID": "d9b746444f9746aab8fa9393985cd6cd",
         "reason": "Bad UUID format, use lower case, dashed format"}),
    ],
)
def test_29_register_with_bad_channel_ids(node: Node, channel_id, reply) -> None:
    client = node.client()
    client.hello()
    assert client.send({"messageType": "register", "channelID": channel_id}) == [reply]
    assert client.closed is None


@pytest.mark.parametrize("key", ["af1883%&!@#*(", 12, "===="])
def test_30_register_with_bad_key(node: Node, key) -> None:
    client = node.client()
    client.hello()
    channel_id = chid()
    out = client.send({"messageType": "register", "channelID": channel_id, "key": key})
    assert out == [{"messageType": "register", "channelID": channel_id, "status": 400, "reason": "Invalid key"}]
    assert client.closed is None


def test_31_register_twice_gives_two_valid_endpoints(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    first, second = client.register(channel_id), client.register(channel_id)
    assert first["status"] == second["status"] == 200
    assert first["pushEndpoint"] != second["pushEndpoint"]
    assert node.ctx.storage.get_channels(User(uaid=uaid)) == [channel_id]


def test_32_unregister(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    out = client.send({"messageType": "unregister", "channelID": channel_id, "code": 200})
    assert out == [{"messageType": "unregister", "channelID": channel_id, "status": 200}]
    assert node.ctx.storage.get_channels(User(uaid=uaid)) == []
    assert node.metrics.find("ua.command.unregister")[-1].tags == {"code": "200"}


def test_33_unregister_unknown_channel_is_200(node: Node) -> None:
    client = node.client()
    client.hello()
    channel_id = chid()
    assert client.send({"messageType": "unregister", "channelID": channel_id})[0]["status"] == 200


@pytest.mark.parametrize(
    ("message", "reply"),
    [
        ({"messageType": "unregister"}, {"messageType": "unregister", "status": 401, "reason": "Missing ChannelID"}),
        ({"messageType": "unregister", "channelID": "}{$@!asdf"},
         {"messageType": "unregister", "status": 401, "reason": "Invalid ChannelID", "channelID": "}{$@!asdf"}),
    ],
)
def test_34_unregister_with_bad_channel_id(node: Node, message: dict, reply: dict) -> None:
    client = node.client()
    client.hello()
    assert client.send(message) == [reply]
    assert client.closed is None


def test_unregister_code_that_is_not_an_integer_is_tagged_0(node: Node) -> None:
    client = node.client()
    client.hello()
    client.send({"messageType": "unregister", "channelID": chid(), "code": "x"})
    assert node.metrics.find("ua.command.unregister")[-1].tags == {"code": "0"}


# ---- delivery -------------------------------------------------------------


def test_35_36_40_direct_notification_format(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    with_body = make_notification(node, uaid, channel_id, data="I1BcGVzG1ws0SO6Qb8Klk9Tq7cXN_g")
    without = make_notification(node, uaid, channel_id, topic="t")
    assert client.deliver(with_body) == [{
        "messageType": "notification", "channelID": channel_id, "version": with_body.version,
        "data": "I1BcGVzG1ws0SO6Qb8Klk9Tq7cXN_g", "headers": {"encoding": "aes128gcm"},
    }]
    assert client.deliver(without) == [
        {"messageType": "notification", "channelID": channel_id, "version": without.version}
    ]


def test_41_stored_message_delivered_after_hello(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    message = make_notification(node, uaid, channel_id, data="AAEC")
    store(node, uaid, message)
    client = node.client()
    client.hello(uaid)
    assert [n["version"] for n in client.notifications()] == [message.version]
    assert client.sent[0]["messageType"] == "hello"


def test_42_unacked_direct_notification_is_stored_on_disconnect(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    direct = make_notification(node, uaid, channel_id, data="AQ")
    zero_ttl = make_notification(node, uaid, channel_id, ttl=0)
    queued = make_notification(node, uaid, channel_id, data="Ag")
    client.deliver(direct)
    client.deliver(zero_ttl)
    client.disconnect(queued=[queued])
    node.clock.advance(1)
    again = node.client()
    again.hello(uaid)
    assert sorted(n["version"] for n in again.notifications()) == sorted([direct.version, queued.version])


def test_42_acked_direct_notification_is_not_stored(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    [sent] = client.deliver(make_notification(node, uaid, channel_id))
    client.ack(sent)
    client.disconnect()
    assert node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None) == (None, [])


def test_disconnect_tells_the_new_node_to_check_storage(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    client.deliver(make_notification(node, uaid, channel_id))
    node.ctx.storage.claim_user(User(uaid=uaid), "http://node-b:8081", client.connected_at + 5)
    client.disconnect()
    assert client.requests == [NodeRequest("PUT", f"http://node-b:8081/notif/{uaid}")]


def test_43_stored_notification_redelivered_until_acked(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, make_notification(node, uaid, channel_id))
    first = node.client()
    first.hello(uaid)
    assert len(first.notifications()) == 1
    first.disconnect()
    node.clock.advance(1)
    second = node.client()
    second.hello(uaid)
    [notification] = second.notifications()
    second.ack(notification)
    second.disconnect()
    node.clock.advance(1)
    third = node.client()
    third.hello(uaid)
    assert third.notifications() == []


def test_44_topic_replacement(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, make_notification(node, uaid, channel_id, topic="Inbox", data="Zmlyc3Q"))
    store(node, uaid, make_notification(node, uaid, channel_id, topic="Inbox", data="c2Vjb25k"))
    client = node.client()
    client.hello(uaid)
    [notification] = client.notifications()
    assert notification["data"] == "c2Vjb25k"
    client.ack(notification)
    assert client.notifications() == [notification]
    assert node.ctx.storage.fetch_topic_messages(User(uaid=uaid))[1] == []


def test_45_46_48_expired_messages_are_not_delivered(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    start = node.clock()
    expiring = [make_notification(node, uaid, channel_id, ttl=1, timestamp=start) for _ in range(10)]
    keeper = make_notification(node, uaid, channel_id, ttl=60, timestamp=start)
    store(node, uaid, *expiring, keeper)
    store(node, uaid, make_notification(node, uaid, channel_id, ttl=1, topic="gone", timestamp=start))
    node.clock.advance(2)
    client = node.client()
    client.hello(uaid)
    assert [n["version"] for n in client.notifications()] == [keeper.version]
    assert node.ctx.storage.fetch_topic_messages(User(uaid=uaid))[1] == []  # expired topic deleted


def test_47_zero_ttl_direct_delivery(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    message = make_notification(node, uaid, channel_id, ttl=0)
    assert client.deliver(message)[0]["version"] == message.version
    assert client.session.unacked_direct == {}


def test_49_one_outstanding_batch_of_ten(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, *[make_notification(node, uaid, channel_id) for _ in range(15)])
    client = node.client()
    client.hello(uaid)
    first = client.notifications()
    assert len(first) == 10
    client.ack(*first[:9])
    assert len(client.notifications()) == 10
    client.ack(first[9])
    assert len(client.notifications()) == 15


def test_50_nacked_message_is_redelivered(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, make_notification(node, uaid, channel_id))
    client = node.client()
    client.hello(uaid)
    [notification] = client.notifications()
    assert client.send({"messageType": "nack", "version": notification["version"], "code": 301}) == []
    assert node.metrics.find("ua.command.nack")[-1].tags == {"code": "301"}
    client.disconnect()
    node.clock.advance(1)
    again = node.client()
    again.hello(uaid)
    assert [n["version"] for n in again.notifications()] == [notification["version"]]


@pytest.mark.parametrize("updates", ["x", [], None, [1, {"version": 3}]])
def test_51_malformed_acks_are_ignored(node: Node, updates) -> None:
    client = node.client()
    client.hello()
    assert client.send({"messageType": "ack", "updates": updates}) == []
    assert client.closed is None


def test_52_bookmark_after_a_timestamp_batch_stays_a_margin_behind(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    older = [make_notification(node, uaid, channel_id, ttl=3600) for _ in range(3)]
    node.clock.advance(120)
    newer = make_notification(node, uaid, channel_id, ttl=3600)
    store(node, uaid, *older, newer)
    client = node.client()
    client.hello(uaid)  # the drain starts now
    client.ack(*client.notifications())
    bookmark, _ = node.ctx.storage.fetch_topic_messages(User(uaid=uaid))
    assert bookmark == node.ctx.stamp_at(node.clock() - node.ctx.bookmark_margin)
    assert max(m.sortkey_timestamp for m in older) < bookmark < newer.sortkey_timestamp
    # Acked messages are deleted, timestamp ones too: re-reading the margin finds nothing.
    assert node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None) == (None, [])


def test_53_msg_limit_resets_the_uaid(storage, keys) -> None:
    node = Node(storage, keys, msg_limit=10)
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, *[make_notification(node, uaid, channel_id) for _ in range(11)])
    client = node.client()
    client.hello(uaid)
    assert len(client.notifications()) == 10 and client.closed is None
    client.ack(*client.notifications())
    assert client.closed == Close(1000, "uaid reset")
    assert node.ctx.storage.get_user(uaid) is None
    assert node.client().hello(uaid)["uaid"] != uaid
    assert node.metrics.find("ua.expiration")[-1].tags == {"reason": "too_many_messages"}


def test_54_old_record_version_is_reset_after_the_drain(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    record = node.ctx.storage.get_user(uaid)
    node.ctx.storage.drop_user(uaid)
    record.record_version = None  # written by a release before record versions
    assert node.ctx.storage.add_user(record)
    store(node, uaid, make_notification(node, uaid, channel_id))
    client = node.client()
    client.hello(uaid)
    assert client.closed is None
    client.ack(*client.notifications())
    assert client.closed == Close(1000, "uaid reset")
    assert node.ctx.storage.get_user(uaid) is None


def test_55_same_node_duplicate_closes_the_older(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    older = node.client()
    older.hello(uaid)
    node.clock.advance(1)
    newer = node.client()
    assert newer.hello(uaid)["uaid"] == uaid
    assert older.closed == Close(1000, "Terminated duplicate")
    assert newer.closed is None
    assert node.registry.get(uaid) is newer


def test_56_hello_elsewhere_evicts_the_old_node(storage, keys) -> None:
    clock = FakeClock()
    node_a = Node(storage, keys, node_id="http://node-a:8081", clock=clock)
    node_b = Node(storage, keys, node_id="http://node-b:8081", clock=clock)
    uaid, _ = registered_user(node_a)
    on_a = node_a.client()
    on_a.hello(uaid)
    clock.advance(1)
    on_b = node_b.client()
    on_b.hello(uaid)
    assert on_b.requests == [NodeRequest("DELETE", f"http://node-a:8081/notif/{uaid}/{on_a.connected_at}")]
    on_a.run(on_a.session.on_evict(on_a.connected_at - 1))
    assert on_a.closed is None
    on_a.run(on_a.session.on_evict(on_a.connected_at))
    assert on_a.closed == Close(1000, "Terminated duplicate")


def test_check_storage_while_draining_sets_check_again(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, make_notification(node, uaid, channel_id))
    client = node.client()
    client.hello(uaid)
    assert client.session.draining
    client.run(client.session.on_check_storage())
    assert client.session.check_again
    client.ack(*client.notifications())
    assert client.session.draining is False
    assert [s.delay for s in client.scheduled] == [1.0]
    late = make_notification(node, uaid, channel_id, topic="late")
    store(node, uaid, late)
    client.fire_scheduled()
    assert client.notifications()[-1]["version"] == late.version


def test_direct_notifications_flow_during_a_drain(node: Node) -> None:
    uaid, [channel_id] = registered_user(node)
    store(node, uaid, make_notification(node, uaid, channel_id))
    client = node.client()
    client.hello(uaid)
    direct = make_notification(node, uaid, channel_id)
    assert client.deliver(direct)[0]["version"] == direct.version


def test_unregister_forgets_unacked_stored_and_unblocks_the_drain(node: Node) -> None:
    uaid, [first, second] = registered_user(node, channels=2)
    store(node, uaid, *[make_notification(node, uaid, first) for _ in range(10)])
    later = make_notification(node, uaid, second)
    store(node, uaid, later)
    client = node.client()
    client.hello(uaid)
    assert len(client.notifications()) == 10
    client.send({"messageType": "unregister", "channelID": first})
    assert client.notifications()[-1]["version"] == later.version


# ---- storage failures -------------------------------------------------------


def test_hello_storage_failure_replies_503(make_settings, keys) -> None:
    from tests.support.processes import free_port

    storage = create_storage(
        make_settings(AUTOPUSH_DDB_ENDPOINT=f"http://127.0.0.1:{free_port()}"), RecordingMetrics()
    )
    client = Node(storage, keys).client()
    assert client.hello(uuid.uuid4().hex) == {"messageType": "hello", "status": 503, "reason": "error"}
    assert client.closed.code == 1011
    assert client.sleeps == []


# ---- broadcasts --------------------------------------------------------------


def test_57_unknown_broadcast(node: Node) -> None:
    reply = node.client().hello(broadcasts={"unknown:1": "v1"})
    assert reply["broadcasts"] == {"errors": {"unknown:1": "Broadcast not found"}}


def test_58_known_broadcast_versions(node: Node) -> None:
    node.broadcasts.update({"kinto:123": "ver1"})
    assert node.client().hello(broadcasts={"kinto:123": "ver0"})["broadcasts"] == {"kinto:123": "ver1"}
    assert node.client().hello(broadcasts={"kinto:123": "ver1"})["broadcasts"] == {}


def test_59_subscribe_to_a_current_broadcast_has_no_reply(node: Node) -> None:
    node.broadcasts.update({"kinto:123": "ver1"})
    client = node.client()
    client.hello()
    assert client.send({"messageType": "broadcast_subscribe", "broadcasts": {"kinto:123": "ver1"}}) == []
    out = client.send({"messageType": "broadcast_subscribe", "broadcasts": {"kinto:123": "ver0", "x": "1"}})
    assert out == [{"messageType": "broadcast", "broadcasts": {"kinto:123": "ver1", "errors": {"x": "Broadcast not found"}}}]


def test_60_changed_broadcast_replaces_the_ping_frame(node: Node) -> None:
    node.broadcasts.update({"kinto:123": "ver1"})
    client = node.client()
    client.hello(broadcasts={"kinto:123": "ver1"})
    node.broadcasts.update({"kinto:123": "ver2"})
    assert client.run(client.session.on_auto_ping()) == [
        {"messageType": "broadcast", "broadcasts": {"kinto:123": "ver2"}}
    ]
    assert client.pings == 0
    client.run(client.session.on_auto_ping())
    assert client.pings == 1


# ---- shutdown ----------------------------------------------------------------


def test_shutdown_stores_direct_notifications_and_closes_1012(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    direct = make_notification(node, uaid, channel_id)
    client.deliver(direct)
    client.run(client.session.on_shutdown_store())
    assert client.closed is None  # stored first, closed after every client is stored
    _, stored = node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None)
    assert [m.version for m in stored] == [direct.version]
    client.run(client.session.on_shutdown())
    assert client.closed.code == 1012
    assert node.metrics.find("storage.retry.given_up") == []


def test_ack_between_shutdown_store_and_close_deletes_the_stored_copy(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    [sent] = client.deliver(make_notification(node, uaid, channel_id))
    client.run(client.session.on_shutdown_store())
    client.ack(sent)
    client.run(client.session.on_shutdown())
    assert node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None) == (None, [])


def test_shutdown_close_gives_up_what_was_not_stored(node: Node) -> None:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = chid()
    client.register(channel_id)
    direct = make_notification(node, uaid, channel_id)
    client.deliver(direct)
    client.run(client.session.on_shutdown())  # its store never ran (the deadline passed)
    assert client.closed.code == 1012
    [given_up] = node.metrics.find("storage.retry.given_up")
    assert (given_up.value, given_up.tags) == (1, {"operation": "store_direct", "reason": "shutdown"})


# ---- rotation mode (151–154) ------------------------------------------------


class DateClock:
    """Unix time from a settable local date, as storage clocks are."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now.timestamp()


@pytest.fixture
def rotation(make_settings, table_prefix):
    clock = DateClock(dt.datetime(2026, 3, 10, 12))
    storage = create_storage(make_settings(AUTOPUSH_TABLE_ROTATION="true"), RecordingMetrics(), clock=clock)
    storage.set_up()
    return storage, f"{table_prefix}_message"


def test_152_new_user_gets_current_month(rotation, keys) -> None:
    storage, prefix = rotation
    client = Node(storage, keys).client()
    uaid = client.hello()["uaid"]
    client.register(chid())
    user = storage.get_user(uaid)
    assert user.current_month == f"{prefix}_2026_03"
    assert str(user.last_connect).startswith("20260312")


def test_153_last_month_user_is_migrated(rotation, keys) -> None:
    storage, prefix = rotation
    old_table = f"{prefix}_2026_02"
    uaid, channel_id = uuid.uuid4().hex, chid()
    storage.add_user(User(uaid=uaid, connected_at=1, record_version=1, current_month=old_table,
                                 last_connect=202602010003))
    storage.messages(old_table).add_channel(uaid, channel_id)
    node = Node(storage, keys, clock=FakeClock(dt.datetime(2026, 3, 10, 12).timestamp()))
    message = make_notification(node, uaid, channel_id)
    storage.messages(old_table).save_message(uaid, message)
    client = node.client()
    assert client.hello(uaid)["uaid"] == uaid
    [notification] = client.notifications()
    assert notification["version"] == message.version
    client.ack(notification)
    user = storage.get_user(uaid)
    assert user.current_month == f"{prefix}_2026_03"
    assert str(user.last_connect).startswith("202603")
    assert storage.messages(f"{prefix}_2026_03").get_channels(uaid) == [channel_id]
    assert client.session.user.current_month == f"{prefix}_2026_03"


def test_154_unknown_month_is_dropped(rotation, keys) -> None:
    storage, prefix = rotation
    uaid = uuid.uuid4().hex
    storage.add_user(User(uaid=uaid, connected_at=1, record_version=1, current_month=f"{prefix}_2025_01"))
    assert Node(storage, keys).client().hello(uaid)["uaid"] != uaid
    assert storage.get_user(uaid) is None


def test_23_ping_timeout_closes_1011(node: Node) -> None:
    client = node.client()
    client.hello()
    client.run(client.session.on_ping_timeout())
    assert client.closed == Close(1011, "no pong")
    assert client.session.disconnect_reason == "ping timeout"


def test_153_message_stored_in_the_old_table_during_migration_is_carried_over(rotation, keys) -> None:
    """docs/architecture.md#monthly-rotation edge case: an endpoint still writes to the old month while the node switches."""

    storage, prefix = rotation
    old_table, new_table = f"{prefix}_2026_02", f"{prefix}_2026_03"
    uaid, channel_id = uuid.uuid4().hex, chid()
    storage.add_user(User(uaid=uaid, connected_at=1, record_version=1, current_month=old_table,
                                 last_connect=202602010003))
    storage.messages(old_table).add_channel(uaid, channel_id)
    node = Node(storage, keys, clock=FakeClock(dt.datetime(2026, 3, 10, 12).timestamp()))
    first = make_notification(node, uaid, channel_id)
    storage.messages(old_table).save_message(uaid, first)
    late = make_notification(node, uaid, channel_id)
    client = node.client()
    repoint = storage.router.update_message_month

    def endpoint_races_the_switch(*args):
        storage.messages(old_table).save_message(uaid, late)  # read current_month before the switch
        return repoint(*args)

    storage.router.update_message_month = endpoint_races_the_switch
    client.hello(uaid)
    [delivered] = client.notifications()
    client.ack(delivered)
    assert storage.get_user(uaid).current_month == new_table
    assert client.notifications()[-1]["version"] == late.version
    assert [m.version for m in storage.messages(new_table).fetch_timestamp_messages(uaid, None)[1]] == [
        late.version
    ]
