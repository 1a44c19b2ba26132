"""Router-table operations of docs/architecture.md#storage-interface against a real dynalite."""

from __future__ import annotations

import uuid

from autopush_flask.db import Storage, User
from autopush_flask.db.dynamodb.attributes import from_item


def new_uaid() -> str:
    return uuid.uuid4().hex


def raw_router_item(storage: Storage, uaid: str) -> dict:
    response = storage.db.client.get_item(
        TableName=storage.router.table, Key={"uaid": {"S": uaid}}, ConsistentRead=True
    )
    return response.get("Item", {})


def connected_user(uaid: str, connected_at: int = 1_000, node_id: str = "http://a:8081") -> User:
    return User(uaid=uaid, connected_at=connected_at, node_id=node_id, record_version=1)


def test_150_router_item_stores_simple_uaid_and_millisecond_connected_at(storage: Storage) -> None:
    uaid = new_uaid()
    assert storage.router.add_user(connected_user(uaid, connected_at=1_700_000_000_123))
    item = raw_router_item(storage, uaid)
    assert item["uaid"] == {"S": uaid}
    assert len(uaid) == 32
    assert item["connected_at"] == {"N": "1700000000123"}
    assert item["router_type"] == {"S": "webpush"}
    assert "router_data" not in item  # absent attributes are never written


def test_get_user_returns_plain_types(storage: Storage) -> None:
    uaid = new_uaid()
    user = User(
        uaid=uaid, router_type="fcm", connected_at=5, record_version=1,
        router_data={"token": "abcdefgh", "app_id": "app", "nested": {"n": 3}},
    )
    storage.router.add_user(user)
    loaded = storage.router.get_user(uaid)
    assert loaded == user
    assert type(loaded.connected_at) is int
    assert type(loaded.router_data["nested"]["n"]) is int


def test_get_user_missing_is_none(storage: Storage) -> None:
    assert storage.router.get_user(new_uaid()) is None


def test_get_user_deletes_an_item_holding_only_uaid(storage: Storage) -> None:
    uaid = new_uaid()
    storage.db.client.put_item(TableName=storage.router.table, Item={"uaid": {"S": uaid}})
    assert storage.router.get_user(uaid) is None
    assert raw_router_item(storage, uaid) == {}


def test_add_user_refuses_an_existing_uaid(storage: Storage) -> None:
    uaid = new_uaid()
    assert storage.router.add_user(connected_user(uaid, connected_at=1))
    assert storage.router.add_user(connected_user(uaid, connected_at=2, node_id="http://b:1")) is False
    assert storage.router.get_user(uaid).connected_at == 1


def test_update_user_sets_attributes_and_returns_previous_values(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(connected_user(uaid, connected_at=1_000, node_id="http://a:8081"))
    ok, previous = storage.router.update_user(connected_user(uaid, 2_000, "http://b:8081"))
    assert ok is True
    assert previous["node_id"] == "http://a:8081"
    assert previous["connected_at"] == 1_000
    stored = storage.router.get_user(uaid)
    assert (stored.node_id, stored.connected_at) == ("http://b:8081", 2_000)


def test_update_user_refuses_an_older_or_equal_connected_at(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(connected_user(uaid, connected_at=5_000))
    assert storage.router.update_user(connected_user(uaid, 4_000, "http://b:1")) == (False, {})
    assert storage.router.update_user(connected_user(uaid, 5_000, "http://b:1")) == (False, {})
    assert storage.router.get_user(uaid).node_id == "http://a:8081"


def test_update_user_accepts_any_connected_at_when_no_node_id(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(User(uaid=uaid, connected_at=9_000, record_version=1))
    ok, _ = storage.router.update_user(connected_user(uaid, 1_000))
    assert ok is True
    assert storage.router.get_user(uaid).connected_at == 1_000


def test_update_user_refuses_a_different_router_type(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(User(uaid=uaid, router_type="fcm", connected_at=1, record_version=1))
    assert storage.router.update_user(connected_user(uaid, 10))[0] is False
    assert storage.router.get_user(uaid).router_type == "fcm"


def test_update_user_accepts_a_record_without_router_type(storage: Storage) -> None:
    uaid = new_uaid()
    storage.db.client.put_item(
        TableName=storage.router.table,
        Item={"uaid": {"S": uaid}, "connected_at": {"N": "1"}},
    )
    assert storage.router.update_user(connected_user(uaid, 10))[0] is True
    assert storage.router.get_user(uaid).router_type == "webpush"


def test_update_user_refuses_a_missing_record(storage: Storage) -> None:
    uaid = new_uaid()
    assert storage.router.update_user(connected_user(uaid, 10)) == (False, {})
    assert raw_router_item(storage, uaid) == {}


def test_update_router_data_changes_type_and_data_only_when_the_record_exists(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(
        User(uaid=uaid, router_type="gcm", connected_at=1, router_data={"token": "old"}, record_version=1)
    )
    assert storage.router.update_router_data(uaid, "fcm", {"token": "newtoken99", "app_id": "a"}, 7)
    user = storage.router.get_user(uaid)
    assert (user.router_type, user.router_data["token"], user.connected_at) == ("fcm", "newtoken99", 7)
    missing = new_uaid()
    assert storage.router.update_router_data(missing, "fcm", {"token": "x"}, 1) is False
    assert raw_router_item(storage, missing) == {}


def test_remove_node_id_requires_both_node_id_and_connected_at(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(connected_user(uaid, connected_at=100, node_id="http://a:8081"))
    assert storage.router.remove_node_id(uaid, "http://a:8081", 99) is False
    assert storage.router.remove_node_id(uaid, "http://other:8081", 100) is False
    assert storage.router.get_user(uaid).node_id == "http://a:8081"
    assert storage.router.remove_node_id(uaid, "http://a:8081", 100) is True
    user = storage.router.get_user(uaid)
    assert user.node_id is None and user.connected_at == 100


def test_remove_node_id_on_missing_record_is_false(storage: Storage) -> None:
    assert storage.router.remove_node_id(new_uaid(), "http://a:8081", 1) is False


def test_drop_user_reports_whether_a_record_existed(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(connected_user(uaid))
    assert storage.router.drop_user(uaid) is True
    assert storage.router.get_user(uaid) is None
    assert storage.router.drop_user(uaid) is False


def test_update_message_month_sets_current_month_and_last_connect(storage: Storage) -> None:
    uaid = new_uaid()
    storage.router.add_user(connected_user(uaid))
    assert storage.router.update_message_month(uaid, "message_2026_11", 202611040007)
    item = from_item(raw_router_item(storage, uaid))
    assert (item["current_month"], item["last_connect"]) == ("message_2026_11", 202611040007)
    assert storage.router.update_message_month(new_uaid(), "message_2026_11", 1) is False


def test_get_user_with_channels_reads_both_in_one_call(storage: Storage, metrics) -> None:
    uaid, chid = new_uaid(), "01234567-89ab-4cde-8f01-23456789abcd"
    storage.router.add_user(connected_user(uaid))
    storage.messages().add_channels(uaid, [chid, "not-a-uuid"])
    user, channels = storage.get_user_with_channels(uaid)
    assert (user.uaid, channels) == (uaid, [chid])
    assert storage.get_user_with_channels(new_uaid()) == (None, [])
    lonely = new_uaid()
    storage.router.add_user(connected_user(lonely))
    assert storage.get_user_with_channels(lonely)[1] == []


def test_get_user_with_channels_drops_debris(storage: Storage) -> None:
    uaid = new_uaid()
    storage.db.client.put_item(TableName=storage.router.table, Item={"uaid": {"S": uaid}})
    assert storage.get_user_with_channels(uaid) == (None, [])
    assert raw_router_item(storage, uaid) == {}
