"""Message-table operations of docs/architecture.md#storage-interface against a real dynalite (checklist 147–149)."""

from __future__ import annotations

import time
import uuid

from autopush_flask.db import Notification, Storage
from autopush_flask.db.dynamodb.attributes import from_item
from autopush_flask.db.models import THIRTY_DAYS


def new_uaid() -> str:
    return uuid.uuid4().hex


def new_chid() -> str:
    return str(uuid.uuid4())


def raw_items(storage: Storage, uaid: str) -> list[dict]:
    response = storage.db.client.query(
        TableName=storage.messages().table,
        KeyConditionExpression="uaid = :u",
        ExpressionAttributeValues={":u": {"S": uaid}},
        ConsistentRead=True,
    )
    return response["Items"]


def stamped(chid: str, stamp: int, ttl: int = 60, **extra) -> Notification:
    return Notification(
        channel_id=chid, version=f"v-{stamp}", ttl=ttl, timestamp=int(time.time()),
        sortkey_timestamp=stamp, **extra,
    )


def topical(chid: str, topic: str, version: str, **extra) -> Notification:
    return Notification(
        channel_id=chid, version=version, ttl=60, timestamp=int(time.time()), topic=topic, **extra
    )


def test_149_channel_list_item_holds_a_string_set_and_expiry(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    before = int(time.time())
    storage.messages().add_channel(uaid, chid)
    [item] = raw_items(storage, uaid)
    assert item["chidmessageid"] == {"S": " "}
    assert item["chids"] == {"SS": [chid]}
    assert before + THIRTY_DAYS <= int(item["expiry"]["N"]) <= int(time.time()) + THIRTY_DAYS


def test_add_channel_is_idempotent_and_get_channels_lists_all(storage: Storage) -> None:
    uaid, first, second = new_uaid(), new_chid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, first)
    store.add_channel(uaid, first)
    store.add_channels(uaid, [second])
    assert sorted(store.get_channels(uaid)) == sorted([first, second])
    assert isinstance(store.get_channels(uaid), list)


def test_get_channels_ignores_non_uuid_entries_and_missing_items(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    assert store.get_channels(uaid) == []
    store.add_channels(uaid, [chid, "not-a-uuid"])
    assert store.get_channels(uaid) == [chid]


def test_remove_channel_reports_membership(storage: Storage) -> None:
    uaid, kept, removed = new_uaid(), new_chid(), new_chid()
    store = storage.messages()
    store.add_channels(uaid, [kept, removed])
    assert store.remove_channel(uaid, removed) is True
    assert store.remove_channel(uaid, removed) is False
    assert store.get_channels(uaid) == [kept]
    assert store.remove_channel(uaid, kept) is True
    assert store.get_channels(uaid) == []  # the emptied set disappears
    assert store.remove_channel(new_uaid(), kept) is False


def test_remove_channel_never_creates_a_channel_list(storage: Storage) -> None:
    uaid = new_uaid()
    storage.messages().remove_channel(uaid, new_chid())
    assert raw_items(storage, uaid) == []


def test_touch_channels_refreshes_expiry_only_for_existing_lists(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, chid)
    storage.db.client.update_item(
        TableName=store.table,
        Key={"uaid": {"S": uaid}, "chidmessageid": {"S": " "}},
        UpdateExpression="SET expiry = :e",
        ExpressionAttributeValues={":e": {"N": "5"}},
    )
    store.touch_channels(uaid)
    [item] = raw_items(storage, uaid)
    assert int(item["expiry"]["N"]) >= int(time.time()) + THIRTY_DAYS - 5
    other = new_uaid()
    store.touch_channels(other)
    assert raw_items(storage, other) == []


def test_147_timestamp_message_item_layout(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    message = stamped(chid, 1_700_000_000_123_456, ttl=120, data="AAEC", headers={"encoding": "aes128gcm"})
    storage.messages().save_message(uaid, message)
    [item] = [from_item(i) for i in raw_items(storage, uaid)]
    assert item["chidmessageid"] == f"02:1700000000123456:{chid}"
    assert item["ttl"] == 120
    assert item["timestamp"] == message.timestamp
    assert item["updateid"] == message.version
    assert item["expiry"] == message.timestamp + 120
    assert item["data"] == "AAEC"
    assert item["headers"] == {"encoding": "aes128gcm"}


def test_147_message_without_body_has_neither_data_nor_headers(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    storage.messages().save_message(uaid, stamped(chid, 1, headers={"encoding": "aes128gcm"}))
    [item] = raw_items(storage, uaid)
    assert "data" not in item and "headers" not in item


def test_expiry_is_capped_at_thirty_days(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    message = stamped(chid, 1, ttl=60 * 24 * 3600)
    storage.messages().save_message(uaid, message)
    [item] = raw_items(storage, uaid)
    assert int(item["expiry"]["N"]) == message.timestamp + THIRTY_DAYS


def test_148_topic_message_key_and_replacement(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    store.save_message(uaid, topical(chid, "Inbox", "first", data="AQ", headers={"encoding": "aes128gcm"}))
    store.save_message(uaid, topical(chid, "Inbox", "second", data="Ag", headers={"encoding": "aes128gcm"}))
    [item] = [from_item(i) for i in raw_items(storage, uaid)]
    assert item["chidmessageid"] == f"01:{chid}:Inbox"
    assert (item["updateid"], item["data"]) == ("second", "Ag")


def test_fetch_topic_messages_returns_bookmark_and_topics_only(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, chid)
    store.update_bookmark(uaid, 42)
    store.save_message(uaid, topical(chid, "a", "va"))
    store.save_message(uaid, stamped(chid, 100))
    bookmark, messages = store.fetch_topic_messages(uaid)
    assert bookmark == 42
    assert [(m.topic, m.version, m.channel_id) for m in messages] == [("a", "va", chid)]


def test_fetch_topic_messages_limit_counts_the_channel_list(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, chid)
    for index in range(12):
        store.save_message(uaid, topical(chid, f"t{index:02d}", f"v{index}"))
    bookmark, messages = store.fetch_topic_messages(uaid)
    assert bookmark is None
    assert len(messages) == 10


def test_fetch_timestamp_messages_starts_after_topics(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, chid)
    store.save_message(uaid, topical(chid, "zzz", "topic"))
    store.save_message(uaid, stamped(chid, 1_000_000_000_000_002))
    store.save_message(uaid, stamped(chid, 1_000_000_000_000_001))
    high, messages = store.fetch_timestamp_messages(uaid, None)
    assert [m.sortkey_timestamp for m in messages] == [1_000_000_000_000_001, 1_000_000_000_000_002]
    assert high == 1_000_000_000_000_002
    assert all(m.topic is None for m in messages)


def test_fetch_timestamp_messages_excludes_the_bookmark_itself(storage: Storage) -> None:
    uaid = new_uaid()
    store = storage.messages()
    chid_low, chid_high = "00000000-0000-4000-8000-000000000000", "ffffffff-ffff-4fff-bfff-ffffffffffff"
    for chid in (chid_low, chid_high):
        store.save_message(uaid, stamped(chid, 1_000_000_000_000_005))
    store.save_message(uaid, stamped(chid_low, 1_000_000_000_000_006))
    high, messages = store.fetch_timestamp_messages(uaid, 1_000_000_000_000_005)
    assert [(m.sortkey_timestamp, m.channel_id) for m in messages] == [(1_000_000_000_000_006, chid_low)]
    assert high == 1_000_000_000_000_006


def test_fetch_timestamp_messages_limit_and_empty_result(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    assert store.fetch_timestamp_messages(uaid, None) == (None, [])
    store.save_messages(uaid, [stamped(chid, 1_000_000_000_000_000 + i) for i in range(15)])
    high, first = store.fetch_timestamp_messages(uaid, None)
    assert len(first) == 10 and high == 1_000_000_000_000_009
    high, rest = store.fetch_timestamp_messages(uaid, high)
    assert len(rest) == 5 and high == 1_000_000_000_000_014


def test_save_messages_writes_batches_over_25_items(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    messages = [stamped(chid, 1_000_000_000_000_000 + i) for i in range(60)]
    storage.messages().save_messages(uaid, messages)
    assert len(raw_items(storage, uaid)) == 60


def test_save_messages_keeps_the_newest_of_repeated_topic_keys(storage: Storage) -> None:
    """DynamoDB refuses a batch whose keys repeat: all of it would be lost."""
    uaid, chid, other = new_uaid(), new_chid(), new_chid()
    batch = [
        topical(chid, "Inbox", "older"),
        stamped(other, 1_000_000_000_000_001),
        topical(chid, "Inbox", "newer"),
        topical(other, "Inbox", "alone"),
    ]
    storage.messages().save_messages(uaid, batch)
    items = {i["chidmessageid"]: i.get("updateid") for i in map(from_item, raw_items(storage, uaid))}
    assert len(items) == 3
    assert items[f"01:{chid}:Inbox"] == "newer"
    assert items[f"01:{other}:Inbox"] == "alone"


def test_delete_message_unconditional(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    message = stamped(chid, 7)
    store = storage.messages()
    store.save_message(uaid, message)
    assert store.delete_message(uaid, message.sort_key) is True
    assert raw_items(storage, uaid) == []
    assert store.delete_message(uaid, message.sort_key) is True  # idempotent


def test_delete_message_conditional_spares_a_replacement(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    old, new = topical(chid, "Inbox", "old"), topical(chid, "Inbox", "new")
    store.save_message(uaid, old)
    store.save_message(uaid, new)
    assert store.delete_message(uaid, old.sort_key, updateid="old") is False
    assert [m.version for m in store.fetch_topic_messages(uaid)[1]] == ["new"]
    assert store.delete_message(uaid, new.sort_key, updateid="new") is True
    assert raw_items(storage, uaid) == []


def test_update_bookmark_sets_current_timestamp(storage: Storage) -> None:
    uaid, chid = new_uaid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, chid)
    store.update_bookmark(uaid, 1_700_000_000_000_000)
    [item] = [from_item(i) for i in raw_items(storage, uaid)]
    assert item["current_timestamp"] == 1_700_000_000_000_000
    assert item["expiry"] >= int(time.time()) + 59 * 24 * 3600
    assert item["chids"] == [chid]


def test_save_channels_overwrites_the_channel_list(storage: Storage) -> None:
    uaid, old, new = new_uaid(), new_chid(), new_chid()
    store = storage.messages()
    store.add_channel(uaid, old)
    store.update_bookmark(uaid, 5)
    store.save_channels(uaid, [new])
    [item] = [from_item(i) for i in raw_items(storage, uaid)]
    assert item["chids"] == [new]
    assert "current_timestamp" not in item


def test_legacy_and_unknown_sort_keys(storage: Storage, metrics) -> None:
    uaid, chid = new_uaid(), "01234567-89ab-4def-8123-456789abcdef"
    table = storage.messages().table
    for key in (f"{chid}:legacyversion", "01:garbage", "0zz"):
        storage.db.client.put_item(
            TableName=table,
            Item={"uaid": {"S": uaid}, "chidmessageid": {"S": key}, "ttl": {"N": "60"},
                  "timestamp": {"N": str(int(time.time()))}},
        )
    _, messages = storage.messages().fetch_topic_messages(uaid)
    assert [(m.legacy, m.version, m.channel_id) for m in messages] == [(True, "legacyversion", chid)]
    assert messages[0].deleted_on_ack
    assert len(metrics.find("database.unknown_sort_key")) == 1
