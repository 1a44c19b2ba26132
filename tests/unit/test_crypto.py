"""Unit tests for the autopush_flask.crypto package (real cryptography, no mocks).

Each section below names the module it covers.

Numbers in test names are the conformance-checklist items they check.
"""

from __future__ import annotations

import ast
import base64
import hashlib
import json
import pathlib
import uuid

import jwt
import pytest
from cryptography.fernet import Fernet
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

import autopush_flask.crypto
from autopush_flask.crypto.base64url import decode_base64_lenient, encode_base64url
from autopush_flask.crypto.bridge_secrets import make_bridge_secret, verify_bridge_secret
from autopush_flask.crypto.crypto_key_header import parse_crypto_params
from autopush_flask.crypto.endpoints import (
    EndpointToken,
    decode_app_server_key,
    key_hash_matches,
    make_endpoint_token,
    make_endpoint_url,
    parse_endpoint_token,
    vapid_key_hash,
)
from autopush_flask.crypto.keys import CryptoKeys, InvalidTokenError
from autopush_flask.crypto.message_ids import InvalidMessageIdError, MessageId
from autopush_flask.crypto.vapid import (
    VapidError,
    VapidVerifier,
    decode_vapid_public_key,
    der_signature_to_raw,
    parse_vapid_authorization,
    verify_vapid,
)
from autopush_flask.db.models import Notification
from autopush_flask.ids import canonical_uaid

UAID = uuid.UUID("deadbeef00000000deadbeef00000000")
CHID = uuid.UUID("d9b74644-4f97-46aa-b8fa-9393985cd6cd")
NOW = 1_700_000_000
AUD = "https://updates.push.example.com"
KEY_1 = Fernet.generate_key().decode()
KEY_2 = Fernet.generate_key().decode()


# --------------------------------------------------------------------------
# helpers


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


_DROP = object()  # marks a claim to leave out


def _claims(**overrides):
    claims = {"aud": AUD, "exp": NOW + 3600, "sub": "mailto:ops@example.com"}
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not _DROP}


def sign(private_key: ec.EllipticCurvePrivateKey, claims: dict) -> str:
    """A JOSE (raw r||s) ES256 JWT, as every modern library produces."""
    return jwt.encode(claims, private_key, algorithm="ES256")


def to_der_signature(token: str) -> str:
    """The same JWT with its signature re-encoded as ASN.1 DER."""
    head, body, sig = token.split(".")
    raw = decode_base64_lenient(sig)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    return f"{head}.{body}.{_b64(encode_dss_signature(r, s))}"


def raw_point(private_key: ec.EllipticCurvePrivateKey) -> bytes:
    return private_key.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint
    )


@pytest.fixture(scope="module")
def signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def other_signer() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def pub(signer) -> str:
    return _b64(raw_point(signer))


@pytest.fixture()
def keys() -> CryptoKeys:
    return CryptoKeys([KEY_1, KEY_2])


def vapid_header(token: str, key: str) -> str:
    return f"vapid t={token}, k={key}"


def reason_of(authorization: str, crypto_key: str | None = None, now=NOW) -> str:
    with pytest.raises(VapidError) as info:
        verify_vapid(authorization, crypto_key, AUD, now=now)
    return info.value.reason


# --------------------------------------------------------------------------
# base64 (crypto.base64url)


@pytest.mark.parametrize(
    "text",
    ["-_-_", "+/+/", "_w", "_w==", "/w=", "AAEC", "AAECAw", "AAECAw=="],
)
def test_decode_base64_lenient_accepts_both_alphabets_and_optional_padding(text):
    bare = text.rstrip("=")
    expected = base64.urlsafe_b64decode(bare + "=" * (-len(bare) % 4))
    assert decode_base64_lenient(text) == expected


def test_decode_base64_lenient_values():
    assert decode_base64_lenient("AAECAw") == b"\x00\x01\x02\x03"
    assert decode_base64_lenient("-_8") == b"\xfb\xff"
    assert decode_base64_lenient("+/8=") == b"\xfb\xff"
    assert decode_base64_lenient("") == b""


@pytest.mark.parametrize("text", ["AAECA", "AA!C", "AA EC", "A=AA", "ÄÄÄÄ", "AAAA\n"])
def test_decode_base64_lenient_rejects_garbage(text):
    with pytest.raises(ValueError):
        decode_base64_lenient(text)


def test_encode_base64url_is_unpadded_urlsafe():
    assert encode_base64url(b"\xfb\xff") == "-_8"
    assert encode_base64url(b"\xc3\x28\xa0\xa1\xe2\x28\xa1") == "wyigoeIooQ"


# --------------------------------------------------------------------------
# Fernet keys (crypto.keys) and endpoint tokens (crypto.endpoints)


def test_crypto_keys_requires_a_list_of_keys():
    with pytest.raises(ValueError):
        CryptoKeys([])
    with pytest.raises(TypeError):
        CryptoKeys(KEY_1)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        CryptoKeys(["not-a-fernet-key"])


def test_derived_subkeys_follow_key_order_and_purpose():
    old, new = CryptoKeys.generate_key(), CryptoKeys.generate_key()
    rotated = CryptoKeys([new, old]).derive(b"purpose one")
    assert rotated == tuple(reversed(CryptoKeys([old, new]).derive(b"purpose one")))
    assert len(rotated) == 2 and all(len(subkey) == 32 for subkey in rotated)
    assert rotated[0] != rotated[1]
    assert CryptoKeys([new]).derive(b"purpose two")[0] != rotated[0]
    assert rotated[0] not in base64.urlsafe_b64decode(new)


def test_generate_key_is_a_44_char_fernet_key():
    key = CryptoKeys.generate_key()
    assert len(key) == 44 and key.endswith("=")
    assert len(base64.urlsafe_b64decode(key)) == 32
    assert CryptoKeys([key]).decrypt(CryptoKeys([key]).encrypt(b"x")) == b"x"


def test_decrypt_accepts_stripped_padding(keys):
    token = keys.encrypt(b"hello")
    assert token.endswith("=")
    assert keys.decrypt(token) == b"hello"
    assert keys.decrypt(token.rstrip("=")) == b"hello"


@pytest.mark.parametrize("garbage", ["", "garbage", "gAAAAA", "ÄÖÜ", "a" * 140])
def test_garbage_tokens_raise_invalid_token_error(keys, garbage):
    with pytest.raises(InvalidTokenError):
        keys.decrypt(garbage)
    for version in ("v1", "v2"):
        with pytest.raises(InvalidTokenError):
            parse_endpoint_token(keys, garbage, version)


def test_70_second_key_decrypts_and_new_tokens_use_first_key():
    old = CryptoKeys([KEY_2])
    _, old_token = make_endpoint_token(old, UAID, CHID, None)
    rotated = CryptoKeys([KEY_1, KEY_2])
    assert parse_endpoint_token(rotated, old_token, "v1") == EndpointToken(UAID, CHID, None)

    _, new_token = make_endpoint_token(rotated, UAID, CHID, None)
    assert parse_endpoint_token(CryptoKeys([KEY_1]), new_token, "v1").uaid == UAID
    with pytest.raises(InvalidTokenError):
        parse_endpoint_token(CryptoKeys([KEY_2]), new_token, "v1")


def test_71_token_lengths(keys, pub):
    version, token = make_endpoint_token(keys, UAID, CHID, None)
    assert (version, len(token), "=" in token) == ("v1", 140, False)
    version, token = make_endpoint_token(keys, UAID, CHID, decode_app_server_key(pub))
    assert (version, len(token), "=" in token) == ("v2", 183, False)


def test_72_token_plaintexts(keys, pub):
    server_key = decode_app_server_key(pub)
    _, v1 = make_endpoint_token(keys, UAID, CHID, None)
    assert keys.decrypt(v1) == UAID.bytes + CHID.bytes
    _, v2 = make_endpoint_token(keys, UAID, CHID, server_key)
    plaintext = keys.decrypt(v2)
    assert len(plaintext) == 64
    assert plaintext == UAID.bytes + CHID.bytes + hashlib.sha256(server_key).digest()
    parsed = parse_endpoint_token(keys, v2, "v2")
    assert parsed == EndpointToken(UAID, CHID, hashlib.sha256(server_key).digest())


def test_parse_endpoint_token_rejects_wrong_length_and_version(keys, pub):
    _, v1 = make_endpoint_token(keys, UAID, CHID, None)
    _, v2 = make_endpoint_token(keys, UAID, CHID, decode_app_server_key(pub))
    for token, version in [(v1, "v2"), (v2, "v1"), (v1, "v3"), (v1, "V1"), (v1, "")]:
        with pytest.raises(InvalidTokenError):
            parse_endpoint_token(keys, token, version)
    for size in (31, 33, 63, 65):
        with pytest.raises(InvalidTokenError):
            parse_endpoint_token(keys, keys.encrypt(b"x" * size), "v1" if size < 40 else "v2")


def test_make_endpoint_url(keys, pub):
    url = make_endpoint_url(keys, "https://push.example.com/", UAID, CHID, None)
    prefix = "https://push.example.com/wpush/v1/"
    assert url.startswith(prefix) and len(url) == len(prefix) + 140
    url = make_endpoint_url(keys, "https://push.example.com", UAID, CHID, b"\x04key")
    assert url.startswith("https://push.example.com/wpush/v2/")
    token = url.rsplit("/", 1)[1]
    assert parse_endpoint_token(keys, token, "v2").key_hash == hashlib.sha256(b"\x04key").digest()


def test_make_endpoint_token_rejects_empty_key(keys):
    with pytest.raises(ValueError):
        make_endpoint_token(keys, UAID, CHID, b"")


def test_decode_app_server_key(pub):
    raw = decode_base64_lenient(pub)
    assert decode_app_server_key(pub + "=") == raw
    assert decode_app_server_key(base64.b64encode(raw).decode()) == raw
    for bad in ("", "===", "not base64!"):
        with pytest.raises(ValueError):
            decode_app_server_key(bad)


def test_27_padded_and_unpadded_key_give_the_same_hash(pub):
    raw = decode_base64_lenient(pub)
    padded = base64.urlsafe_b64encode(raw).decode()
    standard = base64.b64encode(raw).decode()
    assert padded != pub and padded.endswith("=")
    expected = hashlib.sha256(raw).digest()
    assert vapid_key_hash(pub) == vapid_key_hash(padded) == vapid_key_hash(standard) == expected
    assert hashlib.sha256(decode_app_server_key(padded)).digest() == vapid_key_hash(pub)
    assert key_hash_matches(expected, padded) is True
    assert key_hash_matches(expected, pub[:-4] + "AAAA") is False
    assert key_hash_matches(expected, "not base64!") is False


# --------------------------------------------------------------------------
# message ids (crypto.message_ids)


def test_73_message_id_plaintexts_and_sort_keys(keys):
    stamp = 1_700_000_000_123_456
    timed = MessageId.for_timestamp(UAID, CHID, stamp)
    text = timed.encode(keys)
    assert keys.decrypt(text).decode() == f"02:{UAID.hex}:{CHID.hex}:{stamp}"
    assert timed.sort_key == f"02:{stamp}:{CHID}"
    assert MessageId.decode(keys, text) == timed

    topic = MessageId.for_topic(UAID, CHID, "news_1-=")
    text = topic.encode(keys)
    assert keys.decrypt(text).decode() == f"01:{UAID.hex}:{CHID.hex}:news_1-="
    assert topic.sort_key == f"01:{CHID}:news_1-="
    decoded = MessageId.decode(keys, text.rstrip("="))
    assert (decoded.kind, decoded.topic, decoded.sortkey_timestamp) == ("topic", "news_1-=", None)


@pytest.mark.parametrize(
    "plaintext",
    [
        f"m:{UAID.hex}:{CHID.hex}",
        f"m:{UAID.hex}:{CHID.hex}:x",
        f"02:{UAID.hex}:{CHID.hex}",
        f"02:{UAID.hex}:{CHID.hex}:1:2",
        f"03:{UAID.hex}:{CHID.hex}:1",
        f"02:nope:{CHID.hex}:1",
        f"01:{UAID.hex}:zz{CHID.hex[2:]}:topic",
        f"02:{UAID.hex}:{CHID.hex}:1.5",
        f"02:{UAID.hex}:{CHID.hex}:-5",
        f"02:{UAID.hex}:{CHID.hex}:12a",
        f"02:{UAID.hex}:{CHID.hex}:",
        f"01:{UAID.hex}:{CHID.hex}:",
    ],
)
def test_message_id_decode_rejects_malformed(keys, plaintext):
    with pytest.raises(InvalidMessageIdError):
        MessageId.decode(keys, keys.encrypt(plaintext.encode()))


@pytest.mark.parametrize("garbage", ["garbage", "", "ÄÖ"])
def test_message_id_decode_rejects_garbage_and_foreign_keys(keys, garbage):
    with pytest.raises(InvalidMessageIdError):
        MessageId.decode(keys, garbage)
    foreign_keys = CryptoKeys([Fernet.generate_key().decode()])
    foreign = MessageId.for_timestamp(UAID, CHID, 1).encode(foreign_keys)
    with pytest.raises(InvalidMessageIdError):
        MessageId.decode(keys, foreign)


def test_message_id_rejects_inconsistent_construction():
    with pytest.raises(ValueError):
        MessageId("topic", UAID, CHID)
    with pytest.raises(ValueError):
        MessageId("timestamp", UAID, CHID, sortkey_timestamp=None)
    with pytest.raises(ValueError):
        MessageId("legacy", UAID, CHID, topic="x")  # type: ignore[arg-type]


# --------------------------------------------------------------------------
# bridge secrets (crypto.bridge_secrets)


def test_129_bridge_secret_vector():
    secret = make_bridge_secret(
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAB=", "deadbeef00000000deadbeef00000000"
    )
    assert secret == "ba671a1c428fffb367958c61a2f4a65a0b292427c4a9e25c484aaf5ae8510edb"


def test_135_secret_from_second_auth_key_is_accepted():
    auth_keys = ["first-key", "second-key"]
    assert verify_bridge_secret(auth_keys, UAID.hex, make_bridge_secret("first-key", UAID.hex))
    assert verify_bridge_secret(auth_keys, UAID.hex, make_bridge_secret("second-key", UAID.hex))
    assert not verify_bridge_secret(auth_keys, UAID.hex, make_bridge_secret("third", UAID.hex))
    assert not verify_bridge_secret(auth_keys, CHID.hex, make_bridge_secret("first-key", UAID.hex))
    assert not verify_bridge_secret(auth_keys, UAID.hex, "")
    assert not verify_bridge_secret(auth_keys, UAID.hex, "ÿ" * 64)


def test_empty_auth_key_never_validates():
    assert not verify_bridge_secret(["", "k"], UAID.hex, make_bridge_secret("", UAID.hex))


# --------------------------------------------------------------------------
# Crypto-Key parameters (crypto.crypto_key_header)


def test_parse_crypto_params():
    header = ' keyid="p256dh" ; dh="BNoR==" ,p256ecdsa = "BAbc=" ;, '
    assert parse_crypto_params(header) == [
        {"keyid": "p256dh", "dh": "BNoR=="},
        {"p256ecdsa": "BAbc="},
    ]
    assert parse_crypto_params("Salt=abc") == [{"salt": "abc"}]
    assert parse_crypto_params("") == []
    for bad in ("salt", "dh=abc;oops", "=abc"):
        with pytest.raises(ValueError):
            parse_crypto_params(bad)


# --------------------------------------------------------------------------
# VAPID (crypto.vapid): key decoding and signatures


def test_decode_vapid_public_key_encodings(signer):
    point = raw_point(signer)
    der = signer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    assert len(der) == 91
    for text in (_b64(point), _b64(point[1:]), base64.b64encode(der).decode()):
        assert decode_vapid_public_key(text).public_bytes(
            Encoding.X962, PublicFormat.UncompressedPoint
        ) == point


def test_decode_vapid_public_key_rejects_non_p256(signer):
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_der = p384.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    compressed = signer.public_key().public_bytes(Encoding.X962, PublicFormat.CompressedPoint)
    bad_point = b"\x04" + b"\x01" * 64
    for raw in (p384_der, compressed, bad_point, b"\x05" + raw_point(signer)[1:], b"\x30" * 91):
        with pytest.raises(ValueError):
            decode_vapid_public_key(_b64(raw))
    with pytest.raises(ValueError):
        decode_vapid_public_key("not base64!")


def test_der_signature_to_raw_roundtrip():
    r, s = 0x1234, (1 << 255) + 7
    raw = der_signature_to_raw(encode_dss_signature(r, s))
    assert raw == r.to_bytes(32, "big") + s.to_bytes(32, "big")
    with pytest.raises(ValueError):
        der_signature_to_raw(b"\x00" * 64)
    with pytest.raises(ValueError):
        der_signature_to_raw(encode_dss_signature(1 << 256, 1))


def test_der_signature_helper_really_produces_der(signer):
    token = to_der_signature(sign(signer, _claims()))
    der = decode_base64_lenient(token.rsplit(".", 1)[1])
    assert der[0] == 0x30 and len(der) != 64
    assert decode_dss_signature(der)  # parses as DER


# --------------------------------------------------------------------------
# VAPID: accepted forms


def test_98_vapid_scheme_accepted(signer, pub):
    result = verify_vapid(vapid_header(sign(signer, _claims()), pub), None, AUD, now=NOW)
    assert (result.scheme, result.version, result.public_key) == ("vapid", 2, pub)
    assert result.claims == _claims()
    assert result.sub_problem is None


def test_99_webpush_scheme_with_crypto_key(signer, pub):
    token = sign(signer, _claims())
    crypto_key = f'keyid="p256dh";dh="BNoRDbb84J==", p256ecdsa="{pub}="'
    result = verify_vapid(f"WebPush {token}", crypto_key, AUD, now=NOW)
    assert (result.scheme, result.version, result.public_key) == ("webpush", 1, pub + "=")
    result = verify_vapid(f"bearer {token}", f"p256ecdsa={pub}", AUD, now=NOW)
    assert (result.scheme, result.version) == ("bearer", 1)


def test_vapid_credentials_parsing_tolerates_spaces_and_case(signer, pub):
    token = sign(signer, _claims())
    creds = parse_vapid_authorization(f"VAPID  t = {token} ,  k = {pub}==", None)
    assert (creds.scheme, creds.token, creds.public_key) == ("vapid", token, pub + "==")
    assert verify_vapid(f"Vapid k={pub},t={token}", None, AUD, now=NOW).version == 2


def test_109_der_signature_accepted(signer, pub):
    token = to_der_signature(sign(signer, _claims()))
    assert verify_vapid(vapid_header(token, pub), None, AUD, now=NOW).claims["aud"] == AUD


def test_110_sub_is_optional_and_only_classified(signer, pub):
    cases = [(_DROP, "missing_sub"), ("", "empty_sub"), ("ops@example.com", "bad_format_sub"),
             (42, "bad_format_sub"), ("https://example.com/contact", None),
             ("mailto:a@b.c", None)]
    for sub, problem in cases:
        token = sign(signer, _claims(sub=sub))
        assert verify_vapid(vapid_header(token, pub), None, AUD, now=NOW).sub_problem == problem


def test_vapid_accepts_64_byte_and_der_keys(signer):
    token = sign(signer, _claims())
    der = signer.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    for key in (_b64(raw_point(signer)[1:]), _b64(der)):
        assert verify_vapid(vapid_header(token, key), None, AUD, now=NOW).public_key == key


# --------------------------------------------------------------------------
# VAPID: every rejection of docs/protocol.md#vapid (checklist 96-108)


@pytest.mark.parametrize(
    ("authorization", "reason"),
    [
        ("vapid", "bad_authorization_header"),
        ("vapid ", "bad_authorization_header"),
        ("", "bad_authorization_header"),
        ("WebPush   ", "bad_authorization_header"),
        ("Basic abc", "unknown_scheme"),  # 102
        ("Digest t=a.b.c,k=abc", "unknown_scheme"),
    ],
)
def test_102_malformed_header_and_unknown_scheme(authorization, reason):
    assert reason_of(authorization) == reason


def test_101_vapid_without_t_or_k(signer, pub):
    token = sign(signer, _claims())
    assert reason_of(f"vapid t={token}") == "missing_key"
    assert reason_of(f"vapid t={token}, k=") == "missing_key"
    assert reason_of(f"vapid k={pub}") == "missing_token"
    assert reason_of(f"vapid {token}") == "missing_token"


def test_100_bearer_and_webpush_without_crypto_key(signer, pub):
    token = sign(signer, _claims())
    assert reason_of(f"Bearer {token}") == "missing_crypto_key"
    assert reason_of(f"WebPush {token}", "") == "missing_crypto_key"
    assert reason_of(f"WebPush {token}", 'keyid="p256dh";dh="BNoR"') == "missing_crypto_key"
    assert reason_of(f"WebPush {token}", f"p256ecdsa={pub};junk") == "missing_crypto_key"


def test_invalid_or_non_p256_public_key(signer):
    token = sign(signer, _claims())
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    p384_der = _b64(p384.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo))
    for key in ("not!base64", "AAAA", p384_der, _b64(b"\x04" + b"\x00" * 64)):
        assert reason_of(vapid_header(token, key)) == "invalid_public_key"
    assert reason_of(f"WebPush {token}", "p256ecdsa=AAAA") == "invalid_public_key"


def test_jwt_structure_rejected(signer, pub):
    head, body, sig = sign(signer, _claims()).split(".")
    bad_tokens = [
        f"{head}.{body}",
        f"{head}.{body}.{sig}.{sig}",
        f"{head}..{sig}",
        f"{head}.{body}.",
        f"{head}.{body}.{sig}!",
        f"{_b64(b'not json')}.{body}.{sig}",
        f"{_b64(b'[1]')}.{body}.{sig}",
        f"{head}.{_b64(b'[1]')}.{sig}",
        f"{head}.{_b64(b'42')}.{sig}",
        f"{head}.{_b64(b'{bad')}.{sig}",
    ]
    for token in bad_tokens:
        assert reason_of(vapid_header(token, pub)) == "invalid_jwt", token


def test_107_alg_other_than_es256(signer, pub):
    hs256 = jwt.encode(_claims(), "s" * 32, algorithm="HS256")
    assert reason_of(vapid_header(hs256, pub)) == "bad_alg"
    _, body, sig = sign(signer, _claims()).split(".")
    for header in ({"typ": "JWT"}, {"alg": "none"}, {"alg": "es256"}, {"alg": "ES384"}):
        token = f"{_b64(json.dumps(header).encode())}.{body}.{sig}"
        assert reason_of(vapid_header(token, pub)) == "bad_alg"


def test_108_tampered_signature(signer, pub):
    head, body, sig = sign(signer, _claims()).split(".")
    raw = bytearray(decode_base64_lenient(sig))
    raw[10] ^= 0x01
    assert reason_of(vapid_header(f"{head}.{body}.{_b64(bytes(raw))}", pub)) == "bad_signature"
    forged_body = _b64(json.dumps(_claims(sub="mailto:evil@example.com")).encode())
    assert reason_of(vapid_header(f"{head}.{forged_body}.{sig}", pub)) == "bad_signature"
    assert reason_of(vapid_header(f"{head}.{body}.{_b64(b'short')}", pub)) == "bad_signature"


def test_97_jwt_signed_by_another_key(signer, other_signer, pub):
    token = sign(other_signer, _claims())
    assert reason_of(vapid_header(token, pub)) == "bad_signature"
    assert reason_of(vapid_header(to_der_signature(token), pub)) == "bad_signature"
    other_pub = _b64(raw_point(other_signer))
    result = verify_vapid(vapid_header(token, other_pub), None, AUD, now=NOW)
    assert key_hash_matches(vapid_key_hash(pub), result.public_key) is False
    assert key_hash_matches(vapid_key_hash(other_pub), result.public_key) is True


def test_106_aud_missing_or_different(signer, pub):
    for aud in (_DROP, "https://other.example.com", AUD + "/", AUD + ":443", [AUD], ""):
        token = sign(signer, _claims(aud=aud))
        assert reason_of(vapid_header(token, pub)) == "bad_aud", aud


def test_105_exp_missing_or_not_an_integer(signer, pub):
    for exp in (_DROP, str(NOW + 60), float(NOW + 60), True, None, [NOW + 60]):
        token = sign(signer, _claims(exp=exp))
        assert reason_of(vapid_header(token, pub)) == "bad_exp", exp


def test_103_exp_in_the_past(signer, pub):
    token = sign(signer, _claims(exp=NOW - 60))
    assert reason_of(vapid_header(token, pub)) == "expired"
    boundary = sign(signer, _claims(exp=NOW))
    assert verify_vapid(vapid_header(boundary, pub), None, AUD, now=NOW).claims["exp"] == NOW
    assert reason_of(vapid_header(boundary, pub), now=NOW + 0.5) == "expired"


def test_104_exp_more_than_24_hours_ahead(signer, pub):
    for exp in (NOW + 25 * 3600, NOW + 86401):
        token = sign(signer, _claims(exp=exp))
        assert reason_of(vapid_header(token, pub)) == "exp_too_far"
    for exp in (NOW + 23 * 3600, NOW + 86400):
        token = sign(signer, _claims(exp=exp))
        assert verify_vapid(vapid_header(token, pub), None, AUD, now=NOW).claims["exp"] == exp


def test_verify_vapid_uses_wall_clock_by_default(signer, pub):
    import time

    fresh = sign(signer, _claims(exp=int(time.time()) + 600))
    assert verify_vapid(vapid_header(fresh, pub), None, AUD).version == 2
    with pytest.raises(VapidError):
        verify_vapid(vapid_header(sign(signer, _claims()), pub), None, AUD)  # NOW is in 2023


def test_vapid_verifier_remembers_signatures_but_rechecks_claims(signer, other_signer, pub) -> None:
    verifier = VapidVerifier(max_bytes=1000, clock=lambda: NOW)  # room for one entry
    token = sign(signer, _claims(exp=NOW + 600))
    authorization = vapid_header(token, pub)
    assert verifier.verify(authorization, None, AUD, now=NOW).claims["aud"] == AUD
    assert verifier.verify(authorization, None, AUD, now=NOW).scheme == "vapid"  # from memory
    with pytest.raises(VapidError, match="expired"):
        verifier.verify(authorization, None, AUD, now=NOW + 601)
    with pytest.raises(VapidError, match="bad_aud"):
        verifier.verify(authorization, None, "https://other.example", now=NOW)
    with pytest.raises(VapidError, match="bad_signature"):  # same token, a key that did not sign it
        verifier.verify(vapid_header(token, _b64(raw_point(other_signer))), None, AUD, now=NOW)
    other_token = sign(other_signer, _claims())
    verifier.verify(vapid_header(other_token, _b64(raw_point(other_signer))), None, AUD, now=NOW)
    assert len(verifier) == 1  # bounded


# --------------------------------------------------------------------------
# package layout


def _crypto_imports(module: pathlib.Path) -> set[str]:
    """The sibling modules ``module`` imports, from its import statements."""
    found = set()
    for node in ast.walk(ast.parse(module.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("autopush_flask.crypto."):
            found.add(node.module.rpartition(".")[2])
    return found


def test_crypto_modules_import_each_other_without_cycles() -> None:
    """A cycle would make the import order decide which names exist."""
    package = pathlib.Path(autopush_flask.crypto.__file__).parent
    graph = {path.stem: _crypto_imports(path) for path in package.glob("*.py") if path.stem != "__init__"}
    assert {"keys", "endpoints", "message_ids", "vapid", "bridge_secrets"} <= graph.keys()
    done: set[str] = set()

    def visit(name: str, path: tuple[str, ...]) -> None:
        assert name not in path, f"import cycle: {' -> '.join(path + (name,))}"
        if name not in done:
            for imported in graph[name]:
                visit(imported, path + (name,))
            done.add(name)

    for name in graph:
        visit(name, ())


def test_crypto_package_re_exports_nothing() -> None:
    """Callers name the module of the concern they use (see the package docstring)."""
    public = [name for name in vars(autopush_flask.crypto) if not name.startswith("_")]
    assert set(public) <= {"annotations", *_SUBMODULES}


_SUBMODULES = {"base64url", "keys", "endpoints", "message_ids", "crypto_key_header", "vapid", "bridge_secrets"}


# ---- ids: the service's text ids at the crypto boundary (autopush_flask/ids.py)


def test_ids_are_text_inside_the_service() -> None:
    assert canonical_uaid(str(UAID)) == canonical_uaid("{" + UAID.hex.upper() + "}") == UAID.hex
    with pytest.raises(ValueError):
        canonical_uaid("not-a-uuid")
    # the canonical form passes as it is; near misses still go through uuid
    assert canonical_uaid(UAID.hex) == UAID.hex
    assert canonical_uaid(UAID.hex.upper()) == UAID.hex
    for near_miss in (UAID.hex[:-1], UAID.hex + "0", UAID.hex[:-1] + "g", UAID.hex + "\n"):
        with pytest.raises(ValueError):
            canonical_uaid(near_miss)
    token = EndpointToken(UAID, CHID, None)
    assert (token.uaid_text, token.channel_text) == (UAID.hex, str(CHID))


def test_message_id_from_a_notification_names_its_owner() -> None:
    stamped = Notification(channel_id=str(CHID), version="", ttl=60, timestamp=1, sortkey_timestamp=7)
    timed = MessageId.for_notification(UAID.hex, stamped)
    assert timed == MessageId.for_timestamp(UAID, CHID, 7)
    assert timed.names(UAID.hex, str(CHID)) and timed.uaid_text == UAID.hex
    assert not timed.names(uuid.uuid4().hex, str(CHID))
    topical = Notification(channel_id=str(CHID), version="", ttl=60, timestamp=1, topic="news")
    assert MessageId.for_notification(UAID.hex, topical) == MessageId.for_topic(UAID, CHID, "news")
