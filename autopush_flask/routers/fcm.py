"""Delivery to Android devices through Firebase Cloud Messaging, HTTP v1 API (docs/protocol.md#bridges).

One ``FcmClient`` per configured app id, created on first use and kept for
the life of the worker: it holds the service-account credentials, the cached
OAuth2 access token and a pool of keep-alive connections to FCM.

FCM is spoken with ``requests`` and ``google-auth`` directly, through their
public APIs. ``pyfcm`` (2.1.1, read from its ``baseapi.py``) was dropped
because none of its public API fits, and this module used to override its
session, endpoint, send and token handling and call its private methods:

* ``notify()`` builds a payload with ``"notification": {}`` and
  ``"validate_only"`` and puts data at the message level, not in ``android``;
* ``send_request()`` sleeps for any ``Retry-After`` and then recurses, and
  re-sends on every expired token, both without bound;
* ``parse_response()`` accepts only 200 and turns 401/403/404/5xx into
  exceptions that drop the body (and for 401/403/404 the status), while
  docs/protocol.md#bridges needs both;
* the session and token live in a ``threading.local``, i.e. per greenlet
  under gevent: a new connection and a new token for every request;
* tokens are fetched without a timeout override (google-auth's 120 s) and
  without serialising concurrent refreshes.

google-auth's ``AuthorizedSession`` is not used either: every caller that
sees an invalid token refreshes it, concurrently and without sharing a
failure, and its ``before_request`` may start a Regional Access Boundary
lookup in a background thread (google-auth 2.63, behind an environment
variable). The credentials' public ``token_state``, ``token`` and
``refresh()`` are all this module needs.
"""

from __future__ import annotations

import functools
import json
import logging
import threading
from typing import Any

import requests
from google.auth.credentials import TokenState
from google.auth.exceptions import GoogleAuthError
from google.auth.transport.requests import Request as GoogleAuthRequest
from google.oauth2 import service_account
from requests.adapters import HTTPAdapter

from autopush_flask import urgency
from autopush_flask.config import Settings
from autopush_flask.db import Notification, Storage, User
from autopush_flask.logging import log_fields
from autopush_flask.push_errors import (
    BRIDGE_AUTHENTICATION,
    BRIDGE_CONNECTION,
    BRIDGE_DATA_TOO_LARGE,
    BRIDGE_INVALID_RESPONSE,
    BRIDGE_REPORTED_ERROR,
    BRIDGE_TIMEOUT,
    FCM_CREDENTIALS_UNUSABLE,
    INVALID_DEVICE_TOKEN,
    NO_SUCH_SUBSCRIPTION,
    UNKNOWN_FCM_APP,
    ErrorKind,
    PushError,
)
from autopush_flask.routers.bridge import (
    UNSENDABLE,
    bridge_data,
    bridge_failure,
    bridge_sent,
    device_gone,
    unsendable_record,
    valid_token,
)

PLATFORM = "fcm"
FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
POOL_SIZE = 100
GONE_STATUSES = frozenset({"NOT_FOUND", "UNREGISTERED"})
TOKEN_EXPIRED_REASON = "ACCESS_TOKEN_EXPIRED"

log = logging.getLogger("autopush.router")


class TokenFailure(Exception):
    """No OAuth2 access token could be obtained: unusable key or token endpoint failure."""


class FcmClient:
    """FCM v1 ``messages:send`` for one project, safe to share between greenlets.

    One ``requests`` session (keep-alive pool) carries both the sends and the
    token requests, and every request has the configured timeout: google-auth
    would otherwise wait up to its default of 120 s for a token. ``None``
    (``AUTOPUSH_FCM_TIMEOUT=0``) means no limit, as for the sends.
    """

    def __init__(
        self, base_url: str, project_id: str, credentials: service_account.Credentials, timeout: float | None
    ) -> None:
        adapter = HTTPAdapter(pool_connections=4, pool_maxsize=POOL_SIZE, max_retries=0)
        self._session = requests.Session()
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)
        self._end_point = f"{base_url.rstrip('/')}/v1/projects/{project_id}/messages:send"
        self._credentials = credentials
        self._timeout = timeout
        # google-auth calls its transport without a timeout; a call-time one would still win.
        self._token_request = functools.partial(GoogleAuthRequest(self._session), timeout=timeout)
        # Created lazily in the worker, i.e. after gevent's monkey patching:
        # this is a gevent lock there and a thread lock elsewhere.
        self._token_lock = threading.Lock()
        self._refreshes = 0
        self._refresh_error: str | None = None

    def send(self, payload: bytes) -> requests.Response:
        """One POST; re-sent once, with a fresh token, only when FCM says the token expired.

        A throttled answer (429/503 with ``Retry-After``) is not waited on: an
        endpoint request must answer within ``fcm_timeout``, so it goes
        straight back to the response mapping, body and all.
        Raises ``TokenFailure`` and ``requests`` exceptions.
        """
        token = self._access_token()
        response = self._post(payload, token)
        if _token_expired(response):
            response = self._post(payload, self._access_token(stale=token))
        return response

    def _post(self, payload: bytes, token: str) -> requests.Response:
        headers = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        return self._session.post(self._end_point, data=payload, headers=headers, timeout=self._timeout)

    def _usable_token(self, stale: str | None) -> str | None:
        """The cached token unless it is missing, near expiry or ``stale``."""
        credentials = self._credentials
        token = credentials.token
        if credentials.token_state is TokenState.FRESH and token != stale:
            return token
        return None

    def _access_token(self, stale: str | None = None) -> str:
        """The cached token, refreshed by one greenlet at a time when near expiry or ``stale``.

        google-auth keeps a token ``FRESH`` until shortly (3 min 45 s) before
        the ``expires_in`` the token endpoint gave. Greenlets that waited on a
        refresh that failed share that failure instead of each trying again;
        the next push after it tries again. A refresh is bounded: google-auth
        makes at most 3 attempts at the token endpoint, retrying only
        transient answers, about 1 s and 2 s apart.
        """
        token = self._usable_token(stale)
        if token is not None:
            return token
        # Counts *finished* refreshes: one that finished while this caller
        # waited for the lock is the one it waited on. (Counting started ones
        # missed it: under gevent a waiter only runs once the refresh has
        # started, so it always saw the count already raised and tried again.)
        seen = self._refreshes
        with self._token_lock:
            token = self._usable_token(stale)
            if token is not None:
                return token
            if self._refreshes != seen and self._refresh_error:
                raise TokenFailure(self._refresh_error)
            try:
                self._credentials.refresh(self._token_request)
            except (GoogleAuthError, ValueError) as error:
                self._refresh_error = str(error) or repr(error)
                raise TokenFailure(self._refresh_error) from error
            finally:
                self._refreshes += 1
            self._refresh_error = None
            token = self._credentials.token
            if not token:
                raise TokenFailure("the token endpoint returned no access token")
            return token


def _token_expired(response: requests.Response) -> bool:
    """FCM's 401 for an expired access token: ``ACCESS_TOKEN_EXPIRED`` in the error's details.

    Any other 401 is answered as an authentication failure, not re-sent.
    """
    if response.status_code != 401:
        return False
    error = _error_object(response)
    details = error.get("details") if error is not None else None
    if not isinstance(details, list):
        return False
    return any(isinstance(d, dict) and d.get("reason") == TOKEN_EXPIRED_REASON for d in details)


def load_credentials(credential: Any) -> service_account.Credentials:
    """A service-account key given as JSON text, a parsed object or a file path."""
    try:
        if isinstance(credential, dict):
            info = credential
        elif credential.lstrip().startswith("{"):
            info = json.loads(credential)
        else:
            return service_account.Credentials.from_service_account_file(credential, scopes=[FCM_SCOPE])
        return service_account.Credentials.from_service_account_info(info, scopes=[FCM_SCOPE])
    except (OSError, ValueError, TypeError, AttributeError) as error:
        raise TokenFailure(f"unusable service-account key: {error}") from error


class FcmRouter:
    def __init__(self, settings: Settings, storage: Storage, metrics: Any) -> None:
        self._settings = settings
        self._storage = storage
        self._metrics = metrics
        self._apps: dict[str, dict] = dict(settings.fcm_credentials or {})
        self._clients: dict[str, FcmClient] = {}
        # AUTOPUSH_FCM_TIMEOUT=0 means no limit (requests rejects a zero timeout).
        self._timeout = settings.fcm_timeout or None

    def router_data(self, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """docs/protocol.md#bridge-registration: a plausible device token and a configured app id."""
        token = body.get("token") if isinstance(body, dict) else None
        if not valid_token(token):
            raise PushError(INVALID_DEVICE_TOKEN)
        if app_id not in self._apps:
            raise PushError(UNKNOWN_FCM_APP)
        return {"token": token, "app_id": app_id}

    def route(self, user: User, notification: Notification) -> str:
        token, app_id = _record_target(user.router_data or {})
        if token is None or app_id is None:
            reason = "no_token" if token is None else "no_app_id"
            raise self._failure(app_id or "", reason, NO_SUCH_SUBSCRIPTION)
        if app_id not in self._apps:
            raise self._failure(app_id, "invalid_app_id", UNKNOWN_FCM_APP)
        data = bridge_data(notification)
        excess = len(_compact_json(data)) - self._settings.fcm_max_data
        if excess > 0:
            raise self._failure(app_id, "too_much_data", BRIDGE_DATA_TOO_LARGE, excess=excess)
        ttl = min(self._settings.fcm_max_ttl, max(self._settings.fcm_min_ttl, notification.ttl))
        message = {"message": {"token": token, "android": _android_config(notification, ttl, data)}}
        try:
            payload = _compact_json(message)
        except UNSENDABLE as error:  # a record from before tokens were checked (lone surrogates)
            raise unsendable_record(self._metrics, PLATFORM, app_id) from error
        response = self._send(app_id, payload)
        if 200 <= response.status_code < 300:
            return bridge_sent(self._metrics, PLATFORM, app_id)
        raise self._error_answer(user, app_id, response)

    def _send(self, app_id: str, payload: bytes) -> requests.Response:
        try:
            return self._client(app_id).send(payload)
        except TokenFailure as error:
            log.error("FCM OAuth2 token failure", extra=log_fields(app_id=app_id, error=str(error)))
            raise self._failure(app_id, "oauth_failure", FCM_CREDENTIALS_UNUSABLE) from error
        except requests.Timeout as error:  # before ConnectionError: ConnectTimeout is both
            raise self._failure(app_id, "timeout", BRIDGE_TIMEOUT) from error
        except requests.RequestException as error:
            log.warning("FCM connection failure", extra=log_fields(app_id=app_id, error=str(error)))
            raise self._failure(app_id, "connection_unavailable", BRIDGE_CONNECTION) from error

    def _error_answer(self, user: User, app_id: str, response: requests.Response) -> PushError:
        """docs/protocol.md#bridges's table for every non-2xx answer."""
        status = response.status_code
        if status == 401:
            return self._failure(app_id, "authentication", BRIDGE_AUTHENTICATION)
        error = _error_object(response)
        if status == 404 or (error is not None and _fcm_codes(error) & GONE_STATUSES):
            return device_gone(self._storage, self._metrics, user, PLATFORM, app_id)
        if error is None:
            log.warning(
                "FCM error without an error object",
                extra=log_fields(app_id=app_id, status=status, body=response.text[:200]),
            )
            return self._failure(app_id, "invalid_response", BRIDGE_INVALID_RESPONSE)
        log.warning(
            "FCM error",
            extra=log_fields(
                app_id=app_id, status=status, fcm_status=error.get("status"), fcm_message=error.get("message")
            ),
        )
        return self._failure(app_id, f"upstream_{status}", BRIDGE_REPORTED_ERROR)

    def _failure(self, app_id: str, reason: str, kind: ErrorKind, **details: object) -> PushError:
        return bridge_failure(self._metrics, PLATFORM, app_id, reason, kind, **details)

    def _client(self, app_id: str) -> FcmClient:
        client = self._clients.get(app_id)
        if client is None:
            entry = self._apps[app_id]
            client = FcmClient(
                self._settings.fcm_base_url,
                entry["project_id"],
                load_credentials(entry["credential"]),
                self._timeout,
            )
            # Racing creators build one each; all of them use the first stored.
            client = self._clients.setdefault(app_id, client)
        return client


def _android_config(notification: Notification, ttl: int, data: dict) -> dict[str, Any]:
    """Urgency sets the Android priority, and a Topic the collapse key (docs/protocol.md#bridges).

    FCM delivers NORMAL messages when the device wakes and HIGH ones at once.
    """
    config: dict[str, Any] = {
        "ttl": f"{ttl}s",
        "priority": "NORMAL" if urgency.is_low(notification.urgency) else "HIGH",
        "data": data,
    }
    if notification.topic:
        config["collapse_key"] = notification.topic
    return config


def _record_target(router_data: dict) -> tuple[str | None, str | None]:
    """Device token and app id; records from older servers name the app as ``creds.senderID``."""
    token = router_data.get("token")
    app_id = router_data.get("app_id")
    creds = router_data.get("creds")
    if app_id in (None, "") and isinstance(creds, dict):
        app_id = creds.get("senderID")
    token = token if isinstance(token, str) and token else None
    app_id = str(app_id) if app_id not in (None, "") else None
    return token, app_id


def _compact_json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _error_object(response: requests.Response) -> dict | None:
    """``{"error": {...}}`` from an FCM error answer; ``None`` when empty, not JSON or shaped otherwise."""
    try:
        body = response.json()
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _fcm_codes(error: dict) -> set[str]:
    """The error's ``status`` plus the FCM ``errorCode``s in its details (where FCM puts UNREGISTERED)."""
    codes = {error.get("status")}
    details = error.get("details")
    if isinstance(details, list):
        codes.update(d.get("errorCode") for d in details if isinstance(d, dict))
    return {code for code in codes if isinstance(code, str)}
