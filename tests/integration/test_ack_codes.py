"""Ack codes over a real socket (docs/protocol.md#ack): a connection node counts each
acknowledged update by its bounded ``code`` tag over statsd, and logs decryption
failures (101) with the channel id and ``uaid_hash``, never the payload or the UAID.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
import requests

from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.statsd_sink import StatsdSink

ACKS = "autoconnect.ua.notification.ack"
MISSING = object()
PAYLOAD = b"secret payload bytes"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, statsd: StatsdSink) -> Stack:
    return start_stack(request, "ack-codes", **statsd.settings(), AUTOPUSH_LOG_LEVEL="info")


def delivered(stack: Stack) -> tuple[PushClient, str, dict]:
    """A browser that received one notification with a body: (client, channel_id, notification)."""
    client = stack.client()
    client.hello()
    channel_id = str(uuid.uuid4())
    reply = client.register(channel_id)
    assert reply["status"] == 200
    response = requests.post(reply["pushEndpoint"], data=PAYLOAD, timeout=10,
                             headers={"TTL": "60", "Content-Encoding": "aes128gcm"})
    assert response.status_code == 201, response.text
    notification = client.receive()
    assert notification["messageType"] == "notification"
    return client, channel_id, notification


def ack(client: PushClient, notification: dict, code: Any) -> None:
    update = {"channelID": notification["channelID"], "version": notification["version"]}
    if code is not MISSING:
        update["code"] = code
    client.send({"messageType": "ack", "updates": [update]})
    client.send({})  # the ping's answer shows the ack was handled first
    assert client.receive() == "{}"


@pytest.mark.parametrize(
    ("code", "tag"),
    [(100, "100"), (101, "101"), (102, "102"), (MISSING, "none"), ("101,code:100", "other"), (2**70, "other")],
)
def test_each_code_is_counted_under_its_bounded_tag(stack: Stack, statsd: StatsdSink, code: Any, tag: str) -> None:
    before = {value: statsd.count(ACKS, code=value) for value in ("100", "101", "102", "none", "other")}
    client, _, notification = delivered(stack)
    ack(client, notification, code)
    assert statsd.wait_count(ACKS, before[tag] + 1, code=tag) == before[tag] + 1
    after = {value: statsd.count(ACKS, code=value) for value in before}
    assert {value: after[value] - before[value] for value in before} == {
        value: int(value == tag) for value in before
    }


def test_decryption_failure_is_logged_without_payload_or_uaid(stack: Stack) -> None:
    client, channel_id, notification = delivered(stack)
    ack(client, notification, 101)  # answered ping: the line is written (logging flushes each record)
    [line] = [
        json.loads(text) for text in stack.connection.log().splitlines()
        if '"Decryption failed"' in text and channel_id in text
    ]
    fields = line["Fields"]
    assert line["Severity"] == 6
    assert fields["channel_id"] == channel_id
    assert len(fields["uaid_hash"]) == 16 and fields["uaid_hash"] != client.uaid
    assert client.uaid not in json.dumps(line)
    assert notification["data"] not in json.dumps(line)
