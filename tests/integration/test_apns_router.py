"""The APNs bridge against a fake Apple over real HTTP/2 and TLS (146, docs/protocol.md#bridge-registration, docs/protocol.md#bridges).

Real dynalite holds the router records; the fake APNs server (its own CA,
ALPN h2 only) records what arrived and answers what each test scripts.
Nothing is patched: the clock used for the JWT-refresh test is passed in.
"""

from __future__ import annotations

import dataclasses

import json
import re
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from autopush_flask.config import SettingsError
from autopush_flask.db import Notification, Storage, User
from autopush_flask.metrics import RecordingMetrics
from autopush_flask.push_errors import PushError
from autopush_flask.routers.apns import ApnsChannel, ApnsRouter
from tests.support.fake_apns import CLIENT_CN, CLOSE, Delay, FakeApns, Reply, TestPki

AUTH_KEY = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB="
KEY_ID = "ABC123DEFG"
TEAM_ID = "DEF123GHIJ"
DEVICE_TOKEN = "a1b2c3d4" * 8
VERSION = "gAAAAABl-message-id"
DEFAULT_APS = {
    "mutable-content": 1,
    "alert": {
        "loc-key": "SentTab.NoTabArrivingNotification.body",
        "title-loc-key": "SentTab.NoTabArrivingNotification.title",
    },
}
APNS_ID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
BridgeError = tuple[str, str, str, str, str]  # platform, app_id, reason, error, errno


# --------------------------------------------------------------------------
# Fixtures and helpers
# --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return TestPki(tmp_path_factory.mktemp("apns-pki"))


@pytest.fixture(scope="module")
def p8(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ec.EllipticCurvePublicKey]:
    """A P-256 token-signing key as Apple hands it out (.p8, PKCS#8 PEM) and its public half."""
    key = ec.generate_private_key(ec.SECP256R1())
    path = tmp_path_factory.mktemp("apns-p8") / f"AuthKey_{KEY_ID}.p8"
    path.write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ))
    return path, key.public_key()


@pytest.fixture
def fake(pki: TestPki) -> Iterator[FakeApns]:
    server = FakeApns(pki)
    yield server
    server.stop()


@pytest.fixture
def token_channel(fake: FakeApns, p8) -> dict:
    return {"key": str(p8[0]), "key_id": KEY_ID, "team_id": TEAM_ID,
            "topic": "org.mozilla.ios.Firefox", "url": fake.url, "ca": fake.ca_file}


@pytest.fixture
def make_router(make_settings, storage: Storage, metrics: RecordingMetrics) -> Iterator[Callable[..., ApnsRouter]]:
    routers: list[ApnsRouter] = []

    def make(channels: dict, clock: Callable[[], float] = time.time, **variables: str) -> ApnsRouter:
        settings = make_settings(
            AUTOPUSH_APNS_CHANNELS=json.dumps(channels), AUTOPUSH_AUTH_KEYS=AUTH_KEY, **variables
        )
        router = ApnsRouter(settings, storage, metrics, clock=clock)
        routers.append(router)
        return router

    yield make
    for router in routers:
        router.close()


@pytest.fixture
def router(make_router, token_channel: dict) -> ApnsRouter:
    return make_router({"firefox": token_channel})


@pytest.fixture
def bare_router(make_settings, token_channel: dict) -> Iterator[ApnsRouter]:
    """For router_data() alone: no tables needed, so none are created."""
    settings = make_settings(
        AUTOPUSH_APNS_CHANNELS=json.dumps({"firefox": token_channel}), AUTOPUSH_AUTH_KEYS=AUTH_KEY
    )
    router = ApnsRouter(settings, None, RecordingMetrics())
    yield router
    router.close()


def register(storage: Storage, router_data: dict) -> User:
    """A bridged record as the registration API writes it, read back from dynalite."""
    uaid = uuid.uuid4().hex
    assert storage.add_user(User(
        uaid=uaid, router_type="apns", router_data=router_data,
        connected_at=int(time.time() * 1000), record_version=1,
    ))
    return storage.get_user(uaid)


def registered(storage: Storage, router: ApnsRouter, body: dict | None = None, channel: str = "firefox") -> User:
    return register(storage, router.router_data(channel, body or {"token": DEVICE_TOKEN}))


def notification(data: str | None = None, ttl: int = 3600) -> Notification:
    return Notification(
        channel_id=str(uuid.uuid4()), version=VERSION, ttl=ttl, timestamp=int(time.time()),
        data=data, headers={"encoding": "aes128gcm"} if data else None,
    )


def push_error(router: ApnsRouter, user: User, message: Notification | None = None) -> PushError:
    with pytest.raises(PushError) as caught:
        router.route(user, message or notification())
    return caught.value


def bridge_errors(metrics: RecordingMetrics) -> list[BridgeError]:
    keys = ("platform", "app_id", "reason", "error", "errno")
    return [tuple(call.tags[k] for k in keys) for call in metrics.find("notification.bridge.error")]


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------
# Checklist 146: payload and device gone
# --------------------------------------------------------------------------


def test_146_payload_has_default_aps_chid_and_ver(router, storage, metrics, fake) -> None:
    user = registered(storage, router)
    message = notification(data="SGVsbG8gd29ybGQ")
    assert router.route(user, message) == "Direct"

    (request,) = fake.requests
    assert (request.method, request.path) == ("POST", f"/3/device/{DEVICE_TOKEN}")
    assert (request.http_version, request.alpn) == ("HTTP/2", "h2")
    assert request.body == {
        "chid": message.channel_id, "body": "SGVsbG8gd29ybGQ", "con": "aes128gcm",
        "ver": VERSION, "aps": DEFAULT_APS,
    }
    assert str(uuid.UUID(request.body["chid"])) == request.body["chid"]  # dashed spelling (docs/protocol.md#bridge-registration)
    assert [c.tags for c in metrics.find("notification.bridge.sent")] == [
        {"platform": "apns", "app_id": "firefox"}
    ]
    assert metrics.find("notification.message_data") == []  # counted once, by the endpoint
    assert bridge_errors(metrics) == []


def test_146_payload_without_body_is_chid_ver_and_aps_only(router, storage, fake) -> None:
    message = notification()
    router.route(registered(storage, router), message)
    assert fake.requests[0].body == {"chid": message.channel_id, "ver": VERSION, "aps": DEFAULT_APS}


def test_146_apns_410_deletes_the_record_and_answers_410_106(router, storage, metrics, fake) -> None:
    user = registered(storage, router)
    fake.script(Reply(410, "Unregistered"))
    error = push_error(router, user)
    assert (error.status, error.errno) == (410, 106)
    assert storage.get_user(user.uaid) is None
    assert len(fake.requests) == 1
    assert bridge_errors(metrics) == [("apns", "firefox", "unregistered", "410", "106")]
    assert [c.tags for c in metrics.find("updates.drop_user")] == [{"errno": "106"}]


def test_bad_device_token_is_device_gone_too(router, storage, metrics, fake) -> None:
    user = registered(storage, router)
    fake.script(Reply(400, "BadDeviceToken"))
    error = push_error(router, user)
    assert (error.status, error.errno) == (410, 106)
    assert storage.get_user(user.uaid) is None
    assert bridge_errors(metrics) == [("apns", "firefox", "unregistered", "410", "106")]


@pytest.mark.parametrize(("answer", "reason"), [
    (Reply(400, "TopicDisallowed"), "TopicDisallowed"),
    (Reply(403, "ExpiredProviderToken"), "ExpiredProviderToken"),
    (Reply(500), "upstream_500"),  # no reason in the body
])
def test_other_apns_errors_are_502_with_the_reason_as_metric(
    router, storage, metrics, fake, answer, reason
) -> None:
    user = registered(storage, router)
    fake.script(answer)
    error = push_error(router, user)
    assert (error.status, error.errno, error.message) == (502, None, f"APNs error, {reason}")
    assert storage.get_user(user.uaid) == user
    assert bridge_errors(metrics) == [("apns", "firefox", reason, "502", "None")]
    assert metrics.find("notification.bridge.sent") == []


# --------------------------------------------------------------------------
# Headers (docs/protocol.md#bridges)
# --------------------------------------------------------------------------


def test_146_headers_topic_priority_expiration_push_type_and_id(make_router, storage, fake, token_channel) -> None:
    beta = {k: v for k, v in token_channel.items() if k != "topic"}
    router = make_router({"firefox": token_channel, "beta": beta})
    first, second = notification(ttl=3600), notification(ttl=0)
    router.route(registered(storage, router), first)
    router.route(registered(storage, router, channel="beta"), second)

    configured, default = (request.headers for request in fake.requests)
    assert configured["apns-topic"] == "org.mozilla.ios.Firefox"
    assert default["apns-topic"] == "com.mozilla.org.beta"
    assert configured["apns-priority"] == default["apns-priority"] == "10"
    assert configured["apns-expiration"] == str(first.timestamp + 3600)
    assert default["apns-expiration"] == str(second.timestamp)
    assert configured["apns-push-type"] == default["apns-push-type"] == "alert"
    assert APNS_ID.match(configured["apns-id"]) and APNS_ID.match(default["apns-id"])
    assert configured["apns-id"] != default["apns-id"]
    assert configured["content-type"] == "application/json"


@pytest.mark.parametrize(
    ("urgency", "topic", "priority"),
    [("very-low", "t1", "5"), ("low", None, "5"), ("normal", "t-2", "10"), ("high", None, "10"), (None, None, "10")],
)
def test_urgency_sets_the_priority_and_topic_the_collapse_id(router, storage, fake, urgency, topic, priority) -> None:
    router.route(registered(storage, router), dataclasses.replace(notification(), urgency=urgency, topic=topic))
    [request] = fake.requests
    assert request.headers["apns-priority"] == priority
    assert request.headers.get("apns-collapse-id") == topic


# --------------------------------------------------------------------------
# Authentication
# --------------------------------------------------------------------------


def test_token_auth_sends_an_es256_jwt_reused_across_pushes(router, storage, fake, p8) -> None:
    user = registered(storage, router)
    before = int(time.time())
    router.route(user, notification())
    router.route(user, notification())
    after = int(time.time())

    first, second = fake.requests
    scheme, token = first.headers["authorization"].split(" ", 1)
    assert scheme == "bearer"
    assert jwt.get_unverified_header(token) == {"alg": "ES256", "kid": KEY_ID, "typ": "JWT"}
    claims = jwt.decode(token, p8[1], algorithms=["ES256"])
    assert set(claims) == {"iss", "iat"}
    assert claims["iss"] == TEAM_ID
    assert before <= claims["iat"] <= after
    assert second.headers["authorization"] == first.headers["authorization"]
    assert (first.connection, second.connection) == (1, 1)  # one pooled HTTP/2 connection
    assert first.client_cert_cn is None


def test_token_is_replaced_once_it_is_50_minutes_old(make_router, storage, fake, token_channel, p8) -> None:
    now = [1_700_000_000.0]
    router = make_router({"firefox": token_channel}, clock=lambda: now[0])
    user = registered(storage, router)
    for offset in (0, 49 * 60 + 59, 50 * 60):
        now[0] = 1_700_000_000.0 + offset
        router.route(user, notification())

    tokens = [r.headers["authorization"].removeprefix("bearer ") for r in fake.requests]
    assert tokens[0] == tokens[1] != tokens[2]
    iats = [jwt.decode(t, p8[1], algorithms=["ES256"], options={"verify_iat": False})["iat"] for t in tokens]
    assert iats == [1_700_000_000, 1_700_000_000, 1_700_003_000]


@pytest.mark.parametrize("form", ["inline PEM", "file paths"])
def test_certificate_auth_presents_the_client_certificate(make_router, storage, fake, pki, tmp_path, form) -> None:
    cert, key = pki.client_cert_pem, pki.client_key_pem
    if form == "file paths":
        (tmp_path / "cert.pem").write_text(cert)
        (tmp_path / "key.pem").write_text(key)
        cert, key = str(tmp_path / "cert.pem"), str(tmp_path / "key.pem")
    router = make_router({"firefox": {"cert": cert, "key": key, "url": fake.url, "ca": fake.ca_file}})
    assert router.route(registered(storage, router), notification()) == "Direct"

    (request,) = fake.requests
    assert request.client_cert_cn == CLIENT_CN  # verified against the test CA by the fake
    assert "authorization" not in request.headers
    assert (request.http_version, request.alpn) == ("HTTP/2", "h2")


def test_channel_configuration_base_urls_and_bad_credentials(pki, p8) -> None:
    token = {"key": p8[0].read_text(), "key_id": KEY_ID, "team_id": TEAM_ID}
    assert ApnsChannel.from_config("a", token).base_url == "https://api.push.apple.com"
    assert ApnsChannel.from_config("a", {**token, "sandbox": True}).base_url == (
        "https://api.development.push.apple.com"
    )
    assert ApnsChannel.from_config("a", {**token, "url": "https://127.0.0.1:9/"}).base_url == "https://127.0.0.1:9"
    assert ApnsChannel.from_config("a", token).topic == "com.mozilla.org.a"

    rsa_pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    bad = [
        ({**token, "key": rsa_pem}, "key is not a P-256 (.p8) token-signing key"),
        ({**token, "key": "/nonexistent/AuthKey.p8"}, "key file unreadable"),
        ({"key_id": KEY_ID, "team_id": TEAM_ID}, "lacks key"),
        ({"key": pki.client_key_pem}, "lacks cert"),
        ({"cert": pki.client_cert_pem, "key": p8[0].read_text()}, "cert/key rejected"),
    ]
    for config, problem in bad:
        with pytest.raises(SettingsError) as caught:
            ApnsChannel.from_config("beta", config)
        assert str(caught.value).startswith(f"invalid setting AUTOPUSH_APNS_CHANNELS: channel 'beta' {problem}")


# --------------------------------------------------------------------------
# Stored aps (A.24)
# --------------------------------------------------------------------------


@pytest.mark.parametrize("given", [
    {"alert": {"title": "Tab from Pixel", "body": "héllo"}, "badge": 3, "sound": "default"},
    '{"alert": {"title": "Tab from Pixel", "body": "héllo"}, "badge": 3, "sound": "default"}',
])
def test_stored_aps_is_sent_verbatim(router, storage, fake, given) -> None:
    expected = {"alert": {"title": "Tab from Pixel", "body": "héllo"}, "badge": 3, "sound": "default"}
    user = registered(storage, router, {"token": DEVICE_TOKEN, "aps": given})
    assert user.router_data == {"token": DEVICE_TOKEN, "rel_channel": "firefox", "aps": expected}
    message = notification()
    router.route(user, message)
    assert fake.requests[0].body == {"chid": message.channel_id, "ver": VERSION, "aps": expected}


# --------------------------------------------------------------------------
# Size, network failures, retry
# --------------------------------------------------------------------------


def test_payload_limit_is_apns_max_data_and_oversize_sends_nothing(
    make_router, storage, metrics, fake, token_channel
) -> None:
    message = notification(data="A" * 3000)
    big = make_router({"firefox": token_channel}, AUTOPUSH_APNS_MAX_DATA="8192")
    user = registered(storage, big)
    big.route(user, message)
    size = len(fake.requests[0].raw_body)

    exact = make_router({"firefox": token_channel}, AUTOPUSH_APNS_MAX_DATA=str(size))
    assert exact.route(user, message) == "Direct"
    assert len(fake.requests) == 2

    metrics.clear()
    connections = fake.connections
    small = make_router({"firefox": token_channel}, AUTOPUSH_APNS_MAX_DATA=str(size - 1))
    error = push_error(small, user, message)
    assert (error.status, error.errno, error.message) == (413, 104, "Data too large: too long by 1 bytes")
    assert len(fake.requests) == 2 and fake.connections == connections
    assert bridge_errors(metrics) == [("apns", "firefox", "too_much_data", "413", "104")]


def test_connection_refused_is_502_902(make_router, storage, metrics, token_channel) -> None:
    router = make_router({"firefox": {**token_channel, "url": f"https://127.0.0.1:{closed_port()}"}})
    error = push_error(router, registered(storage, router))
    assert (error.status, error.errno) == (502, 902)
    assert bridge_errors(metrics) == [("apns", "firefox", "connection_unavailable", "502", "902")]


def test_timeout_is_502_903(make_router, storage, metrics, fake, token_channel) -> None:
    router = make_router({"firefox": token_channel}, AUTOPUSH_APNS_TIMEOUT="0.5")
    user = registered(storage, router)
    fake.script(Delay(3))
    started = time.monotonic()
    error = push_error(router, user)
    assert time.monotonic() - started < 2
    assert (error.status, error.errno) == (502, 903)
    assert len(fake.requests) == 1  # a timeout is not retried
    assert bridge_errors(metrics) == [("apns", "firefox", "timeout", "502", "903")]
    assert storage.get_user(user.uaid) == user


def test_connection_closed_by_apns_is_retried_once_and_delivered(router, storage, metrics, fake) -> None:
    user = registered(storage, router)
    router.route(user, notification())  # a pooled connection exists
    fake.script(CLOSE)
    message = notification(data="SGk")
    assert router.route(user, message) == "Direct"

    _, dropped, retried = fake.requests
    assert (dropped.connection, retried.connection) == (1, 2)
    assert dropped.body == retried.body == {
        "chid": message.channel_id, "body": "SGk", "con": "aes128gcm", "ver": VERSION, "aps": DEFAULT_APS,
    }
    assert dropped.headers["apns-id"] == retried.headers["apns-id"]
    assert bridge_errors(metrics) == []


def test_connection_closed_twice_is_502_902(router, storage, metrics, fake) -> None:
    user = registered(storage, router)
    fake.script(CLOSE, CLOSE)
    error = push_error(router, user)
    assert (error.status, error.errno) == (502, 902)
    assert len(fake.requests) == 2
    assert bridge_errors(metrics) == [("apns", "firefox", "connection_unavailable", "502", "902")]


# --------------------------------------------------------------------------
# Records the router cannot use
# --------------------------------------------------------------------------


def test_record_for_an_unconfigured_channel_is_400(router, storage, metrics, fake) -> None:
    user = register(storage, {"token": DEVICE_TOKEN, "rel_channel": "nightly"})
    error = push_error(router, user)
    assert (error.status, error.errno, error.message) == (400, None, "Unknown release channel")
    assert fake.requests == []
    assert storage.get_user(user.uaid) == user
    assert bridge_errors(metrics) == [("apns", "nightly", "invalid_channel", "400", "None")]


@pytest.mark.parametrize("router_data", [
    {"rel_channel": "firefox"}, {"token": DEVICE_TOKEN}, {},
])
def test_record_without_token_or_channel_is_410_106(router, storage, fake, router_data) -> None:
    user = register(storage, router_data)
    error = push_error(router, user)
    assert (error.status, error.errno) == (410, 106)
    assert fake.requests == []


# --------------------------------------------------------------------------
# router_data() (docs/protocol.md#bridge-registration)
# --------------------------------------------------------------------------


def test_router_data_accepts_token_and_optional_aps(bare_router) -> None:
    router = bare_router
    assert router.router_data("firefox", {"token": DEVICE_TOKEN}) == {
        "token": DEVICE_TOKEN, "rel_channel": "firefox",
    }
    assert router.router_data("firefox", {"token": "12345678", "aps": None, "channelID": "x"}) == {
        "token": "12345678", "rel_channel": "firefox",
    }
    assert router.router_data("firefox", {"token": DEVICE_TOKEN, "aps": "{}"})["aps"] == {}


@pytest.mark.parametrize(("app_id", "body", "message"), [
    ("firefox", {}, "Missing or invalid token"),
    ("firefox", {"token": "1234567"}, "Missing or invalid token"),
    ("firefox", {"token": "abcd efgh"}, "Missing or invalid token"),
    ("firefox", {"token": 1234567890}, "Missing or invalid token"),
    ("firefox", {"token": ""}, "Missing or invalid token"),
    ("nightly", {"token": DEVICE_TOKEN}, "Unknown release channel"),
    ("firefox", {"token": DEVICE_TOKEN, "aps": 5}, "Invalid aps: must be a JSON object"),
    ("firefox", {"token": DEVICE_TOKEN, "aps": ["alert"]}, "Invalid aps: must be a JSON object"),
    ("firefox", {"token": DEVICE_TOKEN, "aps": "not json"}, "Invalid aps: must be a JSON object"),
    ("firefox", {"token": DEVICE_TOKEN, "aps": '"alert"'}, "Invalid aps: must be a JSON object"),
    ("firefox", {"token": DEVICE_TOKEN, "aps": "[1]"}, "Invalid aps: must be a JSON object"),
])
def test_router_data_rejections_are_400_without_errno(bare_router, app_id, body, message) -> None:
    with pytest.raises(PushError) as caught:
        bare_router.router_data(app_id, body)
    assert (caught.value.status, caught.value.errno, caught.value.message) == (400, None, message)


# --------------------------------------------------------------------------
# Under gevent
# --------------------------------------------------------------------------


GEVENT_SCRIPT = textwrap.dedent("""
    from gevent import monkey
    monkey.patch_all()
    import json, sys, uuid
    import gevent
    from autopush_flask.config import load_settings
    from autopush_flask.db import Notification, User
    from autopush_flask.metrics import RecordingMetrics
    from autopush_flask.routers.apns import ApnsRouter

    settings = load_settings("endpoint", {
        "AUTOPUSH_APNS_CHANNELS": sys.argv[1], "AUTOPUSH_AUTH_KEYS": sys.argv[2],
        "AUTOPUSH_HOSTNAME": "localhost", "AUTOPUSH_STATSD_HOST": "", "AUTOPUSH_ENV": "development",
    })
    router = ApnsRouter(settings, None, RecordingMetrics())
    user = User(uaid=uuid.uuid4().hex, router_type="apns",
                router_data={"token": "a1b2c3d4" * 8, "rel_channel": "firefox"})

    def push(i):
        return router.route(user, Notification(str(uuid.uuid4()), f"v{i}", 60, 1700000000))

    jobs = [gevent.spawn(push, i) for i in range(20)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    print(json.dumps([job.value for job in jobs]))
""")


def test_concurrent_pushes_under_gevent_monkey_patching(fake, token_channel) -> None:
    fake.script(*[Delay(0.2) for _ in range(20)])  # all in flight at once
    result = subprocess.run(
        [sys.executable, "-c", GEVENT_SCRIPT, json.dumps({"firefox": token_channel}), AUTH_KEY],
        capture_output=True, text=True, timeout=30, cwd=Path(__file__).parents[2],
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == ["Direct"] * 20
    assert sorted(r.body["ver"] for r in fake.requests) == sorted(f"v{i}" for i in range(20))
    assert {(r.http_version, r.alpn) for r in fake.requests} == {("HTTP/2", "h2")}
