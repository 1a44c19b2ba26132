"""Delivery to iOS devices through Apple's push service over HTTP/2 (SPEC §6.3).

``apns2`` cannot be used (its ``hyper`` dependency does not import on Python
3.10+ and it pins ``h2`` 2.x), so this is a small client on
``httpx.Client(http1=False, http2=True)``: HTTP/2 is required, never
negotiated down. Each release channel gets one pooled client, created on its
first push and reused; HTTP/2 multiplexes concurrent pushes (greenlets under
gevent) over its connection. A request that fails because Apple closed the
connection is retried once on a fresh one.

Channel configuration (``AUTOPUSH_APNS_CHANNELS``, one object per channel)::

    {"firefox": {"cert": "<path or PEM>", "key": "<path or PEM>",
                 "key_id": null, "team_id": null,
                 "topic": "org.mozilla.ios.Firefox", "sandbox": false}}

* ``key_id`` + ``team_id`` set: token auth. ``key`` is the ``.p8`` P-256
  signing key (PEM text or file path); ``cert`` is ignored. Each request
  carries ``authorization: bearer <ES256 JWT>`` (header ``kid`` = key_id,
  claims ``iss`` = team_id and ``iat``). The JWT is cached and replaced once
  it is 50 minutes old: Apple rejects tokens older than an hour and
  refreshes more frequent than every 20 minutes.
* otherwise: certificate auth. ``cert`` and ``key`` (PEM text or file paths;
  ``key`` may be omitted when ``cert`` holds both) are presented as the TLS
  client certificate.
* ``topic``: the ``apns-topic`` header, default ``com.mozilla.org.<channel>``.
* ``sandbox``: true sends to ``api.development.push.apple.com``.
* ``url`` (optional, for tests and mocks): base URL replacing Apple's host,
  e.g. ``https://127.0.0.1:8443``.
* ``ca`` (optional, for tests and mocks): path of a CA bundle that verifies
  the server instead of the public roots (certifi).

Credentials are read and checked when the router is built, so a bad path or
key stops start-up with a ``SettingsError``.
"""

from __future__ import annotations

import json
import logging
import ssl
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import certifi
import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_pem_private_key

from autopush_flask.config import Settings, SettingsError
from autopush_flask.db import Notification, Storage, User
from autopush_flask.endpoint.errors import PushError
from autopush_flask.logging import log_fields
from autopush_flask.routers.bridge import (
    UNSENDABLE,
    bridge_data,
    bridge_error,
    bridge_sent,
    device_gone,
    storable_json,
    unsendable_record,
    valid_token,
)

PLATFORM = "apns"
PRODUCTION_URL = "https://api.push.apple.com"
SANDBOX_URL = "https://api.development.push.apple.com"
DEFAULT_TOPIC = "com.mozilla.org.{channel}"
TOKEN_MAX_AGE = 50 * 60  # seconds; Apple: older than 60 min rejected, refresh at most every 20
PRIORITY = "10"
PUSH_TYPE = "alert"
DEFAULT_APS = {
    "mutable-content": 1,
    "alert": {
        "loc-key": "SentTab.NoTabArrivingNotification.body",
        "title-loc-key": "SentTab.NoTabArrivingNotification.title",
    },
}
# Apple's own aps keys nest three deep (aps → alert → loc-args).
APS_MAX_DEPTH = 8
GONE_REASONS = frozenset({"BadDeviceToken", "Unregistered"})
# The connection died under the request (Apple closed it): worth one retry.
CONNECTION_CLOSED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)
ERRNO_CONNECT = 902
ERRNO_TIMEOUT = 903
ERRNO_TOO_LARGE = 104
ERRNO_GONE = 106
PEM_MARKER = "-----BEGIN"
SETTING = "AUTOPUSH_APNS_CHANNELS"

log = logging.getLogger("autopush.router")


# --------------------------------------------------------------------------
# Credentials
# --------------------------------------------------------------------------


class ProviderToken:
    """The ES256 provider JWT of one channel, reused until it is 50 minutes old."""

    def __init__(
        self, key: ec.EllipticCurvePrivateKey, key_id: str, team_id: str,
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


@dataclass(frozen=True)
class ApnsChannel:
    """One release channel's validated configuration."""

    name: str
    base_url: str
    topic: str
    ssl_context: ssl.SSLContext
    token: ProviderToken | None  # None: certificate auth

    @classmethod
    def from_config(
        cls, name: str, config: dict[str, Any], clock: Callable[[], float] = time.time
    ) -> ApnsChannel:
        sandbox = _flag(config.get("sandbox"))
        base_url = (config.get("url") or (SANDBOX_URL if sandbox else PRODUCTION_URL)).rstrip("/")
        topic = config.get("topic") or DEFAULT_TOPIC.format(channel=name)
        context = ssl.create_default_context(cafile=config.get("ca") or certifi.where())
        key_id, team_id = config.get("key_id"), config.get("team_id")
        if key_id and team_id:
            key_pem = _pem(name, "key", config.get("key"))
            token = ProviderToken(_signing_key(name, key_pem), str(key_id), str(team_id), clock)
        else:
            _load_client_certificate(context, name, config)
            token = None
        return cls(name, base_url, topic, context, token)


def _flag(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes")
    return bool(value)


def _invalid(channel: str, problem: str) -> SettingsError:
    return SettingsError(f"invalid setting {SETTING}: channel {channel!r} {problem}")


def _pem(channel: str, field_name: str, value: Any) -> str:
    """PEM text given inline or as a file path."""
    if not value or not isinstance(value, str):
        raise _invalid(channel, f"lacks {field_name}")
    if PEM_MARKER in value:
        return value
    try:
        return Path(value).read_text()
    except OSError as error:
        raise _invalid(channel, f"{field_name} file unreadable ({error.strerror or error})") from error


def _signing_key(channel: str, pem: str) -> ec.EllipticCurvePrivateKey:
    try:
        key = load_pem_private_key(pem.encode(), password=None)
    except (ValueError, TypeError) as error:
        raise _invalid(channel, "key is not a PEM private key") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise _invalid(channel, "key is not a P-256 (.p8) token-signing key")
    return key


def _load_client_certificate(context: ssl.SSLContext, channel: str, config: dict[str, Any]) -> None:
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
            raise _invalid(channel, f"cert/key rejected ({error.reason or error})") from error


# --------------------------------------------------------------------------
# HTTP/2 client
# --------------------------------------------------------------------------


class ApnsClient:
    """Pooled HTTP/2 to one channel's APNs host; the pool is opened on first use."""

    def __init__(self, channel: ApnsChannel, timeout: float | None) -> None:
        self.channel = channel
        self._timeout = timeout
        self._lock = threading.Lock()
        self._http: httpx.Client | None = None

    def post(self, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        """POST ``device_path(token)``; raises ``httpx.TimeoutException`` / ``httpx.TransportError``."""
        try:
            return self._send(path, headers, body)
        except CONNECTION_CLOSED as error:
            log.info("APNs connection closed, retrying", extra=log_fields(error=repr(error)))
            return self._send(path, headers, body)

    def close(self) -> None:
        with self._lock:
            if self._http is not None:
                self._http.close()
                self._http = None

    def _send(self, path: str, headers: dict[str, str], body: bytes) -> httpx.Response:
        if self.channel.token is not None:
            headers = {**headers, "authorization": self.channel.token.authorization()}
        return self._client().post(path, headers=headers, content=body)

    def _client(self) -> httpx.Client:
        with self._lock:
            if self._http is None:
                self._http = httpx.Client(
                    base_url=self.channel.base_url,
                    http1=False,
                    http2=True,
                    verify=self.channel.ssl_context,
                    timeout=self._timeout,
                    trust_env=False,
                )
            return self._http


# --------------------------------------------------------------------------
# The router
# --------------------------------------------------------------------------


class ApnsRouter:
    """The ``apns`` bridge: registration data for release channels, and delivery."""

    def __init__(
        self, settings: Settings, storage: Storage, metrics: Any, clock: Callable[[], float] = time.time
    ) -> None:
        self._storage = storage
        self._metrics = metrics
        self._max_data = settings.apns_max_data
        timeout = settings.apns_timeout or None  # 0 means no limit
        self._clients = {
            name: ApnsClient(ApnsChannel.from_config(name, config, clock), timeout)
            for name, config in (settings.apns_channels or {}).items()
        }

    def close(self) -> None:
        for client in self._clients.values():
            client.close()

    def router_data(self, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """``{"token", "rel_channel"}`` plus ``"aps"`` when given (SPEC §5.3)."""
        token = body.get("token")
        if not valid_token(token):
            raise PushError(400, None, "Missing or invalid token")
        if app_id not in self._clients:
            raise PushError(400, None, "Unknown release channel")
        data: dict[str, Any] = {"token": token, "rel_channel": app_id}
        if body.get("aps") is not None:
            aps = _parse_aps(body["aps"])
            if aps is None:
                raise PushError(400, None, "Invalid aps: must be a JSON object")
            data["aps"] = aps
        return data

    def route(self, user: User, notification: Notification) -> str:
        router_data = user.router_data or {}
        token, channel = router_data.get("token"), router_data.get("rel_channel")
        if not token or not channel:
            self._error(str(channel or ""), "no_token" if not token else "no_rel_channel", 410, ERRNO_GONE)
            raise PushError(410, ERRNO_GONE, "No such subscription")
        client = self._clients.get(channel)
        if client is None:
            self._error(channel, "invalid_channel", 400, None)
            raise PushError(400, None, "Unknown release channel")

        try:
            path, body = device_path(token), _payload(notification, router_data.get("aps"))
        except UNSENDABLE as error:
            raise unsendable_record(self._metrics, PLATFORM, channel) from error
        if len(body) > self._max_data:
            self._error(channel, "too_much_data", 413, ERRNO_TOO_LARGE)
            raise PushError(
                413, ERRNO_TOO_LARGE, f"Data too large: too long by {len(body) - self._max_data} bytes"
            )
        headers = {
            "apns-topic": client.channel.topic,
            "apns-priority": PRIORITY,
            "apns-expiration": str(notification.timestamp + notification.ttl),
            "apns-id": str(uuid.uuid4()),
            "apns-push-type": PUSH_TYPE,
            "content-type": "application/json",
        }
        try:
            response = client.post(path, headers, body)
        except httpx.TimeoutException as error:
            log.warning("APNs timeout", extra=log_fields(error=repr(error), uaid_hash=user.uaid))
            self._error(channel, "timeout", 502, ERRNO_TIMEOUT)
            raise PushError(502, ERRNO_TIMEOUT, "APNs did not answer in time") from error
        except httpx.TransportError as error:
            log.warning("APNs unreachable", extra=log_fields(error=repr(error), uaid_hash=user.uaid))
            self._error(channel, "connection_unavailable", 502, ERRNO_CONNECT)
            raise PushError(502, ERRNO_CONNECT, "Could not connect to APNs") from error

        if response.status_code == 200:
            return bridge_sent(self._metrics, PLATFORM, channel)
        reason = _reason(response)
        if response.status_code == 410 or reason in GONE_REASONS:
            raise device_gone(self._storage, self._metrics, user, PLATFORM, channel)
        log.warning(
            "APNs refused the notification",
            extra=log_fields(status=response.status_code, reason=reason, uaid_hash=user.uaid),
        )
        self._error(channel, reason, 502, None)
        raise PushError(502, None, f"APNs error, {reason}")

    def _error(self, channel: str, reason: str, status: int, errno: int | None) -> None:
        bridge_error(self._metrics, PLATFORM, channel, reason, status, errno)


def _parse_aps(value: Any) -> dict | None:
    """An object, or a string holding one (SPEC §5.3, A.24), that can be stored and sent; else ``None``.

    ``aps`` comes from the client: a deep one would otherwise raise
    RecursionError while stored or serialised (a 500), NaN or a lone
    surrogate would fail DynamoDB or the UTF-8 payload of every push.
    """
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (ValueError, RecursionError):
            return None
    return value if isinstance(value, dict) and storable_json(value, APS_MAX_DEPTH) else None


def device_path(token: str) -> str:
    return f"/3/device/{quote(token, safe='')}"


def _payload(notification: Notification, stored_aps: Any) -> bytes:
    payload: dict[str, Any] = dict(bridge_data(notification))
    payload["ver"] = notification.version
    aps = _parse_aps(stored_aps) if stored_aps is not None else None
    payload["aps"] = DEFAULT_APS if aps is None else aps
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def _reason(response: httpx.Response) -> str:
    try:
        reason = response.json().get("reason")
    except (ValueError, AttributeError):
        reason = None
    return reason if isinstance(reason, str) and reason else f"upstream_{response.status_code}"

