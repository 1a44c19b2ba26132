"""The endpoint node end to end: real gunicorn nodes on dynalite and on PostgreSQL, pywebpush.

Checklist 35–48 and 66–127 over real sockets.
"""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
import requests
from pywebpush import WebPushException

from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User
from tests.support.postgres import STORES
from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer, Subscription


@pytest.fixture(scope="module", params=STORES)
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "stack", store=request.param)


@pytest.fixture(scope="module")
def app_server() -> AppServer:
    return AppServer()


def subscribe(stack: Stack, key: str | None = None) -> tuple[PushClient, Subscription, str]:
    client = stack.client()
    client.hello()
    channel_id = str(uuid.uuid4())
    reply = client.register(channel_id, key=key)
    assert reply["status"] == 200
    return client, Subscription(reply["pushEndpoint"]), channel_id


def post(url: str, data: bytes = b"", **headers: str) -> requests.Response:
    headers.setdefault("TTL", "60")
    return requests.post(url, data=data, headers=headers, timeout=10)


def assert_error(response: requests.Response, status: int, errno: int | None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"code", "errno", "error", "message", "more_info"}
    assert (body["code"], body["errno"]) == (status, errno)
    return body


def message_id_of(response: requests.Response, stack: Stack) -> str:
    prefix = f"{stack.endpoint_url}/m/"
    location = response.headers["Location"]
    assert location.startswith(prefix)
    return location[len(prefix):]


# ---- delivery (35–48) --------------------------------------------------------


def test_35_pywebpush_message_is_delivered_and_decrypts(stack: Stack, app_server: AppServer) -> None:
    client, subscription, channel_id = subscribe(stack, key=app_server.application_server_key)
    response = app_server.push(subscription, "Hello from the app server")
    assert response.status_code == 201
    notification = client.receive()
    assert notification["channelID"] == channel_id
    assert notification["version"] == message_id_of(response, stack)
    assert "=" not in notification["data"]
    assert notification["headers"] == {"encoding": "aes128gcm"}
    assert subscription.decrypt(notification) == b"Hello from the app server"
    client.ack(notification)


def test_36_40_push_without_body_has_no_data(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    response = post(subscription.endpoint, **{"Content-Encoding": "aesgcm", "Encryption": "salt=abc"})
    assert response.status_code == 201
    notification = client.receive()
    assert set(notification) == {"messageType", "channelID", "version"}


def test_37_invalid_utf8_body_is_base64url(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    post(subscription.endpoint, bytes.fromhex("c328a0a1e228a1"), **{"Content-Encoding": "aes128gcm"})
    assert client.receive()["data"] == "wyigoeIooQ"


def test_38_39_crypto_headers_are_cleaned(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    response = post(
        subscription.endpoint, b"x",
        **{"Content-Encoding": "aesgcm",
           "Encryption": 'keyid="http://example.org/bob/keys/123";salt="XZwpw6o37R-6qoZjw6KwAw=="',
           "Crypto-Key": 'keyid="p256dh";dh="deadbeef=="'},
    )
    assert response.status_code == 201
    headers = client.receive()["headers"]
    assert headers["encryption"] == "keyid=http://example.org/bob/keys/123;salt=XZwpw6o37R-6qoZjw6KwAw"
    assert headers["crypto_key"] == "keyid=p256dh;dh=deadbeef"


def test_41_43_stored_while_offline_then_delivered(stack: Stack, app_server: AppServer) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    response = app_server.push(subscription, "stored message")
    assert response.status_code == 201
    again = stack.client()
    assert again.hello(uaid)["uaid"] == uaid
    notification = again.receive()
    assert subscription.decrypt(notification) == b"stored message"
    again.ack(notification)
    again.close()
    time.sleep(0.2)
    third = stack.client()
    third.hello(uaid)
    third.send({})
    assert third.receive() == "{}"  # nothing more was delivered


def test_44_topic_replaces_while_offline(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    for body in (b"first", b"second"):
        assert post(subscription.endpoint, body, Topic="Inbox", **{"Content-Encoding": "aes128gcm"}).status_code == 201
    again = stack.client()
    again.hello(uaid)
    notification = again.receive()
    assert base64.urlsafe_b64decode(notification["data"] + "==") == b"second"
    again.ack(notification)
    again.send({})
    assert again.receive() == "{}"


def test_45_46_expired_and_ttl_zero_are_not_delivered(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    assert post(subscription.endpoint, TTL="1").status_code == 201
    assert post(subscription.endpoint, TTL="0").status_code == 201
    time.sleep(1.5)
    again = stack.client()
    again.hello(uaid)
    again.send({})
    assert again.receive() == "{}"


def test_47_ttl_zero_while_connected_is_delivered(stack: Stack) -> None:
    client, subscription, channel_id = subscribe(stack)
    assert post(subscription.endpoint, TTL="0").status_code == 201
    assert client.receive()["channelID"] == channel_id


# ---- push basics (66–74) -------------------------------------------------------


def test_66_success_response(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    response = post(subscription.endpoint)
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["TTL"] == "60"
    message_id_of(response, stack)
    client.receive()


def test_67_unversioned_path_is_v1(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    token = subscription.endpoint.rsplit("/", 1)[1]
    assert post(f"{stack.endpoint_url}/wpush/{token}").status_code == 201
    client.receive()


def test_68_69_74_bad_versions_tokens_and_paths(stack: Stack) -> None:
    _, subscription, _ = subscribe(stack)
    token = subscription.endpoint.rsplit("/", 1)[1]
    assert_error(post(f"{stack.endpoint_url}/wpush/v3/{token}"), 404, 102)
    assert_error(post(f"{stack.endpoint_url}/wpush/v1/garbage"), 404, 102)
    assert_error(post(f"{stack.endpoint_url}/wpush/v2/{token}"), 404, 102)  # v1 token as v2
    body = assert_error(requests.get(f"{stack.endpoint_url}/spush/x", timeout=5), 404, None)
    assert body["message"] == "Page not found"
    assert_error(requests.get(subscription.endpoint, timeout=5), 405, None)


def test_70_73_token_from_the_second_key_and_message_ids(stack: Stack) -> None:
    client, subscription, channel_id = subscribe(stack)
    current_key = stack.environ["AUTOPUSH_CRYPTO_KEYS"]
    keys = CryptoKeys([current_key])
    response = post(subscription.endpoint, Topic="news")
    parsed = MessageId.decode(keys, message_id_of(response, stack))
    assert (parsed.kind, parsed.uaid.hex, str(parsed.channel_id), parsed.topic) == ("topic", client.uaid, channel_id, "news")
    parsed = MessageId.decode(keys, message_id_of(post(subscription.endpoint), stack))
    assert parsed.kind == "timestamp" and abs(parsed.sortkey_timestamp / 1e6 - time.time()) < 30
    # An endpoint minted with a retired key still works when the key stays listed.
    other = CryptoKeys.generate_key()
    old_endpoint = make_endpoint_url(CryptoKeys([other]), stack.endpoint_url, uuid.UUID(client.uaid),
                                     uuid.UUID(channel_id), None)
    assert_error(post(old_endpoint), 404, 102)


# ---- header validation (75–91) ----------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "body", "status", "errno"),
    [
        ({"TTL": None}, b"", 400, 111),
        ({"TTL": "abc"}, b"", 400, 112),
        ({"TTL": "1.5"}, b"", 400, 112),
        ({"TTL": "-1"}, b"", 400, 114),
        ({"Topic": "a" * 33}, b"", 400, 113),
        ({"Topic": "bad!"}, b"", 400, 113),
        ({"Topic": "has space"}, b"", 400, 113),
        ({}, b"x", 400, 110),
        ({"Content-Encoding": "aesgcm128"}, b"x", 400, 110),
        ({"Content-Encoding": "foo"}, b"x", 400, 110),
        ({"Content-Encoding": "aesgcm"}, b"x", 400, 110),
        ({"Content-Encoding": "aesgcm", "Encryption": "keyid=x"}, b"x", 400, 110),
        ({"Content-Encoding": "aesgcm", "Encryption": "salt=abc", "Crypto-Key": "keyid=x"}, b"x", 400, 110),
        ({"Content-Encoding": "aes128gcm", "Encryption": "salt=abc"}, b"x", 400, 110),
        ({"Content-Encoding": "aes128gcm", "Crypto-Key": "dh=abc"}, b"x", 400, 110),
        ({"Content-Encoding": "aesgcm", "Encryption": "noequals"}, b"x", 400, 110),
        ({"Content-Encoding": "aes128gcm"}, b"x" * 5631, 413, 104),
        ({"Urgency": "urgent"}, b"", 400, 110),
        ({"Urgency": ""}, b"", 400, 110),
        ({"Urgency": "very low"}, b"", 400, 110),
    ],
)
def test_75_90_invalid_headers(stack: Stack, headers: dict, body: bytes, status: int, errno: int) -> None:
    client, subscription, _ = subscribe(stack)
    sent = {"TTL": "60", **headers}
    sent = {k: v for k, v in sent.items() if v is not None}
    response = requests.post(subscription.endpoint, data=body, headers=sent, timeout=10)
    assert_error(response, status, errno)
    client.send({})
    assert client.receive() == "{}"  # nothing was delivered


def test_75_missing_ttl_even_when_connected(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    assert_error(requests.post(subscription.endpoint, timeout=10), 400, 111)


@pytest.mark.parametrize(
    ("headers", "body", "ttl"),
    [
        ({"TTL": "9999999"}, b"", "2592000"),
        ({"Topic": "Current_Score-1"}, b"", "60"),
        ({"Topic": "a" * 32}, b"", "60"),
        ({"Content-Encoding": "aes128gcm"}, b"x", "60"),
        ({"Content-Encoding": "aes128gcm"}, b"x" * 4096, "60"),
        ({"Content-Encoding": "aes128gcm"}, b"x" * 5630, "60"),  # default AUTOPUSH_MAX_DATA
        ({"Urgency": "high"}, b"", "60"),
    ],
)
def test_78_81_89_91_accepted_headers(stack: Stack, headers: dict, body: bytes, ttl: str) -> None:
    client, subscription, _ = subscribe(stack)
    response = post(subscription.endpoint, body, **headers)
    assert response.status_code == 201, response.text
    assert response.headers["TTL"] == ttl
    client.receive()


# ---- subscription state (92–95) -----------------------------------------------


def test_92_no_router_record(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    stack.storage.drop_user(client.uaid)
    response = post(subscription.endpoint)
    assert_error(response, 410, 103)
    assert response.headers["Cache-Control"] == "max-age=86400"


def test_32_93_unknown_channel(stack: Stack) -> None:
    client, subscription, channel_id = subscribe(stack)
    client.send({"messageType": "unregister", "channelID": channel_id})
    assert client.receive()["status"] == 200
    assert_error(post(subscription.endpoint), 410, 106)


@pytest.mark.parametrize("router_type", ["simplepush", "bogus", "gcm"])
def test_94_95_invalid_router_types_are_dropped(stack: Stack, router_type: str) -> None:
    client, subscription, _ = subscribe(stack)
    assert stack.storage.update_router_data(client.uaid, router_type, {}, int(time.time() * 1000))
    assert_error(post(subscription.endpoint), 410, 106)
    assert stack.storage.get_user(client.uaid) is None


# ---- VAPID (96–110) -----------------------------------------------------------


def test_96_v2_without_authorization(stack: Stack, app_server: AppServer) -> None:
    _, subscription, _ = subscribe(stack, key=app_server.application_server_key)
    response = post(subscription.endpoint)
    assert_error(response, 401, 109)
    assert response.headers["WWW-Authenticate"] == "webpush"


def test_97_v2_signed_by_another_key(stack: Stack, app_server: AppServer) -> None:
    _, subscription, _ = subscribe(stack, key=app_server.application_server_key)
    with pytest.raises(WebPushException) as refused:
        AppServer().push(subscription, "x")
    assert refused.value.response.status_code == 401
    assert refused.value.response.json()["errno"] == 109


def test_98_v2_with_its_key(stack: Stack, app_server: AppServer) -> None:
    client, subscription, _ = subscribe(stack, key=app_server.application_server_key)
    assert app_server.push(subscription, None).status_code == 201
    client.receive()


def test_99_draft01_webpush_scheme_on_v1(stack: Stack, app_server: AppServer) -> None:
    from tests.support.webpush import b64url, raw_public_key

    client, subscription, _ = subscribe(stack)
    claims = {"aud": stack.endpoint_url, "exp": int(time.time()) + 3600, "sub": "mailto:a@example.com"}
    token = app_server.vapid.sign(claims)["Authorization"].split("t=")[1].split(",")[0]
    key = b64url(raw_public_key(app_server.vapid.private_key))
    response = post(subscription.endpoint, Authorization=f"WebPush {token}", **{"Crypto-Key": f"p256ecdsa={key}"})
    assert response.status_code == 201, response.text
    client.receive()


@pytest.mark.parametrize("authorization", ["Bearer abc.def.ghi", "vapid t=abc.def.ghi", "Basic abc"])
def test_100_101_102_bad_authorization_forms(stack: Stack, authorization: str) -> None:
    _, subscription, _ = subscribe(stack)
    response = post(subscription.endpoint, Authorization=authorization)
    assert_error(response, 401, 109)
    assert response.headers["WWW-Authenticate"] == "webpush"


# ---- routing (111–117) ----------------------------------------------------------


def message_items(stack: Stack, uaid: str) -> list[Notification]:
    """Every stored message of ``uaid``, topic and timestamp ones."""
    user = User(uaid=uaid)
    return stack.storage.fetch_topic_messages(user)[1] + stack.storage.fetch_timestamp_messages(user, None)[1]


def set_min_urgency(client: PushClient, level: str) -> None:
    client.send({"messageType": "urgency", "min": level})
    assert client.receive() == {"messageType": "urgency", "status": 200}


def test_urgency_below_the_minimum_is_held_stored_and_sent_once_lowered(stack: Stack) -> None:
    """docs/protocol.md#urgency over real sockets: held while below, sent once the minimum drops, after reconnects."""
    client, subscription, channel_id = subscribe(stack)
    set_min_urgency(client, "high")
    low = post(subscription.endpoint, Urgency="low")
    normal = post(subscription.endpoint, Urgency="NORMAL", Topic="t1")
    high = post(subscription.endpoint, Urgency="high")
    assert [r.status_code for r in (low, normal, high)] == [201, 201, 201]
    assert client.receive()["version"] == message_id_of(high, stack)
    client.ack({"channelID": channel_id, "version": message_id_of(high, stack)})
    held = {n.version: n.urgency for n in message_items(stack, client.uaid)}
    assert held == {message_id_of(low, stack): "low", message_id_of(normal, stack): "normal"}
    uaid = client.uaid
    client.close()
    again = stack.client()
    assert again.hello(uaid)["uaid"] == uaid  # the minimum is on the record: still held
    set_min_urgency(again, "normal")
    sent = again.receive()
    assert sent["version"] == message_id_of(normal, stack)
    again.ack(sent)  # the drain goes on once its batch is acknowledged
    set_min_urgency(again, "very-low")
    assert again.receive()["version"] == message_id_of(low, stack)


def test_111_direct_delivery_writes_nothing(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    assert post(subscription.endpoint).status_code == 201
    client.receive()
    assert message_items(stack, client.uaid) == []


def test_113_unreachable_node_is_forgotten_and_message_stored(stack: Stack) -> None:
    from tests.support.processes import free_port

    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    user = stack.storage.get_user(uaid)
    dead = f"http://127.0.0.1:{free_port()}"
    stack.storage.claim_user(User(uaid=uaid), dead, user.connected_at + 1)
    assert post(subscription.endpoint).status_code == 201
    assert stack.storage.get_user(uaid).node_id is None
    assert len(message_items(stack, uaid)) == 1


# ---- DELETE /m and misc (118–127) ------------------------------------------------


def test_118_120_cancel_a_stored_message(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    response = post(subscription.endpoint, b"cancel me", **{"Content-Encoding": "aes128gcm"})
    location = response.headers["Location"]
    assert requests.delete(location, timeout=5).status_code == 204
    assert requests.delete(location, timeout=5).status_code == 204
    assert message_items(stack, uaid) == []
    again = stack.client()
    again.hello(uaid)
    again.send({})
    assert again.receive() == "{}"


def test_119_cancel_garbage(stack: Stack) -> None:
    assert_error(requests.delete(f"{stack.endpoint_url}/m/garbage", timeout=5), 400, None)


def test_121_cancel_an_old_topic_id_keeps_the_replacement(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    old = post(subscription.endpoint, b"old", Topic="t", **{"Content-Encoding": "aes128gcm"})
    post(subscription.endpoint, b"new", Topic="t", **{"Content-Encoding": "aes128gcm"})
    assert requests.delete(old.headers["Location"], timeout=5).status_code == 204
    again = stack.client()
    again.hello(uaid)
    assert base64.urlsafe_b64decode(again.receive()["data"] + "==") == b"new"


def test_122_123_cors_and_sts(stack: Stack) -> None:
    _, subscription, _ = subscribe(stack)
    response = requests.options(subscription.endpoint, timeout=5)
    assert response.status_code == 200
    assert response.headers["Access-Control-Allow-Origin"] == "*"
    assert response.headers["Access-Control-Allow-Methods"] == "POST"
    assert "ttl" in response.headers["Access-Control-Allow-Headers"]
    assert response.headers["Strict-Transport-Security"] == "max-age=31536000;includeSubDomains"
    assert post(subscription.endpoint).headers["Access-Control-Expose-Headers"] == "location,www-authenticate"


def test_124_127_health_and_diagnostics(stack: Stack) -> None:
    base = stack.endpoint_url
    assert requests.get(f"{base}/status", timeout=5).json()["status"] == "OK"
    assert requests.get(f"{base}/__lbheartbeat__", timeout=5).content == b""
    assert requests.get(f"{base}/health", timeout=5).json()["status"] == "OK"
    assert_error(requests.get(f"{base}/v1/err", timeout=5), 418, 999)
    body = assert_error(requests.get(f"{base}/v1/err/crit", timeout=5), 418, 999)
    assert body["message"] == "FAILURE:Success"
    assert_error(requests.get(f"{base}/v1/err/other", timeout=5), 404, 0)


def test_openapi_document_is_served(stack: Stack) -> None:
    document = requests.get(f"{stack.endpoint_url}/openapi.json", timeout=5).json()
    assert document["openapi"].startswith("3.")
    assert "/wpush/{api_version}/{token}" in document["paths"]
    push = document["paths"]["/wpush/{api_version}/{token}"]["post"]
    [urgency] = [p for p in push["parameters"] if p["in"] == "header" and p["name"] == "Urgency"]
    assert urgency["schema"]["enum"] == ["very-low", "low", "normal", "high"]
    assert {"403", "429"} <= set(push["responses"])  # the publisher controls
    [router_type] = [
        p for p in document["paths"]["/v1/{router_type}/{app_id}/registration"]["post"]["parameters"]
        if p["name"] == "router_type"
    ]
    assert "stub" in router_type["description"]
    json.dumps(document)


# ---- VAPID claims end to end (103–110) -------------------------------------------


def vapid_header(app_server: AppServer, claims: dict, algorithm: str = "ES256", der: bool = False,
                 tamper: bool = False) -> str:
    import jwt
    from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

    from tests.support.webpush import b64url, b64url_decode, raw_public_key

    key = app_server.vapid.private_key if algorithm == "ES256" else "a-shared-secret-of-32-bytes-long!"
    token = jwt.encode(claims, key, algorithm=algorithm)
    head, body, signature = token.split(".")
    raw = b64url_decode(signature)
    if der:
        raw = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    if tamper:
        raw = bytes([raw[0] ^ 1]) + raw[1:]
    token = f"{head}.{body}.{b64url(raw)}"
    return f"vapid t={token}, k={b64url(raw_public_key(app_server.vapid.private_key))}"


def claims_for(stack: Stack, **changes) -> dict:
    claims = {"aud": stack.endpoint_url, "exp": int(time.time()) + 3600, "sub": "mailto:ops@example.com"}
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


@pytest.mark.parametrize(
    ("changes", "options"),
    [
        ({"exp": int(time.time()) - 60}, {}),
        ({"exp": int(time.time()) + 25 * 3600}, {}),
        ({"exp": str(int(time.time()) + 3600)}, {}),
        ({"aud": None}, {}),
        ({"aud": "https://other.example.com"}, {}),
        ({}, {"algorithm": "HS256"}),
        ({}, {"tamper": True}),
    ],
    ids=["103-expired", "104-too-far", "105-string-exp", "106-no-aud", "106-other-aud", "107-hs256", "108-tampered"],
)
def test_103_108_vapid_rejections(stack: Stack, app_server: AppServer, changes: dict, options: dict) -> None:
    _, subscription, _ = subscribe(stack, key=app_server.application_server_key)
    header = vapid_header(app_server, claims_for(stack, **changes), **options)
    response = post(subscription.endpoint, Authorization=header)
    assert_error(response, 401, 109)
    assert response.headers["WWW-Authenticate"] == "webpush"


@pytest.mark.parametrize(
    ("changes", "options"),
    [({"exp": int(time.time()) + 23 * 3600}, {}), ({}, {"der": True}), ({"sub": None}, {})],
    ids=["104-23-hours", "109-der-signature", "110-no-sub"],
)
def test_104_109_110_vapid_acceptances(stack: Stack, app_server: AppServer, changes: dict, options: dict) -> None:
    client, subscription, _ = subscribe(stack, key=app_server.application_server_key)
    header = vapid_header(app_server, claims_for(stack, **changes), **options)
    assert post(subscription.endpoint, Authorization=header).status_code == 201
    client.receive()


def test_27_padded_and_unpadded_keys_give_working_endpoints(stack: Stack, app_server: AppServer) -> None:
    padded = app_server.application_server_key
    for key in (padded, padded.rstrip("=")):
        client, subscription, _ = subscribe(stack, key=key)
        assert app_server.push(subscription, "bound").status_code == 201
        assert subscription.decrypt(client.receive()) == b"bound"


def test_31_both_endpoints_of_a_double_register_deliver(stack: Stack) -> None:
    client = stack.client()
    client.hello()
    channel_id = str(uuid.uuid4())
    endpoints = [client.register(channel_id)["pushEndpoint"] for _ in range(2)]
    for endpoint in endpoints:
        assert post(endpoint).status_code == 201
        assert client.receive()["channelID"] == channel_id


def test_42_unacked_direct_notification_is_redelivered_after_reconnect(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    response = post(subscription.endpoint, b"unacked", **{"Content-Encoding": "aes128gcm"})
    first = client.receive()
    assert first["version"] == message_id_of(response, stack)
    client.close()
    time.sleep(0.5)
    again = stack.client()
    again.hello(uaid)
    assert again.receive()["version"] == first["version"]


def test_48_only_the_live_message_survives(stack: Stack) -> None:
    client, subscription, _ = subscribe(stack)
    uaid = client.uaid
    client.close()
    time.sleep(0.2)
    for _ in range(10):
        assert post(subscription.endpoint, TTL="1").status_code == 201
    keeper = post(subscription.endpoint, TTL="60")
    time.sleep(2)
    again = stack.client()
    again.hello(uaid)
    assert again.receive()["version"] == message_id_of(keeper, stack)
    again.send({})
    assert again.receive() == "{}"
