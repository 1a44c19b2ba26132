"""APNs credentials: PEM files or inline text, the TLS client certificate, the provider JWT.

Read and checked when the router is built, so a bad path or key stops
start-up with a ``SettingsError`` instead of failing every push.
"""

from __future__ import annotations

import ssl
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from autopush_flask.config import SettingsError

TOKEN_MAX_AGE = 50 * 60  # seconds; Apple: older than 60 min rejected, refresh at most every 20
PEM_MARKER = "-----BEGIN"
SETTING = "AUTOPUSH_APNS_CHANNELS"


class ProviderToken:
    """The ES256 provider JWT of one channel, reused until it is 50 minutes old."""

    def __init__(
        self,
        key: ec.EllipticCurvePrivateKey,
        key_id: str,
        team_id: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._key = key
        self._key_id = key_id
        self._team_id = team_id
        self._clock = clock
        self._lock = threading.Lock()
        self._token: str | None = None
        self._issued_at = 0.0

    def authorization(self) -> str:
        """The ``authorization`` header value."""
        with self._lock:
            now = self._clock()
            if self._token is None or now - self._issued_at >= TOKEN_MAX_AGE:
                self._issued_at = now
                self._token = jwt.encode(
                    {"iss": self._team_id, "iat": int(now)},
                    self._key,
                    algorithm="ES256",
                    headers={"kid": self._key_id},
                )
            return f"bearer {self._token}"


def invalid(channel: str, problem: str) -> SettingsError:
    return SettingsError(f"invalid setting {SETTING}: channel {channel!r} {problem}")


def provider_token(channel: str, config: dict[str, Any], clock: Callable[[], float]) -> ProviderToken:
    """Token auth: ``key`` is the ``.p8`` P-256 signing key."""
    key = _signing_key(channel, _pem(channel, "key", config.get("key")))
    return ProviderToken(key, str(config["key_id"]), str(config["team_id"]), clock)


def load_client_certificate(context: ssl.SSLContext, channel: str, config: dict[str, Any]) -> None:
    """``ssl`` loads certificates from files only: inline PEM goes through a private temp dir."""
    cert = _pem(channel, "cert", config.get("cert"))
    key = _pem(channel, "key", config.get("key")) if config.get("key") else None
    with tempfile.TemporaryDirectory() as directory:
        cert_file = Path(directory, "cert.pem")
        cert_file.write_text(cert)
        key_file = None
        if key is not None:
            key_file = Path(directory, "key.pem")
            key_file.write_text(key)
        try:
            context.load_cert_chain(cert_file, key_file)
        except ssl.SSLError as error:
            raise invalid(channel, f"cert/key rejected ({error.reason or error})") from error


def _pem(channel: str, field_name: str, value: Any) -> str:
    """PEM text given inline or as a file path."""
    if not value or not isinstance(value, str):
        raise invalid(channel, f"lacks {field_name}")
    if PEM_MARKER in value:
        return value
    try:
        return Path(value).read_text()
    except OSError as error:
        raise invalid(channel, f"{field_name} file unreadable ({error.strerror or error})") from error


def _signing_key(channel: str, pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        raise invalid(channel, "key is not a PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise invalid(channel, "key is not a P-256 (.p8) token-signing key")
    return key
