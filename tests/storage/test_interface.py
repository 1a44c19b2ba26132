"""The semantics every backend keeps (``db/interface.py``), through the interface alone.

Each test runs once per backend (``conftest.py``): a backend that passes
this suite can replace another without a node noticing.
"""

from __future__ import annotations

import dataclasses
import inspect
import uuid

import pytest

from autopush_flask.db.preflight import preflight
from autopush_flask.db import Notification, Storage, StorageUnavailable, User
from autopush_flask.db.memory import MAINTENANCE_LINE, MemoryStorage
from autopush_flask.db.models import WEBPUSH
from tests.storage.conftest import Clock

DAY = 24 * 3600
RECORD_LIFETIME = 60 * DAY  # the default AUTOPUSH_ROUTER_TTL_DAYS
NODE = "http://node-a.invalid:8081"
OTHER_NODE = "http://node-b.invalid:8081"


# ---- helpers


def protocol_methods() -> list[str]:
    return sorted(name for name, value in vars(Storage).items() if callable(value) and not name.startswith("_"))


def stored_user(store: Storage, connected_at: int = 1_000, **fields: object) -> User:
    user = store.new_user(uuid.uuid4().hex, NODE, connected_at, **fields)
    assert store.add_user(user) is True
    return user


def subscriber(store: Storage) -> tuple[User, str]:
    """A stored user with one channel: a channel list exists, as for every user with messages."""
    user, chid = stored_user(store), str(uuid.uuid4())
    store.add_channel(user, chid)
    return user, chid


def stamp(clock: Clock, offset_seconds: float = 0) -> int:
    """A sort-key timestamp (microseconds, 16 digits like every real one)."""
    return int((clock.now + offset_seconds) * 1_000_000)


def timestamp_message(clock: Clock, chid: str, version: str, sortkey: int, ttl: int = 3600) -> Notification:
    return Notification(channel_id=chid, version=version, ttl=ttl, timestamp=int(clock.now), sortkey_timestamp=sortkey)


def topic_message(clock: Clock, chid: str, topic: str, version: str, ttl: int = 3600) -> Notification:
    return Notification(channel_id=chid, version=version, ttl=ttl, timestamp=int(clock.now), topic=topic)


def versions(messages: list[Notification]) -> list[str]:
    return [m.version for m in messages]


def bookmark_of(store: Storage, user: User) -> int | None:
    return store.fetch_topic_messages(user)[0]


# ---- the interface itself


def test_every_protocol_method_is_there_with_its_signature(backend_storage: Storage) -> None:
    assert isinstance(backend_storage, Storage)
    for name in protocol_methods():
        expected = inspect.signature(getattr(Storage, name))
        actual = inspect.signature(getattr(type(backend_storage), name))
        shape = [(p.name, p.kind, p.default) for p in expected.parameters.values()]
        assert [(p.name, p.kind, p.default) for p in actual.parameters.values()] == shape, name


def test_a_gated_store_refuses_data_until_set_up(build_storage) -> None:
    store = build_storage(gated=True)
    assert store.is_ready() is False
    with pytest.raises(StorageUnavailable):
        store.get_user(uuid.uuid4().hex)
    store.set_up()
    assert store.is_ready() is True
    assert store.get_user(uuid.uuid4().hex) is None


def test_a_set_up_store_is_ready_and_healthy(backend_storage: Storage) -> None:
    assert backend_storage.is_ready() is True
    health = backend_storage.check_health()
    assert health and all(entry == {"status": "OK"} for entry in health.values())
    preflight(backend_storage)
    backend_storage.maintain()


# ---- router records


def test_new_user_is_not_written_until_added(backend_storage: Storage) -> None:
    user = backend_storage.new_user(uuid.uuid4().hex, NODE, 1_000)
    assert (user.node_id, user.connected_at, user.router_type) == (NODE, 1_000, WEBPUSH)
    assert backend_storage.get_user(user.uaid) is None
    assert backend_storage.holds_data_of(user) is True


def test_a_record_is_added_only_once(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, connected_at=1_000)
    again = backend_storage.new_user(user.uaid, OTHER_NODE, 2_000)
    assert backend_storage.add_user(again) is False
    found = backend_storage.get_user(user.uaid)
    assert (found.uaid, found.node_id, found.connected_at, found.router_type) == (user.uaid, NODE, 1_000, WEBPUSH)


def test_reads_return_copies(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, router_data={"token": "a"})
    found = backend_storage.get_user(user.uaid)
    found.node_id = OTHER_NODE
    found.router_data["token"] = "changed"
    again = backend_storage.get_user(user.uaid)
    assert (again.node_id, again.router_data) == (NODE, {"token": "a"})


def test_an_absent_record_reads_as_none(backend_storage: Storage) -> None:
    assert backend_storage.get_user(uuid.uuid4().hex) is None
    user, channels = backend_storage.get_user_with_channels(uuid.uuid4().hex)
    assert user is None and channels in (None, [])


def test_record_and_channels_in_one_read(backend_storage: Storage) -> None:
    user, chid = subscriber(backend_storage)
    found, channels = backend_storage.get_user_with_channels(user.uaid)
    assert (found.uaid, found.node_id) == (user.uaid, NODE)
    assert channels is None or channels == [chid]


def test_claim_by_a_newer_connection_returns_the_record_before(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, connected_at=1_000)
    claimed, previous = backend_storage.claim_user(user, OTHER_NODE, 2_000)
    assert claimed is True
    assert (previous.node_id, previous.connected_at) == (NODE, 1_000)
    found = backend_storage.get_user(user.uaid)
    assert (found.node_id, found.connected_at) == (OTHER_NODE, 2_000)


@pytest.mark.parametrize("connected_at", [999, 1_000])
def test_claim_by_an_older_or_same_connection_is_refused(backend_storage: Storage, connected_at: int) -> None:
    user = stored_user(backend_storage, connected_at=1_000)
    assert backend_storage.claim_user(user, OTHER_NODE, connected_at) == (False, None)
    found = backend_storage.get_user(user.uaid)
    assert (found.node_id, found.connected_at) == (NODE, 1_000)


def test_claim_of_a_record_without_node_ignores_its_connection_time(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, connected_at=1_000)
    assert backend_storage.remove_node_id(user.uaid, NODE, 1_000) is True
    claimed, previous = backend_storage.claim_user(user, OTHER_NODE, 500)
    assert claimed is True and previous.node_id is None
    assert backend_storage.get_user(user.uaid).node_id == OTHER_NODE


def test_claim_of_a_record_without_router_type(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, connected_at=1_000, router_type=None)  # reads as WebPush
    assert backend_storage.claim_user(user, OTHER_NODE, 2_000)[0] is True


def test_claim_of_another_router_type_is_refused(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, connected_at=1_000)
    assert backend_storage.update_router_data(user.uaid, "fcm", {"token": "t"}, 1_500) is True
    assert backend_storage.claim_user(user, OTHER_NODE, 2_000) == (False, None)
    assert backend_storage.get_user(user.uaid).router_type == "fcm"


def test_claim_of_an_absent_record_creates_nothing(backend_storage: Storage) -> None:
    user = backend_storage.new_user(uuid.uuid4().hex, NODE, 1_000)
    assert backend_storage.claim_user(user, OTHER_NODE, 2_000) == (False, None)
    assert backend_storage.get_user(user.uaid) is None


def test_remove_node_id_needs_both_node_and_connection(backend_storage: Storage) -> None:
    user = stored_user(backend_storage, connected_at=1_000)
    assert backend_storage.remove_node_id(user.uaid, OTHER_NODE, 1_000) is False
    assert backend_storage.remove_node_id(user.uaid, NODE, 999) is False
    assert backend_storage.get_user(user.uaid).node_id == NODE
    assert backend_storage.remove_node_id(user.uaid, NODE, 1_000) is True
    found = backend_storage.get_user(user.uaid)
    assert (found.node_id, found.connected_at) == (None, 1_000)
    assert backend_storage.remove_node_id(user.uaid, NODE, 1_000) is False
    assert backend_storage.remove_node_id(uuid.uuid4().hex, NODE, 1_000) is False


def test_update_router_data(backend_storage: Storage) -> None:
    assert backend_storage.update_router_data(uuid.uuid4().hex, "fcm", {"token": "t"}, 1) is False
    user = stored_user(backend_storage, connected_at=1_000)
    assert backend_storage.update_router_data(user.uaid, "apns", {"token": "t2"}, 3_000) is True
    found = backend_storage.get_user(user.uaid)
    assert (found.router_type, found.router_data, found.connected_at) == ("apns", {"token": "t2"}, 3_000)


def test_update_router_data_creates_no_record(backend_storage: Storage) -> None:
    uaid = uuid.uuid4().hex
    backend_storage.update_router_data(uaid, "fcm", {"token": "t"}, 1)
    assert backend_storage.get_user(uaid) is None


def test_the_minimum_urgency_is_kept_on_the_record_alone(backend_storage: Storage) -> None:
    assert backend_storage.set_min_urgency(User(uuid.uuid4().hex), "high") is False
    user = stored_user(backend_storage, connected_at=1_000)
    assert backend_storage.get_user(user.uaid).urgency is None
    assert backend_storage.set_min_urgency(user, "high") is True
    found = backend_storage.get_user(user.uaid)
    assert (found.urgency, found.node_id, found.connected_at) == ("high", NODE, 1_000)
    assert backend_storage.claim_user(user, OTHER_NODE, 2_000)[0] is True  # a hello keeps it
    assert backend_storage.get_user(user.uaid).urgency == "high"
    assert backend_storage.set_min_urgency(user, "very-low") is True
    assert backend_storage.get_user(user.uaid).urgency == "very-low"


def test_drop_user_says_whether_there_was_one(backend_storage: Storage) -> None:
    user = stored_user(backend_storage)
    assert backend_storage.drop_user(user.uaid) is True
    assert backend_storage.get_user(user.uaid) is None
    assert backend_storage.drop_user(user.uaid) is False


def test_a_record_expires_after_its_lifetime(backend_storage: Storage, clock: Clock) -> None:
    user = stored_user(backend_storage)
    expiry = int(clock.now) + RECORD_LIFETIME
    assert backend_storage.get_user(user.uaid).expiry == expiry
    clock.advance(RECORD_LIFETIME - 1)
    assert backend_storage.get_user(user.uaid) is not None
    clock.advance(2)
    assert backend_storage.get_user(user.uaid) is None
    assert backend_storage.get_user_with_channels(user.uaid)[0] is None


@pytest.mark.parametrize("write", ["claim_user", "update_router_data", "refresh_user"])
def test_writes_push_the_expiry_back(backend_storage: Storage, clock: Clock, write: str) -> None:
    user = backend_storage.get_user(stored_user(backend_storage, connected_at=1_000).uaid)
    clock.advance(50 * DAY)
    if write == "claim_user":
        assert backend_storage.claim_user(user, OTHER_NODE, 2_000)[0] is True
    elif write == "update_router_data":
        assert backend_storage.update_router_data(user.uaid, "fcm", {"token": "t"}, 2_000) is True
    else:
        backend_storage.refresh_user(user)
    expiry = int(clock.now) + RECORD_LIFETIME
    assert backend_storage.get_user(user.uaid).expiry == expiry
    if write != "update_router_data":  # the others are given the caller's record
        assert user.expiry == expiry
    clock.advance(20 * DAY)  # 70 days after add_user
    assert backend_storage.get_user(user.uaid) is not None


def test_refresh_writes_at_most_daily(backend_storage: Storage, clock: Clock) -> None:
    user = backend_storage.get_user(stored_user(backend_storage).uaid)  # as callers read it
    written = user.expiry
    assert written == int(clock.now) + RECORD_LIFETIME
    clock.advance(DAY - 60)
    backend_storage.refresh_user(user)
    assert (backend_storage.get_user(user.uaid).expiry, user.expiry) == (written, written)
    clock.advance(120)
    backend_storage.refresh_user(user)
    assert backend_storage.get_user(user.uaid).expiry == user.expiry == int(clock.now) + RECORD_LIFETIME


# ---- channels


def test_channels_are_added_listed_and_removed(backend_storage: Storage) -> None:
    user = stored_user(backend_storage)
    assert backend_storage.get_channels(user) == []
    first, second = str(uuid.uuid4()), str(uuid.uuid4())
    backend_storage.add_channel(user, first)
    backend_storage.add_channel(user, second)
    backend_storage.add_channel(user, first)
    assert sorted(backend_storage.get_channels(user)) == sorted([first, second])
    assert backend_storage.remove_channel(user, first) is True
    assert backend_storage.remove_channel(user, first) is False
    assert backend_storage.get_channels(user) == [second]


def test_remove_channel_of_a_user_without_channels(backend_storage: Storage) -> None:
    user = stored_user(backend_storage)
    assert backend_storage.remove_channel(user, str(uuid.uuid4())) is False
    assert backend_storage.get_channels(user) == []


def test_channels_that_are_not_dashed_uuids_are_ignored(backend_storage: Storage) -> None:
    user, chid = subscriber(backend_storage)
    backend_storage.add_channel(user, "not-a-uuid")
    backend_storage.add_channel(user, uuid.uuid4().hex)
    assert backend_storage.get_channels(user) == [chid]


def test_channels_belong_to_their_user(backend_storage: Storage) -> None:
    user, chid = subscriber(backend_storage)
    other = stored_user(backend_storage)
    assert backend_storage.get_channels(other) == []
    backend_storage.touch_channels(user)
    backend_storage.touch_channels(other)
    assert backend_storage.get_channels(user) == [chid]
    assert backend_storage.get_channels(other) == []


# ---- messages


def test_timestamp_messages_come_back_in_sort_key_order(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    stamps = [stamp(clock, s) for s in (3, 1, 2)]
    for number, sortkey in enumerate(stamps):
        backend_storage.save_message(user, timestamp_message(clock, chid, f"v{number}", sortkey))
    highest, found = backend_storage.fetch_timestamp_messages(user, None)
    assert versions(found) == ["v1", "v2", "v0"]
    assert highest == max(stamps)
    assert backend_storage.fetch_topic_messages(user) == (None, [])


def test_a_message_comes_back_as_saved(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    sent = dataclasses.replace(
        timestamp_message(clock, chid, "v1", stamp(clock)),
        data="ZGF0YQ",
        headers={"encoding": "aes128gcm"},
        urgency="low",
    )
    backend_storage.save_message(user, sent)
    (found,) = backend_storage.fetch_timestamp_messages(user, None)[1]
    fields = ("channel_id", "version", "ttl", "timestamp", "sortkey_timestamp", "topic", "data", "headers", "urgency")
    assert [getattr(found, f) for f in fields] == [getattr(sent, f) for f in fields]
    assert found.stored is True and found.legacy is False


def test_messages_belong_to_their_user(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    other, _ = subscriber(backend_storage)
    backend_storage.save_message(user, timestamp_message(clock, chid, "mine", stamp(clock)))
    backend_storage.save_message(user, topic_message(clock, chid, "t", "mine too"))
    assert backend_storage.fetch_timestamp_messages(other, None) == (None, [])
    assert backend_storage.fetch_topic_messages(other) == (None, [])


def test_topic_messages_come_first_and_apart(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    backend_storage.save_message(user, timestamp_message(clock, chid, "stamped", stamp(clock)))
    for topic in ("b", "a"):
        backend_storage.save_message(user, topic_message(clock, chid, topic, f"topic {topic}"))
    bookmark, found = backend_storage.fetch_topic_messages(user)
    assert (bookmark, versions(found)) == (None, ["topic a", "topic b"])
    assert [m.topic for m in found] == ["a", "b"]
    assert versions(backend_storage.fetch_timestamp_messages(user, None)[1]) == ["stamped"]


def test_a_topic_message_replaces_the_one_before(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    other_chid = str(uuid.uuid4())
    backend_storage.save_message(user, topic_message(clock, chid, "news", "old"))
    backend_storage.save_message(user, topic_message(clock, other_chid, "news", "other channel"))
    backend_storage.save_message(user, topic_message(clock, chid, "news", "new"))
    found = backend_storage.fetch_topic_messages(user)[1]
    assert sorted((m.channel_id, m.version) for m in found) == sorted([(chid, "new"), (other_chid, "other channel")])


def test_delete_with_a_stale_updateid_is_refused(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    first = topic_message(clock, chid, "news", "v1")
    backend_storage.save_message(user, first)
    backend_storage.save_message(user, topic_message(clock, chid, "news", "v2"))
    assert backend_storage.delete_message(user, first.sort_key, "v1") is False
    assert versions(backend_storage.fetch_topic_messages(user)[1]) == ["v2"]
    assert backend_storage.delete_message(user, first.sort_key, "v2") is True
    assert backend_storage.fetch_topic_messages(user)[1] == []
    assert backend_storage.delete_message(user, first.sort_key, "v2") is False


def test_delete_without_updateid(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    kept, gone = (timestamp_message(clock, chid, v, stamp(clock, s)) for v, s in (("kept", 1), ("gone", 2)))
    backend_storage.save_message(user, kept)
    backend_storage.save_message(user, gone)
    assert backend_storage.delete_message(user, gone.sort_key) is True
    assert versions(backend_storage.fetch_timestamp_messages(user, None)[1]) == ["kept"]


def test_cancel_needs_only_the_uaid(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    message = topic_message(clock, chid, "news", "v1")
    backend_storage.save_message(user, message)
    assert backend_storage.cancel_message(user.uaid, message.sort_key, "v0") is False
    assert versions(backend_storage.fetch_topic_messages(user)[1]) == ["v1"]
    assert backend_storage.cancel_message(user.uaid, message.sort_key, "v1") is True
    assert backend_storage.fetch_topic_messages(user)[1] == []


def test_expired_messages_are_not_returned(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    backend_storage.save_message(user, timestamp_message(clock, chid, "short", stamp(clock), ttl=60))
    backend_storage.save_message(user, timestamp_message(clock, chid, "long", stamp(clock, 1), ttl=600))
    backend_storage.save_message(user, topic_message(clock, chid, "short", "short topic", ttl=60))
    backend_storage.save_message(user, topic_message(clock, chid, "long", "long topic", ttl=600))
    clock.advance(61)
    assert versions(backend_storage.fetch_timestamp_messages(user, None)[1]) == ["long"]
    assert versions(backend_storage.fetch_topic_messages(user)[1]) == ["long topic"]


def test_topic_fetch_returns_at_most_limit_minus_one(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    topics = [f"topic{number:02d}" for number in range(12)]
    for topic in reversed(topics):
        backend_storage.save_message(user, topic_message(clock, chid, topic, topic))
    assert versions(backend_storage.fetch_topic_messages(user)[1]) == topics[:10]
    assert versions(backend_storage.fetch_topic_messages(user, limit=4)[1]) == topics[:3]


def test_timestamp_fetch_pages_through_the_bookmark(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    stamps = [stamp(clock, number) for number in range(12)]
    for number, sortkey in enumerate(stamps):
        backend_storage.save_message(user, timestamp_message(clock, chid, f"v{number:02d}", sortkey))
    highest, first_page = backend_storage.fetch_timestamp_messages(user, None)
    assert (highest, versions(first_page)) == (stamps[9], [f"v{n:02d}" for n in range(10)])
    highest, second_page = backend_storage.fetch_timestamp_messages(user, highest)
    assert (highest, versions(second_page)) == (stamps[11], ["v10", "v11"])
    assert backend_storage.fetch_timestamp_messages(user, highest) == (None, [])
    assert versions(backend_storage.fetch_timestamp_messages(user, stamps[0], limit=2)[1]) == ["v01", "v02"]


def test_advance_bookmark_only_from_the_value_read(backend_storage: Storage, clock: Clock) -> None:
    user, _ = subscriber(backend_storage)
    first, second = stamp(clock), stamp(clock, 1)
    assert backend_storage.advance_bookmark(user, None, first) is True
    assert backend_storage.advance_bookmark(user, None, second) is False  # set meanwhile
    assert backend_storage.advance_bookmark(user, first - 1, second) is False  # moved meanwhile
    assert bookmark_of(backend_storage, user) == first
    assert backend_storage.advance_bookmark(user, first, second) is True
    assert bookmark_of(backend_storage, user) == second


def test_a_late_message_below_the_bookmark_is_read_again(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    backend_storage.save_message(user, timestamp_message(clock, chid, "read", stamp(clock, -10)))
    highest, _ = backend_storage.fetch_timestamp_messages(user, None)
    assert backend_storage.advance_bookmark(user, None, highest) is True
    late = timestamp_message(clock, chid, "late", stamp(clock, -90))
    backend_storage.save_late_messages(user, [late])
    bookmark = bookmark_of(backend_storage, user)
    assert bookmark < late.sortkey_timestamp
    assert versions(backend_storage.fetch_timestamp_messages(user, bookmark)[1]) == ["late", "read"]


def test_a_late_message_stamped_at_the_bookmark_is_read_again(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    late = timestamp_message(clock, chid, "late", stamp(clock, -90))
    assert backend_storage.advance_bookmark(user, None, late.sortkey_timestamp) is True
    backend_storage.save_late_messages(user, [late])
    bookmark = bookmark_of(backend_storage, user)
    assert bookmark < late.sortkey_timestamp
    assert versions(backend_storage.fetch_timestamp_messages(user, bookmark)[1]) == ["late"]


def test_a_late_message_leaves_a_lower_bookmark_alone(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    low = stamp(clock, -100)
    assert backend_storage.advance_bookmark(user, None, low) is True
    backend_storage.save_late_messages(user, [timestamp_message(clock, chid, "late", stamp(clock, -90))])
    assert bookmark_of(backend_storage, user) == low


def test_a_late_message_makes_a_pending_first_advance_fail(backend_storage: Storage, clock: Clock) -> None:
    """A drain that read no bookmark must read again: the late message may sort below its page."""
    user, chid = subscriber(backend_storage)
    backend_storage.save_late_messages(user, [timestamp_message(clock, chid, "late", stamp(clock, -90))])
    bookmark = bookmark_of(backend_storage, user)
    assert bookmark is not None and bookmark < stamp(clock, -90)
    assert backend_storage.advance_bookmark(user, None, stamp(clock)) is False
    assert versions(backend_storage.fetch_timestamp_messages(user, bookmark)[1]) == ["late"]


def test_late_topic_messages_leave_the_bookmark_alone(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    high = stamp(clock)
    assert backend_storage.advance_bookmark(user, None, high) is True
    backend_storage.save_late_messages(user, [topic_message(clock, chid, "news", "late topic")])
    bookmark, found = backend_storage.fetch_topic_messages(user)
    assert (bookmark, versions(found)) == (high, ["late topic"])


def test_late_messages_with_one_key_keep_the_last(backend_storage: Storage, clock: Clock) -> None:
    user, chid = subscriber(backend_storage)
    sortkey = stamp(clock, -5)
    backend_storage.save_late_messages(
        user,
        [
            topic_message(clock, chid, "news", "first"),
            timestamp_message(clock, chid, "stamped first", sortkey),
            topic_message(clock, chid, "news", "second"),
            timestamp_message(clock, chid, "stamped second", sortkey),
        ],
    )
    assert versions(backend_storage.fetch_topic_messages(user)[1]) == ["second"]
    assert versions(backend_storage.fetch_timestamp_messages(user, None)[1]) == ["stamped second"]


# ---- the in-memory backend's own parts (not part of the interface)


@pytest.fixture
def memory_storage(make_settings, metrics, clock: Clock) -> MemoryStorage:
    store = MemoryStorage(make_settings(), metrics, clock=clock)
    store.set_up()
    return store


def test_memory_failure_hook_fails_the_next_call_only(memory_storage: MemoryStorage) -> None:
    user = stored_user(memory_storage)
    memory_storage.fail_next("get_user")
    memory_storage.fail_next("get_user", StorageUnavailable("down again", "get_user"))
    with pytest.raises(StorageUnavailable, match="injected"):
        memory_storage.get_user(user.uaid)
    with pytest.raises(StorageUnavailable, match="down again"):
        memory_storage.get_user(user.uaid)
    assert memory_storage.get_user(user.uaid).uaid == user.uaid
    with pytest.raises(ValueError):
        memory_storage.fail_next("get_usr")


def test_memory_purge_deletes_only_what_expired(memory_storage: MemoryStorage, clock: Clock) -> None:
    user, chid = subscriber(memory_storage)
    memory_storage.save_message(user, timestamp_message(clock, chid, "short", stamp(clock), ttl=60))
    memory_storage.save_message(user, timestamp_message(clock, chid, "long", stamp(clock, 1), ttl=600))
    clock.advance(61)
    assert memory_storage.purge_expired() == 1
    clock.advance(RECORD_LIFETIME)  # the record, its channel list and the other message
    assert list(memory_storage.maintain_tables(purge_expired=True)) == [
        MAINTENANCE_LINE,
        "memory store: purged 3 expired entries",
    ]
    assert memory_storage.purge_expired() == 0
