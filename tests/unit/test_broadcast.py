"""Broadcast registry and Megaphone poller (docs/protocol.md#broadcast, checklist 57–60).

The poller talks to a real HTTP server on 127.0.0.1 that replays scripted
responses, so status codes, bodies, timeouts and headers are the real thing.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import gevent
import pytest

from autopush_flask.connection.broadcast import BroadcastCheck, BroadcastRegistry
from autopush_flask.connection.megaphone import MegaphonePoller
from autopush_flask.metrics import MetricCall, RecordingMetrics

OK = MetricCall("increment", "megaphone.updater.ok", 1, {})


def error(reason: str) -> MetricCall:
    return MetricCall("increment", "megaphone.updater.error", 1, {"reason": reason})


# ----------------------------------------------------------------------
# A scripted Megaphone


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"broadcasts": {}}'
    delay: float = 0.0  # before the status line
    body_delay: float = 0.0  # after the headers


@dataclass
class FakeMegaphone:
    """Serves ``replies`` in order (the last one repeats) and records the
    Authorization header of each request (``None`` when absent)."""

    url: str
    replies: list[Reply] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)

    def script(self, *replies: Reply) -> None:
        self.replies[:] = replies

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _handler(megaphone: FakeMegaphone) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server naming
            megaphone.authorization.append(self.headers.get("Authorization"))
            reply = megaphone.next_reply()
            time.sleep(reply.delay)
            try:
                self.send_response(reply.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.flush()
                time.sleep(reply.body_delay)
                self.wfile.write(reply.body)
            except OSError:
                pass  # the client gave up (timeout test)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def megaphone() -> Iterator[FakeMegaphone]:
    fake = FakeMegaphone(url="")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(fake))
    server.daemon_threads = True
    server.block_on_close = False
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/v1/broadcasts"
    fake.script(Reply())
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.01})
    thread.start()
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=1)


@pytest.fixture
def registry() -> BroadcastRegistry:
    return BroadcastRegistry()


def _poller(
    registry: BroadcastRegistry,
    metrics: RecordingMetrics,
    url: str,
    token: str | None = None,
    timeout: float = 1.0,
    interval: float = 30.0,
) -> MegaphonePoller:
    return MegaphonePoller(registry, url, token, interval, metrics, timeout=timeout)


def _body(text: str) -> Reply:
    return Reply(body=text.encode())


# ----------------------------------------------------------------------
# BroadcastRegistry


def test_unknown_id_is_reported_as_not_found(registry: BroadcastRegistry) -> None:
    """Checklist 57 (also: Megaphone disabled means every id is unknown)."""
    check = registry.subscribe({"unknown:1": "v1"})
    assert check == BroadcastCheck(changed={}, errors={"unknown:1": "Broadcast not found"}, subscribed={})
    assert registry.reply_payload(check) == {"errors": {"unknown:1": "Broadcast not found"}}


def test_old_version_is_listed_current_is_not(registry: BroadcastRegistry) -> None:
    """Checklist 58."""
    registry.update({"kinto:123": "ver1"})
    old = registry.subscribe({"kinto:123": "ver0"})
    assert old == BroadcastCheck(changed={"kinto:123": "ver1"}, errors={}, subscribed={"kinto:123": "ver1"})
    assert registry.reply_payload(old) == {"kinto:123": "ver1"}
    current = registry.subscribe({"kinto:123": "ver1"})
    assert current == BroadcastCheck(changed={}, errors={}, subscribed={"kinto:123": "ver1"})


def test_up_to_date_subscription_has_empty_payload(registry: BroadcastRegistry) -> None:
    """Checklist 59: nothing changed, nothing unknown → ``{}`` (no reply)."""
    registry.update({"kinto:123": "ver1", "other:1": "x"})
    assert registry.reply_payload(registry.subscribe({"kinto:123": "ver1"})) == {}
    assert registry.reply_payload(registry.subscribe({})) == {}


def test_mixed_payload(registry: BroadcastRegistry) -> None:
    registry.update({"kinto:123": "ver1", "kinto:456": "v2"})
    check = registry.subscribe({"kinto:123": "ver0", "kinto:456": "v2", "gone:9": "v"})
    assert registry.reply_payload(check) == {
        "kinto:123": "ver1",
        "errors": {"gone:9": "Broadcast not found"},
    }
    assert check.subscribed == {"kinto:123": "ver1", "kinto:456": "v2"}


def test_pending_changes_after_update(registry: BroadcastRegistry) -> None:
    """Checklist 60 at the registry level."""
    registry.update({"kinto:123": "ver1", "kinto:456": "v2"})
    subs = registry.subscribe({"kinto:123": "ver1"}).subscribed
    assert registry.pending_changes(subs) == {}
    registry.update({"kinto:123": "ver2", "kinto:456": "v3"})
    assert registry.pending_changes(subs) == {"kinto:123": "ver2"}
    assert registry.pending_changes({"kinto:123": "ver2", "unknown:1": "x"}) == {}


def test_change_count(registry: BroadcastRegistry) -> None:
    assert (registry.change_count, registry.versions) == (0, {})
    assert registry.update({"a": "1", "b": "1"}) is True
    assert registry.change_count == 1
    assert registry.update({"a": "1", "b": "1"}) is False  # same data
    assert registry.update({"a": "1"}) is False  # "b" vanished: kept, no change
    assert registry.update({}) is False
    assert (registry.change_count, registry.versions) == (1, {"a": "1", "b": "1"})
    assert registry.update({"a": "2", "c": "1"}) is True  # one bump per call
    assert registry.change_count == 2
    assert registry.update({"d": "1"}) is True  # a new id alone counts
    assert (registry.change_count, registry.versions) == (3, {"a": "2", "b": "1", "c": "1", "d": "1"})


def test_versions_is_a_copy(registry: BroadcastRegistry) -> None:
    registry.update({"a": "1"})
    registry.versions["a"] = "hacked"
    assert registry.versions == {"a": "1"}


def test_untrusted_requests_never_raise(registry: BroadcastRegistry) -> None:
    registry.update({"kinto:123": "ver1"})
    assert registry.subscribe({"a": 1}) == BroadcastCheck(errors={"a": "Broadcast not found"})
    # A known id with a non-string version: the client gets the real version.
    for bogus in (1, None, ["ver1"], {"v": "ver1"}, True, 1.5):
        assert registry.subscribe({"kinto:123": bogus}) == BroadcastCheck(
            changed={"kinto:123": "ver1"}, subscribed={"kinto:123": "ver1"}
        )
    # Non-string ids are skipped; non-mappings subscribe to nothing.
    assert registry.subscribe({1: "ver1", None: "x", ("kinto:123",): "y"}) == BroadcastCheck()
    for not_a_mapping in (None, [], ["kinto:123"], "kinto:123", 5):
        assert registry.subscribe(not_a_mapping) == BroadcastCheck()  # type: ignore[arg-type]


# ----------------------------------------------------------------------
# MegaphonePoller


def test_poll_success_updates_registry(
    megaphone: FakeMegaphone, registry: BroadcastRegistry, metrics: RecordingMetrics
) -> None:
    megaphone.script(_body('{"broadcasts": {"kinto:123": "ver1", "kinto:456": "v2"}}'))
    assert _poller(registry, metrics, megaphone.url).poll_once() is True
    assert (registry.change_count, registry.versions) == (1, {"kinto:123": "ver1", "kinto:456": "v2"})
    assert metrics.calls == [OK]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        (Reply(status=500, body=b'{"broadcasts": {"kinto:123": "bad"}}'), "status"),
        (Reply(status=404, body=b"not here"), "status"),
        (_body("<html>garbage"), "invalid"),
        (_body('{"broadcasts": []}'), "invalid"),
        (_body('{"other": {}}'), "invalid"),
        (_body('["broadcasts"]'), "invalid"),
        (_body('{"broadcasts": {"kinto:123": "ver2", "x": 3}}'), "invalid"),
        (Reply(delay=0.5), "timeout"),
        (Reply(body_delay=0.5), "timeout"),
    ],
)
def test_poll_failure_keeps_previous_data(
    megaphone: FakeMegaphone,
    registry: BroadcastRegistry,
    metrics: RecordingMetrics,
    reply: Reply,
    reason: str,
) -> None:
    megaphone.script(_body('{"broadcasts": {"kinto:123": "ver1"}}'), reply)
    poller = _poller(registry, metrics, megaphone.url, timeout=0.2)
    assert poller.poll_once() is True
    assert poller.poll_once() is False
    assert (registry.change_count, registry.versions) == (1, {"kinto:123": "ver1"})
    assert metrics.calls == [OK, error(reason)]


def test_closed_port_is_a_connection_error(
    registry: BroadcastRegistry, metrics: RecordingMetrics
) -> None:
    registry.update({"kinto:123": "ver1"})
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert _poller(registry, metrics, f"http://127.0.0.1:{port}/").poll_once() is False
    assert (registry.change_count, registry.versions) == (1, {"kinto:123": "ver1"})
    assert metrics.calls == [error("connection")]


def test_failure_is_logged_without_token(
    megaphone: FakeMegaphone, registry: BroadcastRegistry, metrics: RecordingMetrics
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("autopush.megaphone")
    logger.addHandler(handler)
    try:
        megaphone.script(Reply(status=503))
        _poller(registry, metrics, megaphone.url, token="s3cret").poll_once()
    finally:
        logger.removeHandler(handler)
    assert [(r.levelno, r.getMessage(), r.fields) for r in records] == [  # type: ignore[attr-defined]
        (logging.WARNING, "Megaphone poll failed", {"reason": "status", "error": "HTTP 503"})
    ]


def test_bearer_token_only_when_configured(
    megaphone: FakeMegaphone, registry: BroadcastRegistry, metrics: RecordingMetrics
) -> None:
    _poller(registry, metrics, megaphone.url, token="s3cret").poll_once()
    _poller(registry, metrics, megaphone.url, token=None).poll_once()
    _poller(registry, metrics, megaphone.url, token="").poll_once()
    assert megaphone.authorization == ["Bearer s3cret", None, None]


class _FlakyRegistry(BroadcastRegistry):
    """Fails its first update, to prove the loop survives unexpected errors."""

    def __init__(self) -> None:
        super().__init__()
        self.failed = False

    def update(self, versions):  # type: ignore[no-untyped-def]
        if not self.failed:
            self.failed = True
            raise RuntimeError("boom")
        return super().update(versions)


def test_run_forever_survives_errors_and_stops(
    megaphone: FakeMegaphone, metrics: RecordingMetrics
) -> None:
    registry = _FlakyRegistry()
    megaphone.script(
        Reply(status=500),
        _body('{"broadcasts": {"kinto:123": "ver0"}}'),  # update raises
        _body('{"broadcasts": {"kinto:123": "ver1"}}'),
    )
    poller = _poller(registry, metrics, megaphone.url, interval=0.02)
    greenlet = poller.start()
    deadline = time.monotonic() + 2
    while registry.change_count == 0 and time.monotonic() < deadline:
        gevent.sleep(0.01)
    poller.stop()
    gevent.sleep(0)
    assert greenlet.dead is True
    assert (registry.change_count, registry.versions) == (1, {"kinto:123": "ver1"})
    assert metrics.calls[:2] == [error("status"), OK]
    polls = len(megaphone.authorization)
    gevent.sleep(0.1)
    assert len(megaphone.authorization) == polls  # really stopped
