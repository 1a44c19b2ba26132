"""Small steps of delivery tests: subscribe, push, read what a browser gets, list what is stored."""

from __future__ import annotations

import base64
import uuid

import requests
import websocket

from autopush_flask.db import Notification, User
from tests.support.push_client import PushClient
from tests.support.stack import Stack

QUIET = 1.5  # seconds a browser waits to be sure nothing more arrives


def push(endpoint: str, data: bytes, ttl: int = 600) -> requests.Response:
    """An encrypted-looking push; ``Connection: close`` so no idle connection holds a stopping node."""
    headers = {"TTL": str(ttl), "Content-Encoding": "aes128gcm", "Connection": "close"}
    return requests.post(endpoint, data=data, headers=headers, timeout=15)


def location_id(response: requests.Response) -> str:
    assert response.status_code == 201, response.text
    return response.headers["Location"].rsplit("/m/", 1)[1]


def stored(stack: Stack, uaid: str) -> list[Notification]:
    """Every timestamp message stored for ``uaid``, whatever its bookmark."""
    return stack.storage.fetch_timestamp_messages(User(uaid=uaid), None)[1]


def subscribe(stack: Stack) -> tuple[PushClient, str, str]:
    """A connected browser with one subscription: (client, uaid, endpoint)."""
    client = stack.client()
    uaid = client.hello()["uaid"]
    endpoint = client.register(str(uuid.uuid4()))["pushEndpoint"]
    return client, uaid, endpoint


def point_at(stack: Stack, uaid: str, node_url: str) -> None:
    """Make the router record name ``node_url`` (a newer connection than the real one)."""
    connected_at = stack.storage.get_user(uaid).connected_at + 1
    assert stack.storage.claim_user(User(uaid=uaid), node_url, connected_at)[0]


def notifications(client: PushClient, wait: float = QUIET, ack: bool = True) -> list[dict]:
    """Every notification that arrives until the browser has heard nothing for ``wait`` seconds."""
    client.ws.settimeout(wait)
    found = []
    try:
        while True:
            message = client.receive()
            if isinstance(message, dict) and message.get("messageType") == "notification":
                found.append(message)
                if ack:
                    client.ack(message)
    except (websocket.WebSocketTimeoutException, websocket.WebSocketConnectionClosedException):
        pass
    client.ws.settimeout(client.timeout)
    return found


def payload(notification: dict) -> bytes:
    data = notification["data"]
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
