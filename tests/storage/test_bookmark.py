"""The conditional bookmark writes behind the drain, against a real dynalite."""

from __future__ import annotations

import time
import uuid

from autopush_flask.db import Notification, Storage


def subscribed(storage: Storage) -> str:
    uaid = uuid.uuid4().hex
    storage.messages().add_channel(uaid, str(uuid.uuid4()))
    return uaid


def bookmark(storage: Storage, uaid: str) -> int | None:
    return storage.messages().fetch_topic_messages(uaid)[0]


def test_advance_only_from_the_value_read(storage: Storage) -> None:
    uaid, store = subscribed(storage), storage.messages()
    assert store.advance_bookmark(uaid, None, 100) is True
    assert store.advance_bookmark(uaid, None, 200) is False  # it was set meanwhile
    assert store.advance_bookmark(uaid, 50, 200) is False  # it moved meanwhile
    assert store.advance_bookmark(uaid, 100, 200) is True
    assert bookmark(storage, uaid) == 200


def test_lower_moves_a_higher_bookmark_below_the_stamp_and_leaves_a_lower_one(storage: Storage) -> None:
    uaid, store = subscribed(storage), storage.messages()
    store.advance_bookmark(uaid, None, 500)
    store.lower_bookmark(uaid, 300)
    assert bookmark(storage, uaid) == 299
    store.lower_bookmark(uaid, 400)
    assert bookmark(storage, uaid) == 299


def test_lower_sets_an_absent_bookmark_to_zero_so_a_pending_advance_fails(storage: Storage) -> None:
    uaid, store = subscribed(storage), storage.messages()
    store.lower_bookmark(uaid, 300)
    assert bookmark(storage, uaid) == 0  # still "from the start"
    assert store.advance_bookmark(uaid, None, 1000) is False


def test_lower_without_a_channel_list_creates_nothing(storage: Storage) -> None:
    uaid, store = uuid.uuid4().hex, storage.messages()
    store.lower_bookmark(uaid, 300)
    assert store.fetch_topic_messages(uaid) == (None, [])


def test_save_late_messages_reads_again_below_the_bookmark(storage: Storage) -> None:
    uaid, store = subscribed(storage), storage.messages()
    chid = str(uuid.uuid4())
    now = int(time.time())
    store.advance_bookmark(uaid, None, now * 1_000_000)
    late = Notification(channel_id=chid, version="late", ttl=60, timestamp=now, sortkey_timestamp=(now - 90) * 1_000_000)
    store.save_late_messages(uaid, [late])
    _, found = store.fetch_timestamp_messages(uaid, bookmark(storage, uaid))
    assert [m.version for m in found] == ["late"]
