"""Signatures on node-to-node requests to a connection node's private router.

Whoever reaches a router port and knows a UAID could otherwise inject
notifications (``PUT /push``), trigger drains (``PUT /notif``) or kick a
session (``DELETE /notif``). Every node already holds the shared crypto
keys, so the HMAC key is derived from them (one subkey per configured key,
newest first): there is no new secret to distribute, and key rotation keeps
working because a request signed with any configured key is accepted.

A signed request carries three headers:

- ``X-Autopush-Timestamp``: Unix seconds when it was signed;
- ``X-Autopush-Content-SHA256``: hex SHA-256 of the body;
- ``X-Autopush-Signature``: hex HMAC-SHA256 over the method, the request
  target (path and query), the timestamp and that body hash.

Because the body hash is in a header, the signature is checked from the
request head alone: a request that is not signed by a node is refused
before a byte of its body is read. The body is then read (capped) and
compared with the hash it was signed with.

A signature more than ``MAX_SKEW_SECONDS`` away from the verifier's clock
either way is refused, so a captured request stops working a minute later.
Within that minute it can be replayed to the same path only; a nonce cache
would be needed to stop that, and a replay can only repeat what a node
already asked for.

Pure standard library (plus the key derivation of ``crypto``): no Flask or
gevent, so the endpoint, the connection node and the tests share it.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import time
from collections.abc import Mapping, Sequence

from autopush_flask.crypto.keys import CryptoKeys

KEY_LABEL = b"autopush-flask router request v1"
MAX_SKEW_SECONDS = 60
TIMESTAMP_HEADER = "X-Autopush-Timestamp"
BODY_HASH_HEADER = "X-Autopush-Content-SHA256"
SIGNATURE_HEADER = "X-Autopush-Signature"

# Why a request was refused (the ``reason`` tag of ``router.auth.error``).
MISSING = "missing"  # a signature header is absent
MALFORMED = "malformed"  # a header is not in the expected form
STALE = "stale"  # the timestamp is too far from the verifier's clock
SIGNATURE = "signature"  # no configured key produced this signature
BODY = "body"  # the body is not the one that was signed
REASONS = (MISSING, MALFORMED, STALE, SIGNATURE, BODY)

_HEX_DIGEST = re.compile(r"[0-9a-fA-F]{64}")  # fullmatch: "$" would also take a final newline
_MAX_TIMESTAMP_DIGITS = 12


class RouterAuthError(Exception):
    """A router request is not validly signed; ``reason`` is one of ``REASONS``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def body_sha256(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


class RouterRequestKeys:
    """Signs with the newest subkey; verifies with any of them."""

    __slots__ = ("_subkeys",)

    def __init__(self, subkeys: Sequence[bytes]) -> None:
        if not subkeys:
            raise ValueError("at least one subkey is required")
        self._subkeys = tuple(subkeys)

    @classmethod
    def from_crypto_keys(cls, crypto_keys: CryptoKeys) -> RouterRequestKeys:
        return cls(crypto_keys.derive(KEY_LABEL))

    def sign(self, method: str, target: str, body: bytes = b"", now: float | None = None) -> list[tuple[str, str]]:
        """The headers that sign this request (``target`` = path, plus ``?query`` if any)."""
        timestamp = str(int(time.time() if now is None else now))
        digest = body_sha256(body)
        signature = _mac(self._subkeys[0], method, target, timestamp, digest)
        return [(TIMESTAMP_HEADER, timestamp), (BODY_HASH_HEADER, digest), (SIGNATURE_HEADER, signature)]

    def verify_head(self, method: str, target: str, headers: Mapping[str, str], now: float | None = None) -> str:
        """Check the signature from the request head; returns the signed body hash.

        ``headers.get`` must look names up the way the caller received them
        (werkzeug's ``Headers`` is case-insensitive). Raises ``RouterAuthError``.
        """
        timestamp = headers.get(TIMESTAMP_HEADER)
        digest = headers.get(BODY_HASH_HEADER)
        signature = headers.get(SIGNATURE_HEADER)
        if timestamp is None or digest is None or signature is None:
            raise RouterAuthError(MISSING)
        if not (_is_timestamp(timestamp) and _is_hex_digest(digest) and _is_hex_digest(signature)):
            raise RouterAuthError(MALFORMED)
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > MAX_SKEW_SECONDS:
            raise RouterAuthError(STALE)
        signature = signature.lower()
        if not any(
            hmac.compare_digest(_mac(subkey, method, target, timestamp, digest.lower()), signature)
            for subkey in self._subkeys
        ):
            raise RouterAuthError(SIGNATURE)
        return digest.lower()

    @staticmethod
    def verify_body(signed_sha256: str, body: bytes) -> None:
        """The body read after ``verify_head`` must be the one that was signed."""
        if not hmac.compare_digest(body_sha256(body), signed_sha256):
            raise RouterAuthError(BODY)


def _mac(subkey: bytes, method: str, target: str, timestamp: str, digest: str) -> str:
    message = "\n".join((method.upper(), target, timestamp, digest)).encode("utf-8", "surrogateescape")
    # hmac.digest is OpenSSL's one-shot HMAC: no Python HMAC object per request
    return hmac.digest(subkey, message, "sha256").hex()


def _is_timestamp(value: str) -> bool:
    return value.isascii() and value.isdigit() and len(value) <= _MAX_TIMESTAMP_DIGITS


def _is_hex_digest(value: str) -> bool:
    return _HEX_DIGEST.fullmatch(value) is not None
