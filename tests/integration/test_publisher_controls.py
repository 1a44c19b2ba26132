"""Publisher controls over real HTTP (docs/protocol.md#publisher-controls).

One endpoint node (one worker, so the per-worker rate is exact) with two
allowed application server keys and a rate of 3 pushes a minute, pushed to
with pywebpush.
"""

from __future__ import annotations

import uuid

import pytest
import requests
from pywebpush import WebPushException

from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.crypto.keys import CryptoKeys
from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer, Subscription, b64url, raw_public_key

RATE = 3
ALLOWED = AppServer()
# The second key written without its 0x04 prefix: keys compare as points.
ALSO_ALLOWED = AppServer()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    also_allowed = b64url(raw_public_key(ALSO_ALLOWED.vapid.private_key)[1:])
    return start_stack(
        request,
        "publisher_controls",
        AUTOPUSH_ALLOWED_VAPID_KEYS=f"{ALLOWED.application_server_key},{also_allowed}",
        AUTOPUSH_PUSH_RATE=str(RATE),
    )


def subscribe(stack: Stack, key: str | None = None) -> tuple[PushClient, Subscription]:
    client = stack.client()
    client.hello()
    reply = client.register(str(uuid.uuid4()), key=key)
    assert reply["status"] == 200
    return client, Subscription(reply["pushEndpoint"])


def refused(app_server: AppServer, subscription: Subscription) -> requests.Response:
    with pytest.raises(WebPushException) as raised:
        app_server.push(subscription, "x")
    response = raised.value.response
    assert response is not None
    return response


def assert_error(response: requests.Response, status: int, errno: int) -> None:
    assert response.status_code == status, response.text
    assert (response.json()["code"], response.json()["errno"]) == (status, errno)


def unregistered_endpoint(stack: Stack) -> str:
    """A valid token for a UAID the store has never seen: any storage read would answer 410 errno 103."""
    keys = CryptoKeys([stack.environ["AUTOPUSH_CRYPTO_KEYS"]])
    return make_endpoint_url(keys, stack.endpoint_url, uuid.uuid4(), uuid.uuid4(), None)


# ---- allowed keys --------------------------------------------------------------


@pytest.mark.parametrize("app_server", [ALLOWED, ALSO_ALLOWED], ids=["padded", "without_prefix"])
def test_an_allowed_key_pushes(stack: Stack, app_server: AppServer) -> None:
    client, subscription = subscribe(stack)
    assert app_server.push(subscription, "hello").status_code == 201
    assert subscription.decrypt(client.receive()) == b"hello"


def test_another_key_is_refused_with_403(stack: Stack) -> None:
    _, subscription = subscribe(stack)
    response = refused(AppServer(), subscription)
    assert_error(response, 403, 120)
    assert "not allowed" in response.json()["message"]


def test_a_push_without_vapid_is_refused_with_403(stack: Stack) -> None:
    _, subscription = subscribe(stack)
    response = requests.post(subscription.endpoint, headers={"TTL": "60"}, timeout=10)
    assert_error(response, 403, 120)


def test_the_key_check_comes_before_storage(stack: Stack) -> None:
    response = requests.post(unregistered_endpoint(stack), headers={"TTL": "60"}, timeout=10)
    assert_error(response, 403, 120)


def test_vapid_problems_are_still_401(stack: Stack) -> None:
    """A v2 endpoint keeps its own checks first: no VAPID, or the wrong key, is 401 errno 109."""
    _, subscription = subscribe(stack, key=ALLOWED.application_server_key)
    assert_error(requests.post(subscription.endpoint, headers={"TTL": "60"}, timeout=10), 401, 109)
    assert_error(refused(ALSO_ALLOWED, subscription), 401, 109)
    assert ALLOWED.push(subscription, None).status_code == 201


# ---- push rate -------------------------------------------------------------------


def test_pushes_beyond_the_rate_get_429_with_retry_after(stack: Stack) -> None:
    _, subscription = subscribe(stack)
    for _ in range(RATE):
        assert ALLOWED.push(subscription, "x").status_code == 201
    response = refused(ALLOWED, subscription)
    assert_error(response, 429, 121)
    assert 0 < int(response.headers["Retry-After"]) <= 60 // RATE
    _, other = subscribe(stack)
    assert ALLOWED.push(other, "x").status_code == 201


def test_the_rate_check_comes_before_storage(stack: Stack) -> None:
    """Pushes to a subscription the store does not know: 410 while allowed, then 429 without a read."""
    endpoint = unregistered_endpoint(stack)
    for _ in range(RATE):
        assert_error(refused(ALLOWED, Subscription(endpoint)), 410, 103)
    assert_error(refused(ALLOWED, Subscription(endpoint)), 429, 121)
