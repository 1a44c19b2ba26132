"""The bridge registration API and bridged delivery end to end (128–141, docs/protocol.md#bridge-registration, docs/protocol.md#bridges).

A real gunicorn endpoint node with FCM and APNs configured against local fakes
(plain HTTP for FCM with a fake OAuth token endpoint; HTTP/2 over TLS for APNs).
"""

from __future__ import annotations

import uuid

import pytest
import requests
from pywebpush import WebPushException

from autopush_flask.crypto.bridge_secrets import make_bridge_secret
from tests.support.bridges import APNS_CHANNEL, FCM_APP, FCM_PROJECT, FakeBridges
from tests.support.fake_apns import Reply
from tests.support.fake_fcm import Reply as FcmReply
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer, Subscription

AUTH_KEYS = ["AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", "second-auth-key-for-rotation-tests-000000="]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, fakes: FakeBridges) -> Stack:
    key_dir = request.getfixturevalue("tmp_path_factory").mktemp("p8")
    settings = {
        "AUTOPUSH_AUTH_KEYS": ",".join(AUTH_KEYS),
        "AUTOPUSH_FCM_TIMEOUT": "1",
        **fakes.node_settings(key_dir),
    }
    return start_stack(request, "bridges", **settings)


def url(stack: Stack, path: str) -> str:
    return f"{stack.endpoint_url}/v1/{path}"


def register(stack: Stack, kind: str = "fcm", app: str = FCM_APP, **body) -> requests.Response:
    return requests.post(url(stack, f"{kind}/{app}/registration"), json={"token": "device-token-1", **body}, timeout=10)


def auth(secret: str, scheme: str = "Bearer") -> dict[str, str]:
    return {"Authorization": f"{scheme} {secret}"}


def registered(stack: Stack, **body) -> dict:
    response = register(stack, **body)
    assert response.status_code == 200, response.text
    return response.json()


def assert_error(response: requests.Response, status: int, errno: int | None) -> None:
    assert response.status_code == status, response.text
    assert response.json()["errno"] == errno


def test_128_129_new_registration(stack: Stack) -> None:
    reply = registered(stack)
    assert set(reply) == {"uaid", "channelID", "endpoint", "secret"}
    assert str(uuid.UUID(reply["uaid"])) == reply["uaid"]  # dashed (docs/protocol.md#bridge-registration)
    assert str(uuid.UUID(reply["channelID"])) == reply["channelID"]
    assert reply["endpoint"].startswith(f"{stack.endpoint_url}/wpush/v1/")
    assert reply["secret"] == make_bridge_secret(AUTH_KEYS[0], uuid.UUID(reply["uaid"]).hex)
    user = stack.storage.get_user(uuid.UUID(reply["uaid"]).hex)
    assert (user.router_type, user.router_data, user.node_id) == (
        "fcm", {"token": "device-token-1", "app_id": FCM_APP}, None)


def test_130_registration_with_key_is_v2(stack: Stack) -> None:
    assert "/wpush/v2/" in registered(stack, key=AppServer().application_server_key)["endpoint"]


@pytest.mark.parametrize("kind", ["foo", "gcm", "adm"])
def test_131_unknown_router_types(stack: Stack, kind: str) -> None:
    assert_error(register(stack, kind=kind, app="x"), 400, 108)


@pytest.mark.parametrize("body", [{"token": "short"}, {"token": "has space 123"}, {"token": 12345678}, {}])
def test_132_bad_tokens(stack: Stack, body: dict) -> None:
    response = requests.post(url(stack, f"fcm/{FCM_APP}/registration"), json=body, timeout=10)
    assert_error(response, 400, None)


@pytest.mark.parametrize("raw", [b"not json", b"[1,2]", b""])
def test_malformed_registration_bodies(stack: Stack, raw: bytes) -> None:
    response = requests.post(url(stack, f"fcm/{FCM_APP}/registration"), data=raw,
                             headers={"Content-Type": "application/json"}, timeout=10)
    assert_error(response, 400, None)


def test_133_unconfigured_app_ids(stack: Stack) -> None:
    assert_error(register(stack, app="unknown-app"), 400, 106)
    assert_error(register(stack, kind="apns", app="no-such-channel"), 400, None)


def test_134_135_secrets(stack: Stack) -> None:
    reply = registered(stack)
    uaid_hex = uuid.UUID(reply["uaid"]).hex
    path = url(stack, f"fcm/{FCM_APP}/registration/{reply['uaid']}")
    for headers in ({}, auth(""), auth("0" * 64), auth(reply["secret"], scheme="Basic")):
        response = requests.get(path, headers=headers, timeout=10)
        assert_error(response, 401, 109)
        assert response.headers["WWW-Authenticate"] == "webpush"
    assert requests.get(path, headers=auth(make_bridge_secret(AUTH_KEYS[1], uaid_hex)), timeout=10).status_code == 200
    assert requests.get(path, headers=auth(reply["secret"], scheme="WebPush"), timeout=10).status_code == 200


def test_136_137_138_channels(stack: Stack) -> None:
    reply = registered(stack)
    base = url(stack, f"fcm/{FCM_APP}/registration/{reply['uaid']}")
    headers = auth(reply["secret"])
    listed = requests.get(base + "/", headers=headers, timeout=10).json()  # trailing slash tolerated
    assert listed == {"uaid": reply["uaid"], "channelIDs": [reply["channelID"]]}
    added = requests.post(f"{base}/subscription", json={}, headers=headers, timeout=10).json()
    assert set(added) == {"channelID", "endpoint"}
    empty_body = requests.post(f"{base}/subscription", headers=headers, timeout=10)
    assert empty_body.status_code == 200
    channels = requests.get(base, headers=headers, timeout=10).json()["channelIDs"]
    assert sorted(channels) == sorted([reply["channelID"], added["channelID"], empty_body.json()["channelID"]])
    gone = f"{base}/subscription/{added['channelID']}"
    assert requests.delete(gone, headers=headers, timeout=10).json() == {}
    assert_error(requests.delete(gone, headers=headers, timeout=10), 410, 106)
    assert_error(requests.delete(f"{base}/subscription/not-a-uuid", headers=headers, timeout=10), 410, 106)


def test_139_token_update(stack: Stack) -> None:
    reply = registered(stack)
    base = url(stack, f"fcm/{FCM_APP}/registration/{reply['uaid']}")
    response = requests.put(base, json={"token": "newtoken99"}, headers=auth(reply["secret"]), timeout=10)
    assert (response.status_code, response.json()) == (200, {})
    user = stack.storage.get_user(uuid.UUID(reply["uaid"]).hex)
    assert user.router_data["token"] == "newtoken99"
    assert_error(requests.put(base, json={"token": "x"}, headers=auth(reply["secret"]), timeout=10), 400, None)


def test_140_141_unregister_uaid(stack: Stack) -> None:
    reply = registered(stack)
    base = url(stack, f"fcm/{FCM_APP}/registration/{reply['uaid']}")
    headers = auth(reply["secret"])
    assert requests.delete(base, headers=headers, timeout=10).json() == {}
    assert_error(requests.delete(base, headers=headers, timeout=10), 410, 103)
    assert_error(requests.post(reply["endpoint"], headers={"TTL": "60"}, timeout=10), 410, 103)
    unknown = uuid.uuid4()
    assert_error(requests.get(url(stack, f"fcm/{FCM_APP}/registration/{unknown}"),
                              headers=auth(make_bridge_secret(AUTH_KEYS[0], unknown.hex)), timeout=10), 410, 103)
    assert_error(requests.get(url(stack, f"fcm/{FCM_APP}/registration/not-a-uuid"), timeout=10), 410, 103)


def test_full_fcm_flow(stack: Stack, fakes) -> None:
    """Register → push with pywebpush → token update → push → unregister → 410 (142)."""
    fcm, _ = fakes
    app_server = AppServer()
    reply = registered(stack, key=app_server.application_server_key)
    subscription = Subscription(reply["endpoint"])
    before = len(fcm.messages)
    response = app_server.push(subscription, "to the phone", ttl=30)
    assert (response.status_code, response.headers["TTL"]) == (201, "30")
    sent = fcm.messages[before]
    assert sent.project_id == FCM_PROJECT
    message = sent.body["message"]
    assert message["token"] == "device-token-1"
    assert message["android"]["ttl"] == "60s"
    assert message["android"]["data"]["chid"] == reply["channelID"]
    assert message["android"]["data"]["con"] == "aes128gcm"
    assert subscription.decrypt({"data": message["android"]["data"]["body"],
                                 "headers": {"encoding": "aes128gcm"}}) == b"to the phone"
    base = url(stack, f"fcm/{FCM_APP}/registration/{reply['uaid']}")
    requests.put(base, json={"token": "second-token"}, headers=auth(reply["secret"]), timeout=10)
    app_server.push(subscription, "again")
    assert fcm.messages[-1].body["message"]["token"] == "second-token"
    requests.delete(base, headers=auth(reply["secret"]), timeout=10)
    with pytest.raises(WebPushException) as gone:
        app_server.push(subscription, "too late")
    assert_error(gone.value.response, 410, 103)


def test_143_fcm_unregistered_deletes_the_record(stack: Stack, fakes) -> None:
    fcm, _ = fakes
    reply = registered(stack)
    fcm.script(FcmReply(404, {"error": {"status": "NOT_FOUND", "message": "gone"}}))
    assert_error(requests.post(reply["endpoint"], headers={"TTL": "60"}, timeout=10), 410, 106)
    assert stack.storage.get_user(uuid.UUID(reply["uaid"]).hex) is None


def test_145_oversize_fcm_payload(stack: Stack) -> None:
    reply = registered(stack)
    response = requests.post(reply["endpoint"], data=b"x" * 4000,
                             headers={"TTL": "60", "Content-Encoding": "aes128gcm"}, timeout=10)
    assert_error(response, 413, 104)


def test_146_apns_flow(stack: Stack, fakes) -> None:
    _, apns = fakes
    response = register(stack, kind="apns", app=APNS_CHANNEL, aps={"alert": "hi"})
    reply = response.json()
    before = len(apns.requests)
    assert requests.post(reply["endpoint"], data=b"abc", timeout=10,
                         headers={"TTL": "60", "Content-Encoding": "aes128gcm"}).status_code == 201
    sent = apns.requests[before]
    assert sent.http_version == "HTTP/2"
    assert sent.path == "/3/device/device-token-1"
    assert sent.body["aps"] == {"alert": "hi"}
    assert sent.body["chid"] == reply["channelID"]
    assert sent.headers["apns-topic"] == f"com.mozilla.org.{APNS_CHANNEL}"
    apns.script(Reply(410, "Unregistered"))
    assert_error(requests.post(reply["endpoint"], headers={"TTL": "60"}, timeout=10), 410, 106)
    assert stack.storage.get_user(uuid.UUID(reply["uaid"]).hex) is None
