"""Pooled HTTP/2 to Apple's push service, one client per release channel.

``apns2`` cannot be used (its ``hyper`` dependency does not import on Python
3.10+ and it pins ``h2`` 2.x), so this is a small client on
``httpx.Client(http1=False, http2=True)``: HTTP/2 is required, never
negotiated down. Each release channel gets one pooled client, created on its
first push and reused; HTTP/2 multiplexes concurrent pushes (greenlets under
gevent) over its connection. A request that fails because Apple closed the
connection is retried once on a fresh one.
"""

from __future__ import annotations

import logging
import threading

import httpx

from autopush_flask.logging import log_fields
from autopush_flask.routers.apns.channel import ApnsChannel

# The connection died under the request (Apple closed it): worth one retry.
CONNECTION_CLOSED = (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)

log = logging.getLogger("autopush.router")


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
