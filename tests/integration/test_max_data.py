"""The default push body cap over real sockets (docs/protocol.md#push): 5630 bytes,
what Mozilla's server accepts, is delivered whole; one byte more is 413 errno 104
and reaches nobody; the RFC 8030 minimum of 4096 is delivered too.

The stack sets no ``AUTOPUSH_MAX_DATA``, so this is the shipped default.
"""

from __future__ import annotations

import os
import uuid

import pytest
import requests

from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.webpush import b64url_decode

DEFAULT_MAX_DATA = 5630
RFC_MINIMUM = 4096


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    assert "AUTOPUSH_MAX_DATA" not in os.environ
    return start_stack(request, "max-data")


def subscribe(stack: Stack) -> tuple[PushClient, str]:
    client = stack.client()
    client.hello()
    reply = client.register(str(uuid.uuid4()))
    assert reply["status"] == 200
    return client, reply["pushEndpoint"]


def push(endpoint: str, body: bytes) -> requests.Response:
    return requests.post(endpoint, data=body, timeout=10, headers={"TTL": "60", "Content-Encoding": "aes128gcm"})


@pytest.mark.parametrize("size", [RFC_MINIMUM, DEFAULT_MAX_DATA])
def test_bodies_up_to_the_default_cap_are_delivered_whole(stack: Stack, size: int) -> None:
    client, endpoint = subscribe(stack)
    body = os.urandom(size)
    response = push(endpoint, body)
    assert response.status_code == 201, response.text
    notification = client.receive()
    assert b64url_decode(notification["data"]) == body
    client.ack(notification)


def test_one_byte_over_the_default_cap_is_413_104_and_not_delivered(stack: Stack) -> None:
    client, endpoint = subscribe(stack)
    response = push(endpoint, b"x" * (DEFAULT_MAX_DATA + 1))
    assert response.status_code == 413, response.text
    assert response.json()["errno"] == 104
    assert response.json()["message"].endswith(f"smaller than {DEFAULT_MAX_DATA} bytes")
    client.send({})
    assert client.receive() == "{}"  # nothing was delivered before the ping's answer
