"""Broadcast versions from Megaphone and what each session is told (SPEC §2.11).

One ``BroadcastRegistry`` per worker holds the versions every session compares
against, so its read paths run on every hello, ``broadcast_subscribe`` and
auto-ping tick and must stay cheap. ``MegaphonePoller`` is the only writer.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import gevent
import requests
import urllib3.exceptions

from autopush_flask.logging import log_fields

log = logging.getLogger("autopush.megaphone")

NOT_FOUND = "Broadcast not found"
METRIC_OK = "megaphone.updater.ok"
METRIC_ERROR = "megaphone.updater.error"


@dataclass(frozen=True)
class BroadcastCheck:
    """Outcome of comparing a client's requested broadcasts with the node's.

    Kept separate from the reply so a session can store ``subscribed`` and
    merge ``changed`` with its own pending changes before answering.
    """

    changed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    subscribed: dict[str, str] = field(default_factory=dict)


class BroadcastRegistry:
    """Node-wide broadcast versions plus a change counter.

    The counter lets a session skip comparing its subscriptions on a tick
    when nothing changed since it last looked, which is nearly every tick.
    """

    def __init__(self) -> None:
        self._versions: dict[str, str] = {}
        self._change_count = 0

    @property
    def versions(self) -> dict[str, str]:
        """A copy, so callers cannot alter what every session compares against."""
        return dict(self._versions)

    @property
    def change_count(self) -> int:
        return self._change_count

    def update(self, versions: Mapping[str, str]) -> bool:
        """Merge Megaphone's answer; returns whether anything changed.

        Ids missing from the answer are kept: a partial or flapping Megaphone
        should not make clients see "Broadcast not found" for live ids.
        """
        changes = {
            bid: ver for bid, ver in versions.items() if self._versions.get(bid) != ver
        }
        if not changes:
            return False
        # Swap in a new dict rather than mutate, so a reader part-way through
        # iterating the old one never sees it change underneath it.
        self._versions = {**self._versions, **changes}
        self._change_count += 1
        return True

    def subscribe(self, requested: Mapping[Any, Any]) -> BroadcastCheck:
        """Compare a client's ``broadcasts`` object with the node's versions.

        ``requested`` is untrusted client JSON, so nothing here may raise:
        anything but a mapping subscribes to nothing; non-string ids are skipped (JSON object keys are always strings, so
        only a non-JSON caller can produce them); a known id whose version is
        not a string counts as differing, so the client is sent the real
        version and subscribed; an unknown id is an error whatever its value.
        """
        if not isinstance(requested, Mapping):
            return BroadcastCheck()
        versions = self._versions
        changed: dict[str, str] = {}
        errors: dict[str, str] = {}
        subscribed: dict[str, str] = {}
        for bid, client_version in requested.items():
            if type(bid) is not str:
                continue
            server_version = versions.get(bid)
            if server_version is None:
                errors[bid] = NOT_FOUND
                continue
            subscribed[bid] = server_version
            if type(client_version) is not str or client_version != server_version:
                changed[bid] = server_version
        return BroadcastCheck(changed, errors, subscribed)

    @staticmethod
    def reply_payload(check: BroadcastCheck) -> dict[str, Any]:
        """The hello reply's ``broadcasts`` object: changed ids at top level,
        ``errors`` only when there are some, ``{}`` when nothing to report."""
        payload: dict[str, Any] = dict(check.changed)
        if check.errors:
            payload["errors"] = dict(check.errors)
        return payload

    def pending_changes(self, subscribed: Mapping[str, str]) -> dict[str, str]:
        """Ids whose server version differs from what the session last saw."""
        versions = self._versions
        changes: dict[str, str] = {}
        for bid, seen in subscribed.items():
            current = versions.get(bid)
            if current is not None and current != seen:
                changes[bid] = current
        return changes


class CounterSink(Protocol):
    """The part of the metrics sinks the poller uses."""

    def increment(
        self, name: str, value: int = 1, tags: Mapping[str, Any] | None = None
    ) -> None: ...


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
            except Exception:  # noqa: BLE001 - broadcasts must keep updating
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
            response = self._session.get(
                self.url, headers=self._headers, timeout=self.timeout
            )
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
