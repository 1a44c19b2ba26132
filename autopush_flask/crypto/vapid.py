"""VAPID verification (docs/protocol.md#vapid): is this push signed by an application server?

Accepts the three Authorization forms (``vapid``, ``WebPush``, ``Bearer``),
checks the ES256 signature with PyJWT and the claims here, and classifies
(never enforces) ``sub``. ``VapidVerifier`` remembers accepted tokens.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jwt
from cachetools import TLRUCache
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import load_der_public_key
from jwt.types import Options

from autopush_flask.crypto.base64url import decode_base64_lenient, encode_base64url
from autopush_flask.crypto.crypto_key_header import parse_crypto_params

VAPID_MAX_EXP_AHEAD = 86400
P256_COORDINATE_BYTES = 32

_JWT_SEGMENT = re.compile(r"^[A-Za-z0-9_-]+=*$")

# PyJWT only checks the signature; claim checks are ours so that errors are
# exact and the types are strict (a numeric-string `exp` is rejected).
_PYJWT_SIGNATURE_ONLY: Options = {
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


class VapidError(ValueError):
    """Any VAPID rejection; every one is a 401 errno 109 (docs/protocol.md#vapid)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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


def parse_vapid_authorization(authorization: str, crypto_key_header: str | None) -> VapidCredentials:
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
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
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
        jwt.decode_complete(normalized, key=key, algorithms=["ES256"], options=_PYJWT_SIGNATURE_ONLY)
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
    """`sub` is only counted, never enforced (docs/protocol.md#vapid)."""
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


def _vapid_result(creds: VapidCredentials, claims: dict[str, Any], audience: str, now: float | None) -> VapidResult:
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
            self._accepted = TLRUCache(max_bytes, _expiry, timer=clock, getsizeof=_remembered_bytes)

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
        # ValueError: one entry larger than the whole budget, not kept
        with contextlib.suppress(ValueError):
            self._accepted[cache_key] = {name: claims[name] for name in _REMEMBERED_CLAIMS}

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
