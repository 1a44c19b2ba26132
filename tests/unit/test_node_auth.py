"""The router request signatures: a round trip and every reason to refuse."""

from __future__ import annotations

import pytest

from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.node_auth import (
    BODY,
    BODY_HASH_HEADER,
    MALFORMED,
    MAX_SKEW_SECONDS,
    MISSING,
    SIGNATURE,
    SIGNATURE_HEADER,
    STALE,
    TIMESTAMP_HEADER,
    RouterAuthError,
    RouterRequestKeys,
)

KEY_A, KEY_B, KEY_C = (CryptoKeys.generate_key() for _ in range(3))
NOW = 1_800_000_000.0
PATH = "/push/0123456789abcdef0123456789abcdef"
BODY_BYTES = b'{"channelID": "x", "version": "v"}'


def keys(*crypto_keys: str) -> RouterRequestKeys:
    return RouterRequestKeys.from_crypto_keys(CryptoKeys(list(crypto_keys)))


def verify(verifier: RouterRequestKeys, headers: dict[str, str], method: str = "PUT", path: str = PATH,
           body: bytes = BODY_BYTES, now: float = NOW) -> None:
    signed = verifier.verify_head(method, path, headers, now)
    verifier.verify_body(signed, body)


def reason(verifier: RouterRequestKeys, headers: dict[str, str], **request: object) -> str:
    with pytest.raises(RouterAuthError) as refused:
        verify(verifier, headers, **request)
    return refused.value.reason


def test_round_trip_and_the_three_headers() -> None:
    signer = keys(KEY_A)
    headers = dict(signer.sign("PUT", PATH, BODY_BYTES, NOW))
    assert set(headers) == {TIMESTAMP_HEADER, BODY_HASH_HEADER, SIGNATURE_HEADER}
    assert headers[TIMESTAMP_HEADER] == str(int(NOW))
    verify(keys(KEY_A), headers)
    verify(keys(KEY_A), dict(signer.sign("DELETE", "/notif/u/1", now=NOW)), method="DELETE",
           path="/notif/u/1", body=b"")


def test_rotation_signs_with_the_first_key_and_accepts_any() -> None:
    headers = dict(keys(KEY_B, KEY_A).sign("PUT", PATH, BODY_BYTES, NOW))
    verify(keys(KEY_A, KEY_B), headers)
    assert reason(keys(KEY_A), headers) == SIGNATURE  # signed with B, the newest of B,A


def test_unrelated_key_is_refused() -> None:
    headers = dict(keys(KEY_C).sign("PUT", PATH, BODY_BYTES, NOW))
    assert reason(keys(KEY_A, KEY_B), headers) == SIGNATURE


@pytest.mark.parametrize("missing", [TIMESTAMP_HEADER, BODY_HASH_HEADER, SIGNATURE_HEADER])
def test_each_missing_header(missing: str) -> None:
    headers = dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW))
    del headers[missing]
    assert reason(keys(KEY_A), headers) == MISSING


@pytest.mark.parametrize(
    ("header", "value"),
    [(TIMESTAMP_HEADER, "-5"), (TIMESTAMP_HEADER, "1e9"), (TIMESTAMP_HEADER, "9" * 40),
     (SIGNATURE_HEADER, "zz" * 32), (SIGNATURE_HEADER, "ab"), (BODY_HASH_HEADER, "+" + "a" * 63),
     (BODY_HASH_HEADER, "a_" * 32), (SIGNATURE_HEADER, "\u0661" * 64)],
)
def test_malformed_headers(header: str, value: str) -> None:
    headers = dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW))
    headers[header] = value
    assert reason(keys(KEY_A), headers) == MALFORMED


@pytest.mark.parametrize("skew", [MAX_SKEW_SECONDS + 1, -(MAX_SKEW_SECONDS + 1), 120])
def test_stale_either_way(skew: float) -> None:
    headers = dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW - skew))
    assert reason(keys(KEY_A), headers) == STALE


def test_skew_within_the_window_is_accepted() -> None:
    for skew in (MAX_SKEW_SECONDS, -MAX_SKEW_SECONDS):
        verify(keys(KEY_A), dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW - skew)))


def test_another_body_under_the_signed_hash() -> None:
    headers = dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW))
    assert reason(keys(KEY_A), headers, body=b'{"channelID": "x", "version": "forged"}') == BODY


def test_another_hash_breaks_the_signature() -> None:
    other = dict(keys(KEY_A).sign("PUT", PATH, b"other", NOW))
    headers = dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW))
    headers[BODY_HASH_HEADER] = other[BODY_HASH_HEADER]
    assert reason(keys(KEY_A), headers, body=b"other") == SIGNATURE


@pytest.mark.parametrize(("method", "path"), [("DELETE", PATH), ("PUT", "/notif/0123456789abcdef0123456789abcdef"),
                                              ("PUT", PATH + "?x=1"), ("PUT", PATH.upper())])
def test_replay_to_another_method_or_path(method: str, path: str) -> None:
    headers = dict(keys(KEY_A).sign("PUT", PATH, BODY_BYTES, NOW))
    assert reason(keys(KEY_A), headers, method=method, path=path) == SIGNATURE


def test_subkeys_are_not_the_fernet_keys_and_differ_per_key() -> None:
    first, second = CryptoKeys([KEY_A, KEY_B]).derive(b"autopush-flask router request v1")
    assert first != second and len(first) == 32


def test_no_subkey_is_an_error() -> None:
    with pytest.raises(ValueError):
        RouterRequestKeys([])
