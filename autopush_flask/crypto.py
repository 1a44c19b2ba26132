"""Crypto primitives of the push service (SPEC §4.2, §4.6, §4.9, §4.10, §5.2).

Everything here is pure: no I/O, no clients, no module-level mutable state.
Callers map the exceptions to HTTP/WebSocket errors.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import jwt
from cachetools import TLRUCache
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import load_der_public_key

from autopush_flask.db.models import timestamp_sort_key, topic_sort_key

V1_PLAINTEXT_LENGTH = 32
V2_PLAINTEXT_LENGTH = 64
VAPID_MAX_EXP_AHEAD = 86400
P256_COORDINATE_BYTES = 32

_JWT_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+=*$")
_DIGITS = re.compile(r"^[0-9]+$")

# PyJWT only checks the signature; claim checks are ours so that errors are
# exact and the types are strict (a numeric-string `exp` is rejected).
_PYJWT_SIGNATURE_ONLY = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class InvalidTokenError(ValueError):
    """A Fernet token (endpoint token or message id) that we cannot accept."""


class InvalidMessageIdError(ValueError):
    """A message id that is not a current-format id (SPEC §4.10 → 400)."""


class VapidError(ValueError):
    """Any VAPID rejection; every one is a 401 errno 109 (SPEC §4.6)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------
# Base64


def decode_base64_lenient(text: str) -> bytes:
    """Browsers and app servers mix alphabets and drop padding (SPEC §0.2)."""
    try:
        raw = text.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise ValueError("not base64 text") from exc
    raw = raw.translate(bytes.maketrans(b"-_", b"+/")).rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64 text") from exc


def encode_base64url(data: bytes) -> str:
    """The server always emits unpadded base64url (SPEC §0.2)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------
# Fernet keys


class CryptoKeys:
    """Rotation-friendly Fernet keys: the first encrypts, all decrypt, no TTL."""

    __slots__ = ("_fernet", "_keys")

    def __init__(self, keys: Sequence[str]) -> None:
        if isinstance(keys, (str, bytes)):
            raise TypeError("keys must be a list of key strings, not one string")
        if not keys:
            raise ValueError("at least one crypto key is required")
        self._keys = tuple(keys)
        self._fernet = MultiFernet([Fernet(key) for key in keys])

    def derive(self, label: bytes) -> tuple[bytes, ...]:
        """One 32-byte subkey per configured key (newest first) for ``label``.

        Other secrets the nodes need (the router's request signatures, the
        log's UAID hash) come from the keys every node already shares, so
        there is no new secret to distribute, and a subkey of one purpose
        reveals nothing about the Fernet key or another purpose's subkey.
        """
        return tuple(
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(
                base64.urlsafe_b64decode(key)
            )
            for key in self._keys
        )

    def encrypt(self, data: bytes) -> str:
        """Padded Fernet text, as message ids are used verbatim (SPEC §4.9)."""
        return self._fernet.encrypt(data).decode("ascii")

    def decrypt(self, token: str) -> bytes:
        """Endpoint tokens arrive unpadded, so padding is restored first."""
        try:
            raw = token.encode("ascii")
        except (UnicodeEncodeError, AttributeError) as exc:
            raise InvalidTokenError("token is not ASCII text") from exc
        raw += b"=" * (-len(raw) % 4)
        try:
            return self._fernet.decrypt(raw)
        except InvalidToken as exc:
            raise InvalidTokenError("token does not decrypt") from exc

    @staticmethod
    def generate_key() -> str:
        """For `autokey` and for development start-up without configured keys."""
        return Fernet.generate_key().decode("ascii")


# --------------------------------------------------------------------------
# Endpoint tokens (SPEC §4.2)


@dataclass(frozen=True)
class EndpointToken:
    uaid: uuid.UUID
    channel_id: uuid.UUID
    key_hash: bytes | None  # sha256 of the app server key; None for v1


def make_endpoint_token(
    keys: CryptoKeys,
    uaid: uuid.UUID,
    channel_id: uuid.UUID,
    app_server_key: bytes | None,
) -> tuple[str, str]:
    """A v2 token binds the subscription to one app server key."""
    plaintext = uaid.bytes + channel_id.bytes
    version = "v1"
    if app_server_key is not None:
        if not app_server_key:
            raise ValueError("empty application server key")
        plaintext += hashlib.sha256(app_server_key).digest()
        version = "v2"
    return version, keys.encrypt(plaintext).rstrip("=")


def make_endpoint_url(
    keys: CryptoKeys,
    endpoint_url: str,
    uaid: uuid.UUID,
    channel_id: uuid.UUID,
    app_server_key: bytes | None,
) -> str:
    """The full URL is what app servers store (endpoints are opaque)."""
    version, token = make_endpoint_token(keys, uaid, channel_id, app_server_key)
    return f"{endpoint_url.rstrip('/')}/wpush/{version}/{token}"


def parse_endpoint_token(keys: CryptoKeys, token: str, api_version: str) -> EndpointToken:
    """Every failure here is the same 404 errno 102, so one exception type."""
    expected = {"v1": V1_PLAINTEXT_LENGTH, "v2": V2_PLAINTEXT_LENGTH}.get(api_version)
    if expected is None:
        raise InvalidTokenError(f"unknown api version {api_version!r}")
    plaintext = keys.decrypt(token)
    if len(plaintext) != expected:
        raise InvalidTokenError(f"{api_version} token has {len(plaintext)} bytes")
    return EndpointToken(
        uaid=uuid.UUID(bytes=plaintext[:16]),
        channel_id=uuid.UUID(bytes=plaintext[16:32]),
        key_hash=plaintext[32:] or None,
    )


def decode_app_server_key(text: str) -> bytes:
    """Firefox sends padded base64url; others may not (SPEC §2.5)."""
    key = decode_base64_lenient(text)
    if not key:
        raise ValueError("empty application server key")
    return key


# --------------------------------------------------------------------------
# Message ids (SPEC §4.9, §4.10)

MessageKind = Literal["topic", "timestamp"]


@dataclass(frozen=True)
class MessageId:
    """Legacy `m:` ids are never produced and always rejected, so no such kind."""

    kind: MessageKind
    uaid: uuid.UUID
    channel_id: uuid.UUID
    topic: str | None = None
    sortkey_timestamp: int | None = None

    @classmethod
    def for_topic(cls, uaid: uuid.UUID, channel_id: uuid.UUID, topic: str) -> MessageId:
        return cls("topic", uaid, channel_id, topic=topic)

    @classmethod
    def for_timestamp(
        cls, uaid: uuid.UUID, channel_id: uuid.UUID, sortkey_timestamp: int
    ) -> MessageId:
        return cls("timestamp", uaid, channel_id, sortkey_timestamp=sortkey_timestamp)

    def __post_init__(self) -> None:
        if self.kind not in ("topic", "timestamp"):
            raise ValueError(f"unknown message id kind {self.kind!r}")
        if self.kind == "topic" and not self.topic:
            raise ValueError("a topic message id needs a topic")
        if self.kind == "timestamp" and type(self.sortkey_timestamp) is not int:
            raise ValueError("a timestamp message id needs an integer timestamp")

    @property
    def sort_key(self) -> str:
        """Topic messages share one key so a newer one replaces the older."""
        if self.kind == "topic":
            return topic_sort_key(str(self.channel_id), self.topic)
        return timestamp_sort_key(self.sortkey_timestamp, str(self.channel_id))

    @property
    def plaintext(self) -> str:
        ids = f"{self.uaid.hex}:{self.channel_id.hex}"
        if self.kind == "topic":
            return f"01:{ids}:{self.topic}"
        return f"02:{ids}:{self.sortkey_timestamp}"

    def encode(self, keys: CryptoKeys) -> str:
        """Opaque to everyone without the key (SPEC §4.9)."""
        return keys.encrypt(self.plaintext.encode("utf-8"))

    @classmethod
    def decode(cls, keys: CryptoKeys, text: str) -> MessageId:
        """DELETE /m/ answers one 400 for every malformed id (SPEC §4.10)."""
        try:
            plaintext = keys.decrypt(text).decode("utf-8")
        except (InvalidTokenError, UnicodeDecodeError) as exc:
            raise InvalidMessageIdError("message id does not decrypt") from exc
        parts = plaintext.split(":")
        if len(parts) != 4 or parts[0] not in ("01", "02"):
            raise InvalidMessageIdError("not a current-format message id")
        prefix, uaid_text, chid_text, last = parts
        try:
            uaid, chid = uuid.UUID(uaid_text), uuid.UUID(chid_text)
        except ValueError as exc:
            raise InvalidMessageIdError("bad UUID in message id") from exc
        if prefix == "01":
            if not last:
                raise InvalidMessageIdError("empty topic in message id")
            return cls.for_topic(uaid, chid, last)
        if not _DIGITS.match(last):
            raise InvalidMessageIdError("bad timestamp in message id")
        return cls.for_timestamp(uaid, chid, int(last))


# --------------------------------------------------------------------------
# Crypto-Key / Encryption header parameters (SPEC §4.4.4)


def parse_crypto_params(header: str) -> list[dict[str, str]]:
    """Shared by VAPID (p256ecdsa) and the Encryption/Crypto-Key checks.

    Names are lower-cased (HTTP parameter names are case-insensitive); empty
    sections and items are skipped; within a section the last duplicate wins.
    """
    sections = []
    for section_text in header.split(","):
        section: dict[str, str] = {}
        for item in section_text.split(";"):
            if not item.strip():
                continue
            name, sep, value = item.partition("=")
            name = name.strip().lower()
            if not sep or not name:
                raise ValueError(f"unparseable crypto parameter {item.strip()!r}")
            section[name] = value.strip().strip('"').strip()
        if section:
            sections.append(section)
    return sections


# --------------------------------------------------------------------------
# VAPID (SPEC §4.6)


@dataclass(frozen=True)
class VapidCredentials:
    scheme: str
    token: str
    public_key: str


@dataclass(frozen=True)
class VapidResult:
    claims: dict[str, Any] = field(hash=False)
    public_key: str
    scheme: str
    version: int  # 1 = draft-01 (WebPush/Bearer), 2 = vapid (RFC 8292)
    sub_problem: str | None  # None | "missing_sub" | "empty_sub" | "bad_format_sub"


def parse_vapid_authorization(
    authorization: str, crypto_key_header: str | None
) -> VapidCredentials:
    """Three header forms carry the JWT; two of them put the key elsewhere."""
    scheme, _, credentials = authorization.strip().partition(" ")
    scheme = scheme.lower()
    if not credentials.strip():
        raise VapidError("bad_authorization_header")
    if scheme == "vapid":
        return _parse_vapid_scheme(scheme, credentials)
    if scheme in ("webpush", "bearer"):
        key = _crypto_key_p256ecdsa(crypto_key_header)
        return VapidCredentials(scheme, credentials.strip(), key)
    raise VapidError("unknown_scheme")


def _parse_vapid_scheme(scheme: str, credentials: str) -> VapidCredentials:
    params = {}
    for pair in "".join(credentials.split()).split(","):
        name, sep, value = pair.partition("=")
        if sep:
            params[name.lower()] = value
    if not params.get("t"):
        raise VapidError("missing_token")
    if not params.get("k"):
        raise VapidError("missing_key")
    return VapidCredentials(scheme, params["t"], params["k"])


def _crypto_key_p256ecdsa(header: str | None) -> str:
    try:
        sections = parse_crypto_params(header or "")
    except ValueError as exc:
        raise VapidError("missing_crypto_key") from exc
    for section in sections:
        if section.get("p256ecdsa"):
            return section["p256ecdsa"]
    raise VapidError("missing_crypto_key")


def decode_vapid_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """Senders use the raw point, the point without 0x04, or DER SPKI."""
    raw = decode_base64_lenient(text)
    if len(raw) == 64:
        raw = b"\x04" + raw
    if len(raw) == 65 and raw[0] == 4:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    if len(raw) == 91:
        return _load_der_p256(raw)
    raise ValueError(f"unsupported public key length {len(raw)}")


def _load_der_p256(raw: bytes) -> ec.EllipticCurvePublicKey:
    try:
        key = load_der_public_key(raw)
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise ValueError("not a DER public key") from exc
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(
        key.curve, ec.SECP256R1
    ):
        raise ValueError("not a P-256 public key")
    return key


def der_signature_to_raw(der: bytes, coordinate_bytes: int = P256_COORDINATE_BYTES) -> bytes:
    """Some senders sign with DER; JOSE (and PyJWT) wants raw r||s."""
    r, s = decode_dss_signature(der)
    limit = 1 << (8 * coordinate_bytes)
    if not (0 <= r < limit and 0 <= s < limit):
        raise ValueError("signature integer too large for the curve")
    return r.to_bytes(coordinate_bytes, "big") + s.to_bytes(coordinate_bytes, "big")


def _split_jwt(token: str) -> tuple[dict[str, Any], dict[str, Any], bytes]:
    segments = token.split(".")
    if len(segments) != 3 or not all(_JWT_SEGMENT.match(s) for s in segments):
        raise VapidError("invalid_jwt")
    try:
        header = json.loads(decode_base64_lenient(segments[0]))
        claims = json.loads(decode_base64_lenient(segments[1]))
        signature = decode_base64_lenient(segments[2])
    except (ValueError, RecursionError) as exc:
        raise VapidError("invalid_jwt") from exc
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise VapidError("invalid_jwt")
    return header, claims, signature


def _jose_signature(signature: bytes) -> bytes:
    if len(signature) == 2 * P256_COORDINATE_BYTES:
        return signature
    try:
        return der_signature_to_raw(signature)
    except ValueError as exc:
        raise VapidError("bad_signature") from exc


def _verify_jwt(token: str, key: ec.EllipticCurvePublicKey) -> dict[str, Any]:
    header, claims, signature = _split_jwt(token)
    if header.get("alg") != "ES256":
        raise VapidError("bad_alg")
    signing_input = token.rsplit(".", 1)[0]
    normalized = f"{signing_input}.{encode_base64url(_jose_signature(signature))}"
    try:
        jwt.decode_complete(
            normalized, key=key, algorithms=["ES256"], options=_PYJWT_SIGNATURE_ONLY
        )
    except jwt.InvalidSignatureError as exc:
        raise VapidError("bad_signature") from exc
    except jwt.PyJWTError as exc:
        raise VapidError("invalid_jwt") from exc
    return claims


def _check_claims(claims: dict[str, Any], audience: str, now: float) -> None:
    if claims.get("aud") != audience:
        raise VapidError("bad_aud")
    exp = claims.get("exp")
    if type(exp) is not int:
        raise VapidError("bad_exp")
    if now > exp:
        raise VapidError("expired")
    if exp - now > VAPID_MAX_EXP_AHEAD:
        raise VapidError("exp_too_far")


def vapid_sub_problem(claims: dict[str, Any]) -> str | None:
    """`sub` is only counted, never enforced (SPEC §4.6)."""
    if "sub" not in claims:
        return "missing_sub"
    sub = claims["sub"]
    if sub == "":
        return "empty_sub"
    if not isinstance(sub, str) or not sub.lower().startswith(("mailto:", "https://")):
        return "bad_format_sub"
    return None


def verify_vapid(
    authorization: str,
    crypto_key_header: str | None,
    audience: str,
    now: float | None = None,
) -> VapidResult:
    """All-or-nothing: anything short of a fully valid JWT is a VapidError."""
    creds = parse_vapid_authorization(authorization, crypto_key_header)
    claims = _verified_claims(creds)
    return _vapid_result(creds, claims, audience, now)


def _verified_claims(creds: VapidCredentials) -> dict[str, Any]:
    try:
        key = decode_vapid_public_key(creds.public_key)
    except ValueError as exc:
        raise VapidError("invalid_public_key") from exc
    return _verify_jwt(creds.token, key)


def _vapid_result(
    creds: VapidCredentials, claims: dict[str, Any], audience: str, now: float | None
) -> VapidResult:
    _check_claims(claims, audience, time.time() if now is None else now)
    return VapidResult(
        claims=claims,
        public_key=creds.public_key,
        scheme=creds.scheme,
        version=2 if creds.scheme == "vapid" else 1,
        sub_problem=vapid_sub_problem(claims),
    )


class VapidVerifier:
    """``verify_vapid`` that remembers tokens it has fully accepted.

    Application servers sign one JWT and reuse it for every push until it
    expires; checking the ECDSA signature is most of the cost of a VAPID
    check. Only tokens that passed every check (signature, ``aud``, ``exp``
    and a well-formed ``sub``) are remembered, under a SHA-256 of token and
    key, with only the claims that are checked again on every call (``aud``,
    ``exp``, ``sub``): a hit still refuses an expired token or another
    audience. Rejected tokens are never kept, so junk costs only its request.

    The memory is bounded in bytes (``max_bytes``; an entry is about 640
    bytes plus its ``aud`` and ``sub``, so the 4 MiB default holds ~5,000
    application servers' tokens), least recently used first out, and an
    entry leaves when its ``exp`` passes. (The old cache kept every token it
    had checked the signature of, keyed by the token text: a padded
    self-signed token cost ~146 KB, 10,000 of them ~1.4 GB per worker.)
    """

    def __init__(self, max_bytes: int = 4 * 1024 * 1024, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._accepted: TLRUCache | None = None
        if max_bytes > 0:
            self._accepted = TLRUCache(
                max_bytes, _expiry, timer=clock, getsizeof=_remembered_bytes
            )

    def verify(
        self, authorization: str, crypto_key_header: str | None, audience: str, now: float | None = None
    ) -> VapidResult:
        now = self._clock() if now is None else now
        creds = parse_vapid_authorization(authorization, crypto_key_header)
        cache_key = _cache_key(creds)
        remembered = self._accepted.get(cache_key) if self._accepted is not None else None
        if remembered is not None:
            return _vapid_result(creds, remembered, audience, now)
        result = _vapid_result(creds, _verified_claims(creds), audience, now)
        if result.sub_problem is None:
            self._remember(cache_key, result.claims)
        return result

    def _remember(self, cache_key: bytes, claims: dict[str, Any]) -> None:
        if self._accepted is None:
            return
        try:
            self._accepted[cache_key] = {name: claims[name] for name in _REMEMBERED_CLAIMS}
        except ValueError:  # one entry larger than the whole budget: not kept
            pass

    def __len__(self) -> int:
        return len(self._accepted) if self._accepted is not None else 0


_REMEMBERED_CLAIMS = ("aud", "exp", "sub")
# Measured with tracemalloc: dict, digest key and cachetools' bookkeeping.
_ENTRY_OVERHEAD_BYTES = 640


def _cache_key(creds: VapidCredentials) -> bytes:
    return hashlib.sha256(f"{creds.token}\n{creds.public_key}".encode()).digest()


def _expiry(_key: bytes, claims: dict[str, Any], _now: float) -> float:
    return claims["exp"]


def _remembered_bytes(claims: dict[str, Any]) -> int:
    return _ENTRY_OVERHEAD_BYTES + len(claims["aud"]) + len(claims["sub"])


def vapid_key_hash(public_key_text: str) -> bytes:
    """Padded and unpadded spellings of one key must bind the same v2 endpoint."""
    return hashlib.sha256(decode_base64_lenient(public_key_text)).digest()


def key_hash_matches(expected: bytes, public_key_text: str) -> bool:
    """Constant time, so the bound key hash cannot be probed byte by byte."""
    try:
        actual = vapid_key_hash(public_key_text)
    except ValueError:
        return False
    return hmac.compare_digest(expected, actual)


# --------------------------------------------------------------------------
# Bridge secrets (SPEC §5.2)


def make_bridge_secret(auth_key: str, uaid_hex: str) -> str:
    """The key text is used as-is (not base64-decoded), as clients expect."""
    digest = hmac.new(auth_key.encode("utf-8"), uaid_hex.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()


def verify_bridge_secret(auth_keys: Sequence[str], uaid_hex: str, secret: str) -> bool:
    """Every key is tried so timing does not reveal which one matched.

    Empty keys are skipped: an HMAC under "" would be computable by anyone.
    """
    given = secret.encode("utf-8")
    matched = False
    for key in auth_keys:
        if key:
            expected = make_bridge_secret(key, uaid_hex).encode("ascii")
            matched |= hmac.compare_digest(expected, given)
    return matched
