"""Statsd metrics (docs/operations.md#metrics) with optional DogStatsD tags.

Three interchangeable sinks share one interface so callers never branch on
whether metrics are configured:

* ``Metrics`` sends statsd lines as UDP datagrams (``StatsdSocket``);
* ``NullMetrics`` drops everything (``AUTOPUSH_STATSD_HOST`` empty);
* ``RecordingMetrics`` keeps calls in memory for unit tests.

Nothing is created at import time; ``create_metrics`` builds the sink.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any, NamedTuple

Tags = Mapping[str, Any]

# Characters that would end or split a statsd/DogStatsD field. Anything else
# outside printable ASCII is replaced too: a datagram is sent as ASCII.
_NAME_FORBIDDEN = ":|@#,"
_TAG_KEY_FORBIDDEN = ":|@#,"
_TAG_VALUE_FORBIDDEN = "|@#,"


def _clean(text: str, forbidden: str) -> str:
    """Keep one user-influenced token from corrupting or breaking a datagram."""
    return "".join(c if " " < c < "\x7f" and c not in forbidden else "_" for c in text)


def _stringify_tags(tags: Tags | None) -> dict[str, str]:
    """Tags are documented as strings; converting once keeps sinks consistent."""
    return {str(k): str(v) for k, v in (tags or {}).items()}


def _format_number(value: float) -> str:
    """Statsd servers accept plain decimals; avoid '1.000000'-style noise."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.6f}".rstrip("0").rstrip(".")


class StatsdSocket:
    """One UDP socket aimed at the statsd server, whose address is resolved once.

    The ``statsd`` package (4.0.1) is not used: its public methods cannot
    carry DogStatsD tags, format timings as ``12.000000|ms`` and send a
    negative gauge's reset and value as one two-line datagram, and it has no
    public way to send a line as is. A statsd line over UDP is all it did, so
    this class does that through the standard library (resolving like it:
    IPv4, the first address ``getaddrinfo`` gives).
    """

    def __init__(self, host: str, port: int) -> None:
        """Raises ``OSError`` (``socket.gaierror``) or ``UnicodeError`` for an unusable host."""
        family, _, _, _, address = socket.getaddrinfo(host, port, socket.AF_INET, socket.SOCK_DGRAM)[0]
        self._address = address
        self._sock = socket.socket(family, socket.SOCK_DGRAM)

    def send(self, line: str) -> None:
        """One datagram; raises ``OSError`` (e.g. once closed) and ``UnicodeError``."""
        self._sock.sendto(line.encode("ascii"), self._address)

    def close(self) -> None:
        self._sock.close()


class _TimerMixin:
    """One timer implementation for every sink, built on ``timing``."""

    def timing(self, name: str, milliseconds: float, tags: Tags | None = None) -> None:
        raise NotImplementedError

    @contextmanager
    def timer(self, name: str, tags: Tags | None = None) -> Iterator[None]:
        """Time a block in milliseconds; failures are timed too, they cost."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timing(name, (time.perf_counter() - start) * 1000.0, tags)


class Metrics(_TimerMixin):
    """Statsd sink; adds DogStatsD ``|#k:v`` tags when ``tags_enabled``."""

    def __init__(self, sock: StatsdSocket, prefix: str, tags_enabled: bool) -> None:
        self._sock = sock
        self._prefix = f"{prefix}." if prefix else ""
        self._tags_enabled = tags_enabled

    def increment(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        """Counters; value > 1 is used for byte and message counts (docs/operations.md#metrics)."""
        self._send(name, _format_number(value), "c", tags)

    def timing(self, name: str, milliseconds: float, tags: Tags | None = None) -> None:
        """Durations in milliseconds (``|ms``)."""
        self._send(name, _format_number(milliseconds), "ms", tags)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Absolute gauges; a negative value is sent after a reset to 0
        because plain statsd reads a leading '-' as a decrement."""
        if value < 0:
            self._send(name, "0", "g", tags)
        self._send(name, _format_number(value), "g", tags)

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Plain statsd has no histogram type, but its timers aggregate the
        same percentiles, so ``|ms`` is used unless DogStatsD is on (``|h``)."""
        kind = "h" if self._tags_enabled else "ms"
        self._send(name, _format_number(value), kind, tags)

    def close(self) -> None:
        """Release the UDP socket (tests and clean shutdown)."""
        self._sock.close()

    def _send(self, name: str, value: str, kind: str, tags: Tags | None) -> None:
        """``<prefix>.<name>:<value>|<kind>[|#k:v,...]``, one line per datagram."""
        try:
            line = f"{self._prefix}{_clean(name, _NAME_FORBIDDEN)}:{value}|{kind}{self._tag_suffix(tags)}"
            self._sock.send(line)
        except Exception:  # metrics must never break a request
            logging.getLogger("autopush.metrics").debug("statsd send failed", exc_info=True)

    def _tag_suffix(self, tags: Tags | None) -> str:
        if not self._tags_enabled or not tags:
            return ""
        pairs = (
            f"{_clean(k, _TAG_KEY_FORBIDDEN)}:{_clean(v, _TAG_VALUE_FORBIDDEN)}"
            for k, v in _stringify_tags(tags).items()
        )
        return "|#" + ",".join(pairs)


class NullMetrics(_TimerMixin):
    """Sink used when metrics are disabled, so callers need no checks."""

    def increment(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        """Dropped."""

    def timing(self, name: str, milliseconds: float, tags: Tags | None = None) -> None:
        """Dropped."""

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Dropped."""

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Dropped."""

    def close(self) -> None:
        """Nothing to release."""


class MetricCall(NamedTuple):
    """One recorded call; a tuple so tests can compare with literals."""

    kind: str
    name: str
    value: float
    tags: dict[str, str]


class RecordingMetrics(_TimerMixin):
    """In-memory sink so other modules' tests can assert emitted metrics.

    ``calls`` holds ``MetricCall(kind, name, value, tags)`` in call order;
    ``kind`` is the method name ("increment", "timing", "gauge",
    "histogram") and ``tags`` is a dict of strings, ``{}`` when none.
    """

    def __init__(self) -> None:
        self.calls: list[MetricCall] = []

    def increment(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        """Recorded."""
        self._record("increment", name, value, tags)

    def timing(self, name: str, milliseconds: float, tags: Tags | None = None) -> None:
        """Recorded."""
        self._record("timing", name, milliseconds, tags)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Recorded."""
        self._record("gauge", name, value, tags)

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        """Recorded."""
        self._record("histogram", name, value, tags)

    def close(self) -> None:
        """Nothing to release."""

    def find(self, name: str, kind: str | None = None) -> list[MetricCall]:
        """Calls for one metric name, so tests ignore unrelated metrics."""
        return [c for c in self.calls if c.name == name and kind in (None, c.kind)]

    def clear(self) -> None:
        """Forget earlier calls between test phases."""
        self.calls.clear()

    def _record(self, kind: str, name: str, value: float, tags: Tags | None) -> None:
        self.calls.append(MetricCall(kind, name, value, _stringify_tags(tags)))


def create_metrics(host: str | None, port: int, prefix: str, tags_enabled: bool) -> Metrics | NullMetrics:
    """Build the configured sink (docs/operations.md#settings: an empty host disables metrics).

    The host is resolved once, here. If that fails the node still starts,
    without metrics, because losing metrics is better than refusing pushes.
    """
    if not host:
        return NullMetrics()
    try:
        sock = StatsdSocket(host, port)
    except (OSError, UnicodeError) as exc:
        logging.getLogger("autopush.metrics").warning(
            "statsd host %r:%s unusable (%s); metrics disabled", host, port, exc
        )
        return NullMetrics()
    return Metrics(sock, prefix, tags_enabled)
