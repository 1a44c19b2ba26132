"""Publisher controls without a server (docs/protocol.md#publisher-controls).

The push rate's cell rate algorithm against a hand-driven clock, the bound on
its state, key normalisation, the refusals with their metric, and the start-up
validation of ``AUTOPUSH_ALLOWED_VAPID_KEYS`` and ``AUTOPUSH_PUSH_RATE``. The
same checks over real HTTP are tests/integration/test_publisher_controls.py.
"""

from __future__ import annotations

import base64
import uuid

import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from autopush_flask.config import ENDPOINT, Settings, SettingsError, load_settings
from autopush_flask.crypto.endpoints import EndpointToken
from autopush_flask.crypto.vapid import VapidResult
from autopush_flask.endpoint.publisher_controls import (
    MAX_TRACKED_SUBSCRIPTIONS,
    REFUSED_METRIC,
    AllowedKeys,
    PublisherControls,
    PushRateLimiter,
    raw_vapid_key,
)
from autopush_flask.metrics import RecordingMetrics
from autopush_flask.push_errors import TOO_MANY_PUSHES, VAPID_KEY_NOT_ALLOWED, VAPID_REQUIRED, PushError


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def new_point() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )


def b64url(data: bytes, padded: bool = False) -> str:
    text = base64.urlsafe_b64encode(data).decode()
    return text if padded else text.rstrip("=")


def signed_by(key: str) -> VapidResult:
    return VapidResult(claims={}, public_key=key, scheme="vapid", version=2, sub_problem=None)


def token() -> EndpointToken:
    return EndpointToken(uuid.uuid4(), uuid.uuid4(), None)


# ---- push rate ---------------------------------------------------------------------


def test_a_burst_of_rate_pushes_then_one_every_interval() -> None:
    clock = Clock()
    limiter = PushRateLimiter(3, clock=clock)
    assert [limiter.wait(b"a") for _ in range(3)] == [0, 0, 0]
    assert limiter.wait(b"a") == pytest.approx(20)
    clock.now += 15
    assert limiter.wait(b"a") == pytest.approx(5)
    clock.now += 5
    assert limiter.wait(b"a") == 0
    assert limiter.wait(b"a") == pytest.approx(20)
    assert limiter.wait(b"b") == 0  # another subscription has its own budget


def test_refused_pushes_do_not_push_the_wait_further() -> None:
    clock = Clock()
    limiter = PushRateLimiter(1, clock=clock)
    assert limiter.wait(b"a") == 0
    assert [limiter.wait(b"a") for _ in range(100)] == [pytest.approx(60)] * 100
    clock.now += 60
    assert limiter.wait(b"a") == 0


def test_rate_zero_never_refuses_nor_keeps_state() -> None:
    limiter = PushRateLimiter(0)
    assert all(limiter.wait(b"a") == 0 for _ in range(1000))
    assert len(limiter) == 0


def test_state_is_bounded_in_subscriptions() -> None:
    """200k subscriptions (an attacker minting endpoints) leave the table at its maximum."""
    limiter = PushRateLimiter(60)
    for n in range(200_000):
        assert limiter.wait(n.to_bytes(32, "big")) == 0
    assert len(limiter) == MAX_TRACKED_SUBSCRIPTIONS == 100_000


def test_a_subscription_quiet_for_a_minute_is_forgotten() -> None:
    clock = Clock()
    limiter = PushRateLimiter(2, max_size=10, clock=clock)
    limiter.wait(b"a")
    clock.now += 61
    limiter.wait(b"b")  # a write expires what is stale
    assert len(limiter) == 1


# ---- allowed keys ----------------------------------------------------------------------


def test_every_spelling_of_a_key_is_the_same_point() -> None:
    point = new_point()
    der = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), point).public_bytes(
        Encoding.DER, PublicFormat.SubjectPublicKeyInfo
    )
    spellings = [b64url(point), b64url(point, padded=True), b64url(point[1:]), b64url(der)]
    spellings.append(base64.b64encode(point).decode())  # standard alphabet, as some senders write it
    assert {raw_vapid_key(text) for text in spellings} == {point}


@pytest.mark.parametrize("text", ["", "not-a-key", b64url(b"\x04" + bytes(64)), b64url(new_point()[:40])])
def test_what_is_not_a_point_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        raw_vapid_key(text)


def test_allowed_keys_refuse_no_vapid_and_other_keys() -> None:
    mine = new_point()
    allowed = AllowedKeys([b64url(mine, padded=True)])
    allowed.check(signed_by(b64url(mine)))
    with pytest.raises(PushError) as missing:
        allowed.check(None)
    assert missing.value.kind is VAPID_REQUIRED
    with pytest.raises(PushError) as other:
        allowed.check(signed_by(b64url(new_point())))
    assert other.value.kind is VAPID_KEY_NOT_ALLOWED
    assert (other.value.status, other.value.errno) == (403, 120)


def test_no_allowed_keys_allows_anyone() -> None:
    AllowedKeys().check(None)
    AllowedKeys().check(signed_by(b64url(new_point())))


# ---- both, with their metric -------------------------------------------------------------------


def test_refusals_are_counted_by_reason_and_429_says_when_to_retry() -> None:
    mine = b64url(new_point())
    clock = Clock()
    controls = PublisherControls(AllowedKeys([mine]), PushRateLimiter(2, clock=clock))
    metrics = RecordingMetrics()
    subscription = token()
    for vapid in (None, signed_by(b64url(new_point()))):
        with pytest.raises(PushError):
            controls.check(subscription, vapid, metrics)
    controls.check(subscription, signed_by(mine), metrics)
    controls.check(subscription, signed_by(mine), metrics)
    clock.now += 0.5
    with pytest.raises(PushError) as limited:
        controls.check(subscription, signed_by(mine), metrics)
    assert limited.value.kind is TOO_MANY_PUSHES
    assert (limited.value.status, limited.value.errno) == (429, 121)
    assert limited.value.headers == {"Retry-After": "30"}  # 29.5 s, rounded up
    assert TOO_MANY_PUSHES.headers == ()  # the per-push header never leaks into the shared kind
    reasons = [call.tags["reason"] for call in metrics.find(REFUSED_METRIC)]
    assert reasons == ["missing_vapid", "key_not_allowed", "rate_limited"]
    controls.check(token(), signed_by(mine), metrics)


def test_default_controls_are_off() -> None:
    controls = PublisherControls()
    metrics = RecordingMetrics()
    subscription = token()
    for _ in range(1000):
        controls.check(subscription, None, metrics)
    assert metrics.calls == []


# ---- settings ---------------------------------------------------------------------------


def endpoint_settings(**variables: str) -> Settings:
    return load_settings(ENDPOINT, {"AUTOPUSH_CRYPTO_KEYS": Fernet.generate_key().decode(), **variables})


def test_settings_default_to_off() -> None:
    settings = endpoint_settings()
    assert settings.allowed_vapid_keys == ()
    assert settings.push_rate == 0


def test_settings_accept_a_list_of_keys_and_a_rate() -> None:
    first, second = b64url(new_point(), padded=True), b64url(new_point())
    settings = endpoint_settings(AUTOPUSH_ALLOWED_VAPID_KEYS=f" {first} , {second}", AUTOPUSH_PUSH_RATE="30")
    assert settings.allowed_vapid_keys == (first, second)
    assert settings.push_rate == 30


@pytest.mark.parametrize(
    "value",
    [
        "typo",
        b64url(b"\x04" + bytes(64)),  # 65 bytes, but not a point on the curve
        f"{b64url(new_point())},{b64url(new_point())[:-4]}",  # one good entry does not excuse a bad one
    ],
)
def test_a_key_that_is_not_a_point_stops_start_up(value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        endpoint_settings(AUTOPUSH_ALLOWED_VAPID_KEYS=value)
    message = str(raised.value)
    assert message.startswith("invalid setting AUTOPUSH_ALLOWED_VAPID_KEYS:")
    assert "\n" not in message


@pytest.mark.parametrize("value", ["-1", "fast", "1.5"])
def test_an_invalid_rate_stops_start_up(value: str) -> None:
    with pytest.raises(SettingsError, match="AUTOPUSH_PUSH_RATE"):
        endpoint_settings(AUTOPUSH_PUSH_RATE=value)
