"""The FCM bridge router against a fake FCM over real HTTP (142–145).

See docs/protocol.md#bridge-registration and docs/protocol.md#bridges.
Nothing is patched: requests and google-auth talk HTTP to ``FakeFcm``, which
verifies the service account's signed JWT before issuing access tokens, and
router records live in a real dynalite.
"""

from __future__ import annotations

import dataclasses

import json
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from autopush_flask.config import Settings
from autopush_flask.crypto.base64url import encode_base64url
from autopush_flask.db import Notification, Storage, User, create_storage
from autopush_flask.metrics import MetricCall, RecordingMetrics
from autopush_flask.push_errors import PushError
from autopush_flask.routers.fcm import FCM_SCOPE, FcmRouter
from tests.support.fake_fcm import CLOSE, GOOGLE_TOKEN_AUDIENCE, JWT_BEARER, Delay, FakeFcm, Reply

APP = "fenix-app"
PROJECT = "fenix-project"
APP_EMAIL = "autopush@fenix-project.iam.gserviceaccount.com"
LEGACY_APP = "1009375523940"
LEGACY_PROJECT = "legacy-project"
LEGACY_EMAIL = "autopush@legacy-project.iam.gserviceaccount.com"
AUTH_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="
DEVICE_TOKEN = "dQw4w9WgXcQ:APA91bHun4MxP5egoKMwt2KZFBaFUH-1RYqx"
CHID = "5f0e7f7a-1b2c-4d3e-9f80-a1b2c3d4e5f6"
PAYLOAD = bytes(range(30))
PAYLOAD_B64 = encode_base64url(PAYLOAD)
TIMEOUT = 0.5
TOKEN_1 = "fake-access-token-1"


@pytest.fixture
def fake_fcm() -> Iterator[FakeFcm]:
    fake = FakeFcm()
    yield fake
    fake.stop()


@pytest.fixture
def credentials(fake_fcm: FakeFcm, tmp_path: Path) -> dict[str, dict[str, str]]:
    """APP's key given inline (its own project_id differs: the configured one wins), LEGACY_APP's as a file."""
    inline = fake_fcm.service_account(client_email=APP_EMAIL, project_id="key-file-project")
    key_file = tmp_path / "legacy-key.json"
    fake_fcm.write_service_account(key_file, client_email=LEGACY_EMAIL, project_id=LEGACY_PROJECT)
    return {
        APP: {"project_id": PROJECT, "credential": json.dumps(inline)},
        LEGACY_APP: {"project_id": LEGACY_PROJECT, "credential": str(key_file)},
    }


@pytest.fixture
def fcm_settings(
    make_settings: Callable[..., Settings], fake_fcm: FakeFcm, credentials: dict
) -> Callable[..., Settings]:
    def build(**variables: str) -> Settings:
        environ = {
            "AUTOPUSH_FCM_CREDENTIALS": json.dumps(credentials),
            "AUTOPUSH_FCM_BASE_URL": fake_fcm.url,
            "AUTOPUSH_AUTH_KEYS": AUTH_KEY,
            "AUTOPUSH_FCM_TIMEOUT": str(TIMEOUT),
        }
        return make_settings("endpoint", **{**environ, **variables})

    return build


@pytest.fixture
def router(fcm_settings: Callable[..., Settings], storage: Storage, metrics: RecordingMetrics) -> FcmRouter:
    return FcmRouter(fcm_settings(), storage, metrics)


@pytest.fixture
def validator(fcm_settings: Callable[..., Settings], metrics: RecordingMetrics) -> FcmRouter:
    """For router_data only: storage is never touched, so its tables are not created."""
    settings = fcm_settings()
    return FcmRouter(settings, create_storage(settings, metrics), metrics)


def fcm_user(storage: Storage, router_data: dict[str, Any]) -> User:
    """A bridge registration as the registration API stores it, read back like the endpoint does."""
    user = User(
        uaid=uuid.uuid4().hex, router_type="fcm", connected_at=int(time.time() * 1000),
        router_data=router_data, record_version=1,
    )
    assert storage.add_user(user)
    stored = storage.get_user(user.uaid)
    assert stored is not None
    return stored


def notification(ttl: int = 3600, body: bytes | None = None, headers: dict[str, str] | None = None) -> Notification:
    return Notification(
        channel_id=CHID, version="gAAAAABmessageid", ttl=ttl, timestamp=int(time.time()),
        data=encode_base64url(body) if body else None, headers=headers if body else None,
    )


def bridge_errors(metrics: RecordingMetrics) -> list[dict[str, str]]:
    return [call.tags for call in metrics.find("notification.bridge.error")]


def error_tags(reason: str, status: int, errno: int | None, app_id: str = APP) -> dict[str, str]:
    return {"platform": "fcm", "app_id": app_id, "reason": reason, "error": str(status), "errno": str(errno)}


def push_error(router: FcmRouter, user: User, note: Notification) -> tuple[int, int | None, str]:
    with pytest.raises(PushError) as caught:
        router.route(user, note)
    return caught.value.status, caught.value.errno, caught.value.message


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ---- 142: the request FCM receives


def test_142_push_with_body_sends_exact_v1_message(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    headers = {"encoding": "aesgcm", "encryption": "salt=c2FsdHNhbHRzYWx0c2FsdA", "crypto_key": "dh=BNoRDbb8"}

    assert router.route(user, notification(ttl=120, body=PAYLOAD, headers=headers)) == "Direct"

    [sent] = fake_fcm.messages
    assert sent.path == f"/v1/projects/{PROJECT}/messages:send"
    assert sent.headers["Authorization"] == f"Bearer {TOKEN_1}"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.body == {"message": {"token": DEVICE_TOKEN, "android": {"ttl": "120s", "priority": "HIGH", "data": {
        "chid": CHID, "body": PAYLOAD_B64, "con": "aesgcm",
        "enc": "salt=c2FsdHNhbHRzYWx0c2FsdA", "cryptokey": "dh=BNoRDbb8",
    }}}}
    [grant] = fake_fcm.token_requests
    assert grant.grant_type == JWT_BEARER
    assert grant.claims is not None
    assert (grant.claims["iss"], grant.claims["scope"], grant.claims["aud"]) == (
        APP_EMAIL, FCM_SCOPE, GOOGLE_TOKEN_AUDIENCE)
    assert fake_fcm.issued_tokens == [TOKEN_1]
    assert metrics.find("notification.bridge.sent") == [
        MetricCall("increment", "notification.bridge.sent", 1, {"platform": "fcm", "app_id": APP})]
    assert metrics.find("notification.message_data") == []  # counted once, by the endpoint
    assert bridge_errors(metrics) == []


def test_142_push_without_body_sends_only_chid(router: FcmRouter, storage: Storage, fake_fcm: FakeFcm) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})

    assert router.route(user, notification(ttl=3600)) == "Direct"

    assert [m.body for m in fake_fcm.messages] == [
        {"message": {"token": DEVICE_TOKEN, "android": {"ttl": "3600s", "priority": "HIGH", "data": {"chid": CHID}}}}]


def test_142_aes128gcm_body_carries_con_without_enc_or_cryptokey(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})

    router.route(user, notification(ttl=60, body=PAYLOAD, headers={"encoding": "aes128gcm"}))

    assert fake_fcm.messages[0].body["message"]["android"]["data"] == {
        "chid": CHID, "body": PAYLOAD_B64, "con": "aes128gcm"}


@pytest.mark.parametrize(
    ("urgency", "topic", "priority"),
    [("very-low", "t1", "NORMAL"), ("low", None, "NORMAL"), ("normal", "t-2", "HIGH"), ("high", None, "HIGH"),
     (None, None, "HIGH")],
)
def test_urgency_sets_the_android_priority_and_topic_the_collapse_key(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, urgency: str | None, topic: str | None, priority: str
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    router.route(user, dataclasses.replace(notification(), urgency=urgency, topic=topic))
    [sent] = fake_fcm.messages
    android = sent.body["message"]["android"]
    assert android["priority"] == priority
    assert android.get("collapse_key") == topic


def test_142_android_ttl_is_clamped_to_fcm_bounds(router: FcmRouter, storage: Storage, fake_fcm: FakeFcm) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})

    for ttl in (0, 59, 61, 2419200, 2592000):
        router.route(user, notification(ttl=ttl))

    assert [m.body["message"]["android"]["ttl"] for m in fake_fcm.messages] == [
        "60s", "60s", "61s", "2419200s", "2419200s"]


def test_142_old_record_with_creds_sender_id_uses_that_app(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "creds": {"senderID": LEGACY_APP, "auth": "old-server-key"}})

    assert router.route(user, notification()) == "Direct"

    assert [(m.path, m.body["message"]["token"]) for m in fake_fcm.messages] == [
        (f"/v1/projects/{LEGACY_PROJECT}/messages:send", DEVICE_TOKEN)]
    # the key was read from its file
    assert [(grant.claims or {}).get("iss") for grant in fake_fcm.token_requests] == [LEGACY_EMAIL]
    assert [c.tags for c in metrics.find("notification.bridge.sent")] == [{"platform": "fcm", "app_id": LEGACY_APP}]


def test_142_client_and_token_are_created_lazily_and_reused(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    assert fake_fcm.token_requests == []

    router.route(user, notification())
    router.route(user, notification(body=PAYLOAD, headers={"encoding": "aes128gcm"}))

    assert len(fake_fcm.token_requests) == 1
    assert [m.headers["Authorization"] for m in fake_fcm.messages] == [f"Bearer {TOKEN_1}"] * 2
    ports = {m.client_port for m in fake_fcm.messages}
    assert len(ports) == 1  # one pooled keep-alive connection


def test_142_concurrent_first_pushes_fetch_one_token(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm
) -> None:
    users = [fcm_user(storage, {"token": f"{DEVICE_TOKEN}-{n}", "app_id": APP}) for n in range(6)]
    fake_fcm.script_token(Delay(0.3))  # the others wait on the first fetch

    with ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(lambda u: router.route(u, notification()), users))

    assert results == ["Direct"] * 6
    assert fake_fcm.issued_tokens == [TOKEN_1]
    assert len(fake_fcm.token_requests) == 1
    assert sorted(m.body["message"]["token"] for m in fake_fcm.messages) == [f"{DEVICE_TOKEN}-{n}" for n in range(6)]
    assert {m.headers["Authorization"] for m in fake_fcm.messages} == {f"Bearer {TOKEN_1}"}


def test_142_expired_access_token_is_refreshed_and_sent_once_more(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    router.route(user, notification())
    fake_fcm.expire_tokens()

    assert router.route(user, notification()) == "Direct"

    assert [m.headers["Authorization"] for m in fake_fcm.messages] == [
        f"Bearer {TOKEN_1}", f"Bearer {TOKEN_1}", "Bearer fake-access-token-2"]
    assert len(fake_fcm.token_requests) == 2
    assert bridge_errors(metrics) == []


def test_142_token_expired_again_after_refresh_is_not_resent_again(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    """One refresh and one re-send per push, however often FCM says the token expired."""
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    router.route(user, notification())
    fake_fcm.expire_tokens()
    fake_fcm.script(Reply(401, {"error": {
        "code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid authentication credentials.",
        "details": [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "ACCESS_TOKEN_EXPIRED"}],
    }}))

    assert push_error(router, user, notification()) == (502, 901, "Bridge authentication failed")

    assert [m.headers["Authorization"] for m in fake_fcm.messages] == [
        f"Bearer {TOKEN_1}", f"Bearer {TOKEN_1}", "Bearer fake-access-token-2"]
    assert len(fake_fcm.token_requests) == 2
    assert bridge_errors(metrics) == [error_tags("authentication", 502, 901)]


# ---- 143: the device is gone


@pytest.mark.parametrize("answer", [
    Reply(404, {"error": {"code": 404, "status": "NOT_FOUND", "message": "Requested entity was not found.",
                          "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                       "errorCode": "UNREGISTERED"}]}}),
    Reply(404, ""),
    Reply(400, {"error": {"code": 400, "status": "UNREGISTERED", "message": "Unregistered"}}),
    Reply(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid token",
                          "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                       "errorCode": "UNREGISTERED"}]}}),
], ids=["404-not-found", "404-empty", "400-unregistered-status", "400-unregistered-errorcode"])
def test_143_device_gone_deletes_record_and_answers_410_106(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics, answer: Reply
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script(answer)

    assert push_error(router, user, notification()) == (410, 106, "No such subscription")

    assert storage.get_user(user.uaid) is None
    assert len(fake_fcm.messages) == 1
    assert bridge_errors(metrics) == [error_tags("unregistered", 410, 106)]
    assert [c.tags for c in metrics.find("updates.drop_user")] == [{"errno": "106"}]


# ---- 144: authentication failure and timeout


@pytest.mark.parametrize("body", [
    {"error": {"code": 401, "status": "UNAUTHENTICATED", "message": "Request had invalid authentication credentials."}},
    "",
], ids=["error-object", "empty"])
def test_144_fcm_401_is_502_901(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics, body: Any
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script(Reply(401, body))

    assert push_error(router, user, notification()) == (502, 901, "Bridge authentication failed")

    assert len(fake_fcm.messages) == 1  # not re-sent: the token did not expire
    assert storage.get_user(user.uaid) == user
    assert bridge_errors(metrics) == [error_tags("authentication", 502, 901)]


def test_144_fcm_timeout_is_502_903(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    router.route(user, notification())  # token and connection ready: only the send is timed below
    fake_fcm.script(Delay(TIMEOUT + 1.0))

    started = time.monotonic()
    assert push_error(router, user, notification()) == (502, 903, "Bridge request timed out")
    elapsed = time.monotonic() - started

    assert TIMEOUT <= elapsed < TIMEOUT + 0.5
    assert len(fake_fcm.messages) == 2
    assert bridge_errors(metrics) == [error_tags("timeout", 502, 903)]


# ---- 145: data map too large


def test_145_data_map_over_fcm_max_data_is_413_104_and_not_sent(
    fcm_settings: Callable[..., Settings], storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    note = notification(body=PAYLOAD, headers={"encoding": "aes128gcm"})
    size = len(f'{{"chid":"{CHID}","body":"{PAYLOAD_B64}","con":"aes128gcm"}}')
    assert size == 115

    too_small = FcmRouter(fcm_settings(AUTOPUSH_FCM_MAX_DATA=str(size - 7)), storage, metrics)
    assert push_error(too_small, user, note) == (413, 104, "Data too large: too long by 7 bytes")
    assert fake_fcm.messages == []
    assert fake_fcm.token_requests == []
    assert bridge_errors(metrics) == [error_tags("too_much_data", 413, 104)]

    exact = FcmRouter(fcm_settings(AUTOPUSH_FCM_MAX_DATA=str(size)), storage, metrics)
    assert exact.route(user, note) == "Direct"
    assert len(fake_fcm.messages) == 1


# ---- other FCM answers and failures (docs/protocol.md#bridges table)


def test_connection_refused_is_502_902(
    fcm_settings: Callable[..., Settings], storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    router = FcmRouter(fcm_settings(AUTOPUSH_FCM_BASE_URL=f"http://127.0.0.1:{free_port()}"), storage, metrics)
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})

    assert push_error(router, user, notification()) == (502, 902, "Bridge connection failed")

    assert len(fake_fcm.token_requests) == 1  # the token came from the fake's OAuth endpoint
    assert bridge_errors(metrics) == [error_tags("connection_unavailable", 502, 902)]


def test_dropped_connection_is_502_902(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script(CLOSE)

    assert push_error(router, user, notification()) == (502, 902, "Bridge connection failed")

    assert len(fake_fcm.messages) == 1
    assert bridge_errors(metrics) == [error_tags("connection_unavailable", 502, 902)]


@pytest.mark.parametrize(("answer", "reason"), [
    (Reply(500, {"error": {"code": 500, "status": "INTERNAL", "message": "Internal error encountered."}}),
     "upstream_500"),
    (Reply(400, {"error": {"code": 400, "status": "INVALID_ARGUMENT", "message": "Invalid TTL"}}),
     "upstream_400"),
    (Reply(403, {"error": {"code": 403, "status": "PERMISSION_DENIED", "message": "SenderId mismatch"}}),
     "upstream_403"),
], ids=["500", "400", "403"])
def test_error_object_is_502_with_upstream_reason(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics, answer: Reply, reason: str
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script(answer)

    assert push_error(router, user, notification()) == (502, None, "Bridge reported an error")

    assert storage.get_user(user.uaid) == user
    assert bridge_errors(metrics) == [error_tags(reason, 502, None)]


@pytest.mark.parametrize("answer", [
    Reply(503, {"error": {"code": 503, "status": "UNAVAILABLE", "message": "Unavailable"}}, {"Retry-After": "30"}),
    Reply(429, {"error": {"code": 429, "status": "RESOURCE_EXHAUSTED", "message": "Quota exceeded",
                          "details": [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError",
                                       "errorCode": "QUOTA_EXCEEDED"}]}}, {"Retry-After": "30"}),
], ids=["503", "429"])
def test_retry_after_is_not_slept_on(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics, answer: Reply
) -> None:
    """A client honouring Retry-After would wait 30 s and send again; the endpoint answers at once."""
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script(answer)

    started = time.monotonic()
    assert push_error(router, user, notification()) == (502, None, "Bridge reported an error")

    assert time.monotonic() - started < 1.0
    assert len(fake_fcm.messages) == 1
    assert storage.get_user(user.uaid) == user
    assert bridge_errors(metrics) == [error_tags(f"upstream_{answer.status}", 502, None)]


@pytest.mark.parametrize("answer", [
    Reply(502, "<html><body>Bad Gateway</body></html>"),
    Reply(503, ""),
    Reply(500, {"unexpected": True}),
], ids=["html", "empty", "json-without-error"])
def test_error_without_error_object_is_502(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics, answer: Reply
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script(answer)

    assert push_error(router, user, notification()) == (502, None, "Invalid response from bridge")

    assert len(fake_fcm.messages) == 1  # no retry of 502/503
    assert storage.get_user(user.uaid) == user
    assert bridge_errors(metrics) == [error_tags("invalid_response", 502, None)]


def test_oauth_endpoint_failure_is_500_and_retried_on_next_push(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})
    fake_fcm.script_token(Reply(400, {"error": "invalid_grant", "error_description": "account not found"}))

    assert push_error(router, user, notification()) == (500, None, "FCM credentials are not usable")
    assert fake_fcm.messages == []
    assert bridge_errors(metrics) == [error_tags("oauth_failure", 500, None)]

    assert router.route(user, notification()) == "Direct"
    assert len(fake_fcm.token_requests) == 2
    assert [m.headers["Authorization"] for m in fake_fcm.messages] == [f"Bearer {TOKEN_1}"]


def test_concurrent_pushes_share_one_failed_token_fetch(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    """Pushes waiting on a refresh that fails take its failure instead of each asking the token endpoint."""
    users = [fcm_user(storage, {"token": f"{DEVICE_TOKEN}-{n}", "app_id": APP}) for n in range(4)]
    fake_fcm.script_token(Delay(0.3, Reply(400, {"error": "invalid_grant", "error_description": "account not found"})))

    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(lambda u: push_error(router, u, notification()), users))

    assert results == [(500, None, "FCM credentials are not usable")] * 4
    assert len(fake_fcm.token_requests) == 1
    assert fake_fcm.messages == []
    assert bridge_errors(metrics) == [error_tags("oauth_failure", 500, None)] * 4

    assert router.route(users[0], notification()) == "Direct"  # the next push tries again
    assert len(fake_fcm.token_requests) == 2


def test_unreadable_service_account_key_is_500(
    make_settings: Callable[..., Settings], storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics,
    tmp_path: Path,
) -> None:
    settings = make_settings(
        "endpoint",
        AUTOPUSH_FCM_CREDENTIALS=json.dumps({APP: {"project_id": PROJECT, "credential": str(tmp_path / "none.json")}}),
        AUTOPUSH_FCM_BASE_URL=fake_fcm.url,
        AUTOPUSH_AUTH_KEYS=AUTH_KEY,
    )
    router = FcmRouter(settings, storage, metrics)
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": APP})

    assert push_error(router, user, notification()) == (500, None, "FCM credentials are not usable")

    assert (fake_fcm.token_requests, fake_fcm.messages) == ([], [])
    assert bridge_errors(metrics) == [error_tags("oauth_failure", 500, None)]


def test_record_with_unconfigured_app_id_is_400_106(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics
) -> None:
    user = fcm_user(storage, {"token": DEVICE_TOKEN, "app_id": "other-app"})

    assert push_error(router, user, notification()) == (400, 106, "Unknown FCM app id")

    assert storage.get_user(user.uaid) == user
    assert (fake_fcm.token_requests, fake_fcm.messages) == ([], [])
    assert bridge_errors(metrics) == [error_tags("invalid_app_id", 400, 106, app_id="other-app")]


@pytest.mark.parametrize(("router_data", "reason", "app_id"), [
    ({"app_id": APP}, "no_token", APP),
    ({"token": "", "app_id": APP}, "no_token", APP),
    ({"token": DEVICE_TOKEN}, "no_app_id", ""),
    ({"token": DEVICE_TOKEN, "creds": {"auth": "old-server-key"}}, "no_app_id", ""),
], ids=["no-token", "empty-token", "no-app-id", "creds-without-sender-id"])
def test_record_without_token_or_app_id_is_410_106(
    router: FcmRouter, storage: Storage, fake_fcm: FakeFcm, metrics: RecordingMetrics,
    router_data: dict, reason: str, app_id: str,
) -> None:
    user = fcm_user(storage, router_data)

    assert push_error(router, user, notification()) == (410, 106, "No such subscription")

    assert fake_fcm.messages == []
    assert bridge_errors(metrics) == [error_tags(reason, 410, 106, app_id=app_id)]


# ---- router_data (docs/protocol.md#bridge-registration)


def test_router_data_accepts_token_for_configured_app(validator: FcmRouter) -> None:
    assert validator.router_data(APP, {"token": "12345678", "channelID": CHID}) == {"token": "12345678", "app_id": APP}
    assert validator.router_data(LEGACY_APP, {"token": DEVICE_TOKEN}) == {"token": DEVICE_TOKEN, "app_id": LEGACY_APP}


@pytest.mark.parametrize("body", [
    {"token": "1234567"},
    {"token": "1234 5678"},
    {"token": " 12345678"},
    {},
    {"token": None},
    {"token": 123456789},
    {"token": ["12345678"]},
], ids=["short", "space", "leading-space", "missing", "null", "number", "list"])
def test_router_data_rejects_bad_token_400(validator: FcmRouter, body: dict) -> None:
    with pytest.raises(PushError) as caught:
        validator.router_data(APP, body)
    assert (caught.value.status, caught.value.errno, caught.value.message) == (400, None, "Missing or invalid token")


def test_router_data_rejects_unconfigured_app_id_400_106(validator: FcmRouter) -> None:
    with pytest.raises(PushError) as caught:
        validator.router_data("other-app", {"token": "12345678"})
    assert (caught.value.status, caught.value.errno, caught.value.message) == (400, 106, "Unknown FCM app id")
