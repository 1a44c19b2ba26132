"""Polling Megaphone for broadcast versions (docs/protocol.md#broadcast).

One ``MegaphonePoller`` per worker copies Megaphone's answer into the
worker's ``BroadcastRegistry`` (``broadcast.py``) every
``AUTOPUSH_MEGAPHONE_POLL_INTERVAL``; a failed poll keeps the old versions.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Protocol

import gevent
import requests
import urllib3.exceptions

from autopush_flask.connection.broadcast import BroadcastRegistry
from autopush_flask.logging import log_fields

log = logging.getLogger("autopush.megaphone")

METRIC_OK = "megaphone.updater.ok"
METRIC_ERROR = "megaphone.updater.error"


class CounterSink(Protocol):
    """The part of the metrics sinks the poller uses."""

    def increment(self, name: str, value: int = 1, tags: Mapping[str, Any] | None = None) -> None: ...


class PollError(Exception):
    """A failed poll, carrying the ``reason`` tag for the error metric."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class MegaphonePoller:
    """Periodically copies Megaphone's broadcast versions into a registry.

    Uses ``requests``; in the gevent workers the socket module is
    monkey-patched, so a slow Megaphone blocks only this greenlet. ``timeout``
    is requests' per-socket-operation timeout (connect, then each read).
    """

    def __init__(
        self,
        registry: BroadcastRegistry,
        url: str,
        token: str | None,
        interval: float,
        metrics: CounterSink,
        session: requests.Session | None = None,
        timeout: float = 5.0,
    ) -> None:
        self.registry = registry
        self.url = url
        self.interval = interval
        self.metrics = metrics
        self.timeout = timeout
        self._session = session if session is not None else requests.Session()
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._greenlet: gevent.Greenlet | None = None

    def poll_once(self) -> bool:
        """Fetch once and update the registry; a failure keeps the old data."""
        try:
            versions = self._fetch()
        except PollError as exc:
            log.warning(
                "Megaphone poll failed",
                extra=log_fields(reason=exc.reason, error=str(exc)),
            )
            self.metrics.increment(METRIC_ERROR, tags={"reason": exc.reason})
            return False
        self.registry.update(versions)
        self.metrics.increment(METRIC_OK)
        return True

    def run_forever(self) -> None:
        """Poll, then sleep; never dies on an error, only when killed."""
        while True:
            try:
                self.poll_once()
            except Exception:  # broadcasts must keep updating
                log.exception("Megaphone poller error")
            gevent.sleep(self.interval)

    def start(self) -> gevent.Greenlet:
        """Run the loop in its own greenlet (in the worker, after fork)."""
        self._greenlet = gevent.spawn(self.run_forever)
        return self._greenlet

    def stop(self) -> None:
        """Kill the loop without waiting, so shutdown never hangs on a poll."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None

    def _fetch(self) -> dict[str, str]:
        try:
            response = self._session.get(self.url, headers=self._headers, timeout=self.timeout)
        except requests.RequestException as exc:
            raise PollError(_request_failure_reason(exc), repr(exc)) from exc
        if response.status_code != 200:
            raise PollError("status", f"HTTP {response.status_code}")
        try:
            body = response.json()
        except ValueError as exc:
            raise PollError("invalid", "body is not JSON") from exc
        return _parse_broadcasts(body)


def _request_failure_reason(exc: requests.RequestException) -> str:
    """requests reports a read timeout while streaming the body as a
    ConnectionError wrapping urllib3's timeout; it is still a timeout."""
    if isinstance(exc, requests.Timeout):
        return "timeout"
    if any(isinstance(arg, urllib3.exceptions.TimeoutError) for arg in exc.args):
        return "timeout"
    return "connection"


def _parse_broadcasts(body: Any) -> dict[str, str]:
    """All-or-nothing: a half-valid answer is more likely a broken Megaphone
    than a real change, so none of it is applied."""
    broadcasts = body.get("broadcasts") if isinstance(body, dict) else None
    if not isinstance(broadcasts, dict):
        raise PollError("invalid", "missing or non-object 'broadcasts'")
    for bid, version in broadcasts.items():
        if not isinstance(version, str):
            raise PollError("invalid", f"non-string version for {bid!r}")
    return broadcasts
