"""Metrics sinks against a real UDP socket: the exact datagrams matter,
because Metrics writes the statsd/DogStatsD lines itself (metrics.StatsdSocket)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator

import pytest

from autopush_flask.metrics import (
    MetricCall,
    Metrics,
    NullMetrics,
    RecordingMetrics,
    create_metrics,
)


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(1.0)
    yield sock
    sock.close()


def _port(sock: socket.socket) -> int:
    return sock.getsockname()[1]


def _recv(sock: socket.socket) -> str:
    return sock.recv(4096).decode("ascii")


def _assert_silent(sock: socket.socket) -> None:
    sock.settimeout(0.1)
    with pytest.raises(socket.timeout):
        sock.recv(4096)


def _tagged(receiver: socket.socket) -> Metrics:
    metrics = create_metrics("127.0.0.1", _port(receiver), "autoendpoint", True)
    assert isinstance(metrics, Metrics)
    return metrics


def _untagged(receiver: socket.socket) -> Metrics:
    metrics = create_metrics("127.0.0.1", _port(receiver), "autoendpoint", False)
    assert isinstance(metrics, Metrics)
    return metrics


def test_increment_default(receiver):
    m = _untagged(receiver)
    m.increment("notification.received")
    assert _recv(receiver) == "autoendpoint.notification.received:1|c"


def test_increment_value_and_tags(receiver):
    m = _tagged(receiver)
    m.increment("notification.message_data", 5, tags={"destination": "Direct"})
    assert _recv(receiver) == "autoendpoint.notification.message_data:5|c|#destination:Direct"


def test_tags_keep_order_and_are_stringified(receiver):
    m = _tagged(receiver)
    m.increment("notification.message.error", tags={"code": 404, "router": "webpush", "vapid": True})
    assert _recv(receiver) == (
        "autoendpoint.notification.message.error:1|c|#code:404,router:webpush,vapid:True"
    )


def test_tags_omitted_when_disabled(receiver):
    m = _untagged(receiver)
    m.increment("notification.message.error", tags={"code": 404})
    m.timing("notification.request_time", 12, tags={"outcome": "ok"})
    assert _recv(receiver) == "autoendpoint.notification.message.error:1|c"
    assert _recv(receiver) == "autoendpoint.notification.request_time:12|ms"


def test_empty_tags_add_no_suffix(receiver):
    _tagged(receiver).increment("x", tags={})
    assert _recv(receiver) == "autoendpoint.x:1|c"


def test_timing(receiver):
    m = _tagged(receiver)
    m.timing("notification.route_time", 12.5, tags={"outcome": "stored"})
    assert _recv(receiver) == "autoendpoint.notification.route_time:12.5|ms|#outcome:stored"


def test_gauge(receiver):
    _untagged(receiver).gauge("connections", 42)
    assert _recv(receiver) == "autoendpoint.connections:42|g"


def test_negative_gauge_is_reset_first(receiver):
    _untagged(receiver).gauge("drift", -3)
    assert _recv(receiver) == "autoendpoint.drift:0|g"
    assert _recv(receiver) == "autoendpoint.drift:-3|g"


def test_histogram_is_timer_without_tags(receiver):
    _untagged(receiver).histogram("ua.connection.channel_count", 7, tags={"a": "b"})
    assert _recv(receiver) == "autoendpoint.ua.connection.channel_count:7|ms"


def test_histogram_is_h_with_tags(receiver):
    _tagged(receiver).histogram("ua.connection.channel_count", 7, tags={"a": "b"})
    assert _recv(receiver) == "autoendpoint.ua.connection.channel_count:7|h|#a:b"


def test_timer_context_manager(receiver):
    m = _tagged(receiver)
    with m.timer("notification.request_time", tags={"k": "v"}):
        time.sleep(0.02)
    name, rest = _recv(receiver).split(":", 1)
    value, kind, tags = rest.split("|")
    assert name == "autoendpoint.notification.request_time"
    assert (kind, tags) == ("ms", "#k:v")
    assert 15 <= float(value) < 1000


def test_timer_sends_even_when_block_raises(receiver):
    m = _untagged(receiver)
    with pytest.raises(RuntimeError), m.timer("t"):
        raise RuntimeError("boom")
    assert _recv(receiver).startswith("autoendpoint.t:")


def test_hostile_tag_values_cannot_split_the_line(receiver):
    m = _tagged(receiver)
    m.increment("x", tags={"ua": "Firefox, 1.0|#évil"})
    assert _recv(receiver) == "autoendpoint.x:1|c|#ua:Firefox__1.0___vil"


def test_no_prefix(receiver):
    create_metrics("127.0.0.1", _port(receiver), "", False).increment("bare")
    assert _recv(receiver) == "bare:1|c"


@pytest.mark.parametrize("host", ["", None])
def test_empty_host_gives_null_metrics(host):
    assert isinstance(create_metrics(host, 8125, "p", True), NullMetrics)


def test_null_metrics_sends_nothing(receiver):
    m = NullMetrics()
    m.increment("a", 3, tags={"k": "v"})
    m.timing("b", 1.0)
    m.gauge("c", 1)
    m.histogram("d", 1)
    with m.timer("e"):
        pass
    m.close()
    _assert_silent(receiver)


def test_unresolvable_host_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="autopush.metrics"):
        m = create_metrics("no-such-host.invalid", 8125, "p", True)
    assert isinstance(m, NullMetrics)
    m.increment("still.works")
    assert any(r.name == "autopush.metrics" and r.levelno == logging.WARNING for r in caplog.records)


def test_send_errors_are_swallowed(receiver):
    m = _untagged(receiver)
    m.close()  # the socket is gone: any send now fails
    m.increment("after.close")
    m.timing("after.close", 1)
    _assert_silent(receiver)


def test_recording_metrics():
    m = RecordingMetrics()
    m.increment("a")
    m.increment("a", 2, tags={"code": 200})
    m.timing("b", 1.5)
    m.gauge("c", 3)
    m.histogram("d", 4, tags={"x": "y"})
    with m.timer("e"):
        pass
    assert m.calls[:5] == [
        ("increment", "a", 1, {}),
        ("increment", "a", 2, {"code": "200"}),
        ("timing", "b", 1.5, {}),
        ("gauge", "c", 3, {}),
        ("histogram", "d", 4, {"x": "y"}),
    ]
    assert m.calls[5].kind == "timing" and m.calls[5].name == "e"
    assert m.find("a") == [MetricCall("increment", "a", 1, {}), MetricCall("increment", "a", 2, {"code": "200"})]
    assert m.find("a", kind="timing") == []
    m.clear()
    assert m.calls == []
