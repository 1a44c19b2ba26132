"""Ack codes (docs/protocol.md#ack): each acknowledged update is counted by its
bounded ``code`` tag, and a decryption failure (101) is logged, without sockets.

Storage runs on the in-memory store, as in tests/connection/test_session.py.
"""

from __future__ import annotations

import json
import logging
import uuid
from typing import Any

import pytest

from autopush_flask.connection.protocol import Ack, AckedUpdate, parse_client_message
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User
from autopush_flask.db.memory import MemoryStorage
from tests.connection.harness import Client, Node

MISSING = object()
PAYLOAD = "c2VjcmV0IHBheWxvYWQ"


@pytest.fixture
def node(make_settings, metrics) -> Node:
    storage = MemoryStorage(make_settings(), metrics)
    storage.set_up()
    return Node(storage, CryptoKeys([CryptoKeys.generate_key()]))


def notification(node: Node, uaid: str, channel_id: str) -> Notification:
    stamp = node.ctx.sortkeys.next()
    message_id = MessageId.for_timestamp(uuid.UUID(uaid), uuid.UUID(channel_id), stamp)
    return Notification(
        channel_id=channel_id, version=message_id.encode(node.ctx.crypto_keys), ttl=60,
        timestamp=int(node.clock()), sortkey_timestamp=stamp, data=PAYLOAD, headers={"encoding": "aes128gcm"},
    )


def connected(node: Node) -> tuple[Client, str, str]:
    client = node.client()
    uaid = client.hello()["uaid"]
    channel_id = str(uuid.uuid4())
    assert client.register(channel_id)["status"] == 200
    return client, uaid, channel_id


def ack(client: Client, sent: dict, code: Any = MISSING, channel_id: str | None = None) -> list[Any]:
    update = {"channelID": channel_id or sent["channelID"], "version": sent["version"]}
    if code is not MISSING:
        update["code"] = code
    return client.send({"messageType": "ack", "updates": [update]})


def code_tags(node: Node) -> list[dict]:
    return [call.tags for call in node.metrics.find("ua.notification.ack")]


HOSTILE = ["101", "x" * 500, 999, -1, 101.0, True, {"code": 101}, [100]]  # JSON null: see below


@pytest.mark.parametrize(
    ("code", "tag"),
    [(100, "100"), (101, "101"), (102, "102"), (MISSING, "none")] + [(value, "other") for value in HOSTILE],
)
def test_each_acked_update_is_counted_by_code(node: Node, code: Any, tag: str) -> None:
    client, uaid, channel_id = connected(node)
    [sent] = client.deliver(notification(node, uaid, channel_id))
    assert ack(client, sent, code) == []
    assert code_tags(node) == [{"code": tag}]
    assert node.metrics.find("ua.command.ack")[-1].tags == {}
    client.disconnect()  # every code acknowledges: nothing is left to store
    assert node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None) == (None, [])


def test_json_null_code_counts_as_absent(node: Node) -> None:
    client, uaid, channel_id = connected(node)
    [sent] = client.deliver(notification(node, uaid, channel_id))
    ack(client, sent, None)
    assert code_tags(node) == [{"code": "none"}]


def test_decryption_failure_is_logged_with_channel_and_uaid_hash_only(node: Node, caplog) -> None:
    client, uaid, channel_id = connected(node)
    [sent] = client.deliver(notification(node, uaid, channel_id))
    with caplog.at_level(logging.INFO, logger="autopush.connection"):
        ack(client, sent, 101, channel_id=str(uuid.uuid4()))  # the client's channelID is not trusted
    [record] = [r for r in caplog.records if r.getMessage() == "Decryption failed"]
    assert record.levelno == logging.INFO
    assert dict(record.fields) == {"channel_id": channel_id, "uaid_hash": uaid}
    assert PAYLOAD not in json.dumps(dict(record.fields)) + caplog.text


@pytest.mark.parametrize("code", [100, 102, MISSING, "101"])
def test_other_codes_are_not_logged(node: Node, caplog, code: Any) -> None:
    client, uaid, channel_id = connected(node)
    [sent] = client.deliver(notification(node, uaid, channel_id))
    with caplog.at_level(logging.DEBUG, logger="autopush.connection"):
        ack(client, sent, code)
    assert [r for r in caplog.records if r.getMessage() == "Decryption failed"] == []


def test_stored_notification_acked_with_101_is_counted_and_deleted(node: Node) -> None:
    client, uaid, channel_id = connected(node)
    client.disconnect()
    node.clock.advance(1)
    node.ctx.storage.save_message(User(uaid=uaid), notification(node, uaid, channel_id))
    again = node.client()
    again.hello(uaid)
    [sent] = again.notifications()
    ack(again, sent, 101)
    assert code_tags(node) == [{"code": "101"}]
    assert node.ctx.storage.fetch_timestamp_messages(User(uaid=uaid), None)[1] == []


def test_acks_of_unknown_or_repeated_versions_are_not_counted(node: Node) -> None:
    """A client cannot inflate the 101 rate with made-up or replayed acks."""
    client, uaid, channel_id = connected(node)
    [sent] = client.deliver(notification(node, uaid, channel_id))
    ack(client, sent, 100)
    ack(client, sent, 101)
    ack(client, {"channelID": channel_id, "version": "made-up"}, 101)
    assert code_tags(node) == [{"code": "100"}]
    assert len(node.metrics.find("ua.command.ack")) == 3


def test_parser_keeps_each_well_formed_update_with_its_tag() -> None:
    text = json.dumps({"messageType": "ack", "updates": [
        {"channelID": "a", "version": "v1", "code": 101},
        {"channelID": "b", "version": "v2"},
        {"channelID": "c", "version": 3, "code": 100},  # malformed: dropped
        {"channelID": "d", "version": "v4", "code": "<script>"},
    ]})
    assert parse_client_message(text) == Ack((
        AckedUpdate("a", "v1", "101"), AckedUpdate("b", "v2", "none"), AckedUpdate("d", "v4", "other"),
    ))
