"""The Fernet key set every node shares (docs/protocol.md#push-endpoint-urls, docs/protocol.md#push-response).

Endpoint tokens and message ids are Fernet texts under these keys; other
per-purpose secrets are derived from them.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


class InvalidTokenError(ValueError):
    """A Fernet token (endpoint token or message id) that we cannot accept."""


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
            HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=label).derive(base64.urlsafe_b64decode(key))
            for key in self._keys
        )

    def encrypt(self, data: bytes) -> str:
        """Padded Fernet text, as message ids are used verbatim (docs/protocol.md#push-response)."""
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
