"""The ``stub`` bridge over real HTTP (docs/protocol.md#stub-bridge): a gunicorn endpoint
node with ``AUTOPUSH_STUB_ROUTER=true`` whose pushes end as the registered app id says,
and one without it, where ``stub`` is an unknown router type.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import requests

from autopush_flask.crypto.bridge_secrets import make_bridge_secret
from tests.support.stack import Stack, start_stack
from tests.support.statsd_sink import StatsdSink

AUTH_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="
PUSH_HEADERS = {"TTL": "60", "Content-Encoding": "aes128gcm"}


@pytest.fixture(scope="module")
def sink() -> Iterator[StatsdSink]:
    sink = StatsdSink()
    yield sink
    sink.close()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, sink: StatsdSink) -> Stack:
    return start_stack(request, "stub", AUTOPUSH_AUTH_KEYS=AUTH_KEY, AUTOPUSH_STUB_ROUTER="true", **sink.settings())


def register(stack: Stack, app_id: str, token: object = "stub-device-token") -> requests.Response:
    return requests.post(f"{stack.endpoint_url}/v1/stub/{app_id}/registration", json={"token": token}, timeout=10)


def registered(stack: Stack, app_id: str) -> dict:
    response = register(stack, app_id)
    assert response.status_code == 200, response.text
    return response.json()


def push(endpoint: str) -> requests.Response:
    return requests.post(endpoint, data=b"ciphertext", headers=PUSH_HEADERS, timeout=10)


def assert_error(response: requests.Response, status: int, errno: int | None) -> None:
    assert response.status_code == status, response.text
    assert response.json()["errno"] == errno


def test_registration_stores_a_stub_record(stack: Stack) -> None:
    reply = registered(stack, "success")
    uaid_hex = uuid.UUID(reply["uaid"]).hex
    assert reply["secret"] == make_bridge_secret(AUTH_KEY, uaid_hex)
    user = stack.storage.get_user(uaid_hex)
    assert (user.router_type, user.router_data) == ("stub", {"token": "stub-device-token", "app_id": "success"})


@pytest.mark.parametrize("token", ["short", "has space 123", 12345678])
def test_tokens_are_checked_as_for_other_bridges(stack: Stack, token: object) -> None:
    assert_error(register(stack, "success", token), 400, None)


def test_unknown_app_ids_are_refused(stack: Stack) -> None:
    response = register(stack, "no-such-outcome")
    assert_error(response, 400, None)
    assert "success" in response.json()["message"]


def test_success_is_accepted_and_counted(stack: Stack, sink: StatsdSink) -> None:
    reply = registered(stack, "success")
    before = sink.count("autoendpoint.notification.bridge.sent", platform="stub")
    for _ in range(2):
        response = push(reply["endpoint"])
        assert response.status_code == 201, response.text
        assert response.headers["Location"]
    assert sink.wait_count("autoendpoint.notification.bridge.sent", before + 2, platform="stub") == before + 2


@pytest.mark.parametrize(
    ("app_id", "status", "errno", "reason"),
    [("error", 502, None, "stub_error"), ("timeout", 502, 903, "timeout")],
)
def test_failures_keep_the_record(
    stack: Stack, sink: StatsdSink, app_id: str, status: int, errno: int | None, reason: str
) -> None:
    reply = registered(stack, app_id)
    tags = {"platform": "stub", "app_id": app_id, "reason": reason}
    before = sink.count("autoendpoint.notification.bridge.error", **tags)
    assert_error(push(reply["endpoint"]), status, errno)
    assert_error(push(reply["endpoint"]), status, errno)  # every push, not just the first
    assert stack.storage.get_user(uuid.UUID(reply["uaid"]).hex) is not None
    assert sink.wait_count("autoendpoint.notification.bridge.error", before + 2, **tags) == before + 2


@pytest.mark.parametrize("app_id", ["gone", "invalid"])
def test_gone_drops_the_record(stack: Stack, app_id: str) -> None:
    reply = registered(stack, app_id)
    assert_error(push(reply["endpoint"]), 410, 106)
    assert stack.storage.get_user(uuid.UUID(reply["uaid"]).hex) is None
    assert_error(push(reply["endpoint"]), 410, 103)


def test_token_update_changes_nothing_else(stack: Stack) -> None:
    reply = registered(stack, "success")
    base = f"{stack.endpoint_url}/v1/stub/success/registration/{reply['uaid']}"
    headers = {"Authorization": f"Bearer {reply['secret']}"}
    assert requests.put(base, json={"token": "another-token"}, headers=headers, timeout=10).status_code == 200
    assert push(reply["endpoint"]).status_code == 201
    assert requests.delete(base, headers=headers, timeout=10).status_code == 200
    assert_error(push(reply["endpoint"]), 410, 103)


def test_off_by_default(stack: Stack) -> None:
    """A node without the setting, on the same tables: ``stub`` is an invalid router type,
    and a stub record (written where it was on) is refused, neither delivered nor dropped."""
    reply = registered(stack, "success")
    off = stack.another_endpoint("endpoint-stub-off", AUTOPUSH_STUB_ROUTER="false").url
    response = requests.post(f"{off}/v1/stub/success/registration", json={"token": "stub-device-token"}, timeout=10)
    assert_error(response, 400, 108)
    base = f"{off}/v1/stub/success/registration/{reply['uaid']}"
    assert_error(requests.get(base, headers={"Authorization": f"Bearer {reply['secret']}"}, timeout=10), 400, 108)
    assert_error(push(reply["endpoint"].replace(stack.endpoint_url, off)), 400, 108)
    assert stack.storage.get_user(uuid.UUID(reply["uaid"]).hex) is not None
