"""A browser's side of Web Push encryption, and an application server's VAPID key.

Subscriptions hold a real P-256 key pair and auth secret; pushes are sent
with pywebpush (real aes128gcm and VAPID) and decrypted here like a browser.
"""

from __future__ import annotations

import base64
import os
from dataclasses import dataclass, field
from typing import Any

import http_ece
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import webpush


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def raw_public_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )


@dataclass
class AppServer:
    """An application server with its own VAPID key pair."""

    vapid: Vapid02 = field(default_factory=Vapid02)

    def __post_init__(self) -> None:
        self.vapid.generate_keys()

    @property
    def application_server_key(self) -> str:
        """What a page passes to ``pushManager.subscribe()`` (base64url, padded like Firefox)."""
        raw = raw_public_key(self.vapid.private_key)
        return base64.urlsafe_b64encode(raw).decode()

    def push(self, subscription: Subscription, data: str | None, ttl: int = 60,
             headers: dict[str, str] | None = None, sub: str = "mailto:ops@example.com") -> Any:
        origin = subscription.endpoint.split("/wpush/")[0]
        return webpush(
            subscription.info(), data=data, vapid_private_key=self.vapid,
            vapid_claims={"sub": sub, "aud": origin}, ttl=ttl, headers=headers or {},
        )


@dataclass
class Subscription:
    """A browser's subscription: endpoint plus the keys it decrypts with."""

    endpoint: str
    private_key: ec.EllipticCurvePrivateKey = field(default_factory=lambda: ec.generate_private_key(ec.SECP256R1()))
    auth_secret: bytes = field(default_factory=lambda: os.urandom(16))

    def info(self) -> dict:
        return {
            "endpoint": self.endpoint,
            "keys": {"p256dh": b64url(raw_public_key(self.private_key)), "auth": b64url(self.auth_secret)},
        }

    def decrypt(self, notification: dict) -> bytes:
        assert notification["headers"]["encoding"] == "aes128gcm"
        return http_ece.decrypt(
            b64url_decode(notification["data"]), private_key=self.private_key,
            auth_secret=self.auth_secret, version="aes128gcm",
        )
