"""Metrics (docs/operations.md#metrics): statsd with optional DogStatsD tags, Prometheus, or both.

Interchangeable sinks share one interface so callers never branch on
whether or where metrics are configured:

* ``Metrics`` sends statsd lines as UDP datagrams (``StatsdSocket``);
* ``NullMetrics`` drops everything (``AUTOPUSH_STATSD_HOST`` empty);
* ``PrometheusMetrics`` keeps Prometheus counters, histograms and gauges,
  named and labelled from ``CATALOGUE`` (``AUTOPUSH_METRICS=prometheus``);
* ``FanOutMetrics`` hands every call to several sinks (``AUTOPUSH_METRICS=both``);
* ``RecordingMetrics`` keeps calls in memory for unit tests.

Nothing is created at import time; ``build_metrics`` builds a node's sink.
``prometheus_client`` is imported only when a Prometheus sink is built:
whether it keeps values in per-process files (the endpoint node's
multiprocess mode) is decided at its import, from ``PROMETHEUS_MULTIPROC_DIR``.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from autopush_flask.config import Settings

Tags = Mapping[str, Any]
log = logging.getLogger("autopush.metrics")

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


# --------------------------------------------------------------------------
# Prometheus (docs/operations.md#metrics)
# --------------------------------------------------------------------------

# Every metric the code emits, with the tag keys it may carry: Prometheus
# gives each metric a fixed set of label names, so they are declared here,
# once. ``{…}`` stands for the variable part of a name built at run time.
# tests/docs/test_prometheus_reference.py checks this against the code.
CATALOGUE: dict[str, tuple[str, ...]] = {
    "database.retry": ("operation",),
    "delivery.latency": ("source", "sender"),
    "delivery.milestone": ("milestone", "code", "sender"),
    "database.unknown_sort_key": (),
    "error.node.connect": (),
    "error.node.timeout": (),
    "megaphone.updater.error": ("reason",),
    "megaphone.updater.ok": (),
    "notification.auth": ("scheme", "vapid"),
    "notification.auth.error": ("error",),
    "notification.auth.ok": (),
    "notification.bridge.error": ("app_id", "errno", "error", "platform", "reason"),
    "notification.bridge.sent": ("app_id", "platform"),
    "notification.direct.delivery_status": ("status",),
    "notification.message.deleted": ("topic",),
    "notification.message.expired": (),
    "notification.message.retrieved": ("topic",),
    "notification.message.stored": ("topic",),
    "notification.message.success": ("destination", "router", "vapid"),
    "notification.message_data": ("destination",),
    "notification.publisher.refused": ("reason",),
    "notification.received": (),
    "notification.storage.time": (),
    "router.auth.error": ("reason",),
    "router.request.rejected": ("reason",),
    "storage.retry.given_up": ("operation", "reason"),
    "storage.retry.queued": ("operation",),
    "ua.already_connected": (),
    "ua.command.ack": (),
    "ua.command.hello": ("uaid",),
    "ua.command.nack": ("code",),
    "ua.command.register": ("host", "user_agent"),
    "ua.command.unregister": ("code", "host", "user_agent"),
    "ua.command.urgency": ("min",),
    "ua.connection.check": ("host", "user_agent"),
    "ua.connection.lifespan": (),
    "ua.expiration": ("reason",),
    "ua.message_data": ("source",),
    "ua.notification.ack": ("code",),
    "ua.notification.sent": ("source", "topic"),
    "ua.notification_check": (),
    "updates.client.deleted": (),
    "updates.client.host_gone": (),
    "updates.drop_user": ("errno",),
    "updates.notification.encoding.{…}": (),
    "updates.vapid.draft01": (),
    "updates.vapid.draft02": (),
}
VARIABLE_PART = "{…}"
# Some tag values come from requests (``user_agent``, ``host`` of the bridge
# registration API): past this many label sets a metric puts new ones in one
# overflow series, so hostile input cannot grow a worker's memory or the
# scrape without bound. Values are cut to a bounded length too.
MAX_SERIES_PER_METRIC = 1000
MAX_LABEL_VALUE_CHARS = 128
OVERFLOW_LABEL_VALUE = "_overflow"
# statsd timers are milliseconds; Prometheus histograms of them are seconds,
# from 5 ms (a storage call) to a week (the age of a stored message).
SECONDS_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 14400.0, 86400.0, 604800.0,
)  # fmt: skip
# ``histogram`` values have no unit (sizes, counts).
VALUE_BUCKETS = (1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 100000.0)
MULTIPROC_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"
# mkdtemp's prefix for the directory the endpoint master creates; a directory
# named so in the environment was made by an earlier master (a USR2 re-exec)
# and is never emptied or reused by this one.
OWN_DIRECTORY_PREFIX = "autopush-prometheus-"
_NOT_IN_NAME = re.compile(r"[^a-zA-Z0-9_]")


def prometheus_name(text: str) -> str:
    """A statsd name or prefix as a Prometheus name token: ``.`` and anything else invalid become ``_``."""
    name = _NOT_IN_NAME.sub("_", text)
    return f"_{name}" if name[:1].isdigit() else name


def labels_of(name: str, catalogue: Mapping[str, tuple[str, ...]] = CATALOGUE) -> tuple[str, ...] | None:
    """The catalogue's tag keys for a statsd name (matching ``{…}`` entries too); None when it has none."""
    if name in catalogue:
        return catalogue[name]
    for entry, keys in catalogue.items():
        head, variable, tail = entry.partition(VARIABLE_PART)
        if variable and name.startswith(head) and name.endswith(tail) and len(name) > len(head) + len(tail):
            return keys
    return None


class _Family(NamedTuple):
    metric: Any  # a prometheus_client Counter, Histogram or Gauge
    labels: tuple[str, ...]
    series: set[tuple[str, ...]]


class PrometheusMetrics(_TimerMixin):
    """Prometheus sink: the statsd names and tags as Prometheus metrics and labels.

    ``<prefix>_<name, '.' → '_'>``: counters end in ``_total``, timers become
    histograms in seconds (``_seconds``), histograms stay histograms, gauges
    gauges. Labels are the catalogue's tag keys; a tag absent from a call is
    ``""``, a key the catalogue does not list is dropped. Each metric is
    created on its first use, in ``registry`` (a fresh one by default). In
    the endpoint node's multiprocess mode the values live in per-process
    files that the master aggregates (``MultiprocessExposition``).
    """

    def __init__(self, prefix: str, registry: Any = None, catalogue: Mapping[str, tuple[str, ...]] = CATALOGUE) -> None:
        from prometheus_client import CollectorRegistry

        self.prometheus_registry = registry if registry is not None else CollectorRegistry()
        self._prefix = f"{prometheus_name(prefix)}_" if prefix else ""
        self._catalogue = catalogue
        # (kind, statsd name) → family; None once creating it failed (a name clash).
        self._families: dict[tuple[str, str], _Family | None] = {}

    def increment(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        """A counter, ``<name>_total``."""
        self._observe("counter", name, value, tags)

    def timing(self, name: str, milliseconds: float, tags: Tags | None = None) -> None:
        """A histogram in seconds, ``<name>_seconds``."""
        self._observe("timer", name, milliseconds / 1000.0, tags)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        """A gauge (summed over the live workers of an endpoint node)."""
        self._observe("gauge", name, value, tags)

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        """A histogram of unitless values."""
        self._observe("histogram", name, value, tags)

    def close(self) -> None:
        """Nothing to release: the registry is served (or not) by its owner."""

    def _observe(self, kind: str, name: str, value: float, tags: Tags | None) -> None:
        try:
            family = self._family(kind, name)
            if family is None:
                return
            metric = family.metric.labels(*self._label_values(family, name, tags)) if family.labels else family.metric
            if kind == "counter":
                metric.inc(value)
            elif kind == "gauge":
                metric.set(value)
            else:
                metric.observe(value)
        except Exception:  # metrics must never break a request
            log.debug("prometheus %s %s failed", kind, name, exc_info=True)

    def _family(self, kind: str, name: str) -> _Family | None:
        key = (kind, name)
        if key in self._families:
            return self._families[key]
        labels = labels_of(name, self._catalogue)
        if labels is None:
            log.debug("metric %s is not in the catalogue: no labels", name)
            labels = ()
        try:
            metric = self._create(kind, self._prefix + prometheus_name(name), f"statsd {name}", labels)
        except ValueError:  # the name clashes with another metric's in the registry
            log.debug("prometheus metric for %s not created", name, exc_info=True)
            self._families[key] = None
            return None
        family = self._families[key] = _Family(metric, labels, set())
        return family

    def _create(self, kind: str, name: str, documentation: str, labels: tuple[str, ...]) -> Any:
        from prometheus_client import Counter, Gauge, Histogram

        registry = self.prometheus_registry
        if kind == "counter":
            return Counter(name, documentation, labels, registry=registry)
        if kind == "gauge":
            return Gauge(name, documentation, labels, registry=registry, multiprocess_mode="livesum")
        if kind == "timer":
            return Histogram(f"{name}_seconds", documentation, labels, registry=registry, buckets=SECONDS_BUCKETS)
        return Histogram(name, documentation, labels, registry=registry, buckets=VALUE_BUCKETS)

    def _label_values(self, family: _Family, name: str, tags: Tags | None) -> tuple[str, ...]:
        given = _stringify_tags(tags)
        extra = set(given) - set(family.labels)
        if extra:
            log.debug("metric %s: tags %s not in the catalogue, dropped", name, sorted(extra))
        values = tuple(given.get(label, "")[:MAX_LABEL_VALUE_CHARS] for label in family.labels)
        if values not in family.series:
            if len(family.series) >= MAX_SERIES_PER_METRIC:
                return (OVERFLOW_LABEL_VALUE,) * len(values)
            family.series.add(values)
        return values


class FanOutMetrics(_TimerMixin):
    """Hands every call to each sink (``AUTOPUSH_METRICS=both``); each sink keeps its own errors."""

    def __init__(self, *sinks: Any) -> None:
        self.sinks = sinks
        self.prometheus_registry = next(
            (sink.prometheus_registry for sink in sinks if getattr(sink, "prometheus_registry", None) is not None),
            None,
        )

    def increment(self, name: str, value: int = 1, tags: Tags | None = None) -> None:
        """To every sink."""
        for sink in self.sinks:
            sink.increment(name, value, tags)

    def timing(self, name: str, milliseconds: float, tags: Tags | None = None) -> None:
        """To every sink."""
        for sink in self.sinks:
            sink.timing(name, milliseconds, tags)

    def gauge(self, name: str, value: float, tags: Tags | None = None) -> None:
        """To every sink."""
        for sink in self.sinks:
            sink.gauge(name, value, tags)

    def histogram(self, name: str, value: float, tags: Tags | None = None) -> None:
        """To every sink."""
        for sink in self.sinks:
            sink.histogram(name, value, tags)

    def close(self) -> None:
        """Every sink's."""
        for sink in self.sinks:
            sink.close()


def prometheus_enabled(settings: Settings) -> bool:
    """Whether ``AUTOPUSH_METRICS`` asks for Prometheus (``prometheus`` or ``both``)."""
    return settings.metrics in ("prometheus", "both")


def build_metrics(settings: Settings) -> Any:
    """The node's sink for ``AUTOPUSH_METRICS`` (statsd, Prometheus or both; docs/operations.md#metrics).

    A connection worker keeps its own registry, served by its node on
    ``AUTOPUSH_METRICS_PORT + slot`` (``prometheus_app``); an endpoint
    worker writes to the multiprocess directory its gunicorn master set up
    and serves.
    """
    sinks: list[Any] = []
    if settings.metrics in ("statsd", "both"):
        sinks.append(
            create_metrics(settings.statsd_host, settings.statsd_port, settings.statsd_prefix, settings.statsd_tags)
        )
    if prometheus_enabled(settings):
        _choose_prometheus_mode(settings.node_type)
        sinks.append(PrometheusMetrics(settings.statsd_prefix))
    return sinks[0] if len(sinks) == 1 else FanOutMetrics(*sinks)


def _choose_prometheus_mode(node_type: str) -> None:
    """Before ``prometheus_client`` is first imported: per-process files for endpoint workers only.

    A connection worker serves its own values, so an inherited
    ``PROMETHEUS_MULTIPROC_DIR`` is dropped rather than filled with files
    nothing reads. An endpoint worker without one was not started by
    gunicorn.conf.py: it keeps metrics that nobody serves.
    """
    imported = "prometheus_client.values" in sys.modules
    if node_type != "endpoint":
        if not imported:
            os.environ.pop(MULTIPROC_VARIABLE, None)
    elif not os.environ.get(MULTIPROC_VARIABLE):
        log.warning("Prometheus metrics of this endpoint worker are not served: start it with -c gunicorn.conf.py")


def prometheus_app(sink: Any) -> Callable[..., Iterable[bytes]] | None:
    """A WSGI app serving the sink's Prometheus registry (text format), or None if it keeps none."""
    registry = getattr(sink, "prometheus_registry", None)
    if registry is None:
        return None
    from prometheus_client import make_wsgi_app

    return make_wsgi_app(registry)


class MultiprocessExposition:
    """The endpoint master's side of prometheus_client's multiprocess mode.

    ``prepare`` runs in the master before any worker forks (and before
    prometheus_client is imported anywhere): it picks the directory every
    worker writes its values to and exports it as ``PROMETHEUS_MULTIPROC_DIR``.
    ``serve`` answers scrapes with the sum over the directory's files from a
    thread of the master; ``worker_exited`` drops a dead worker's gauges;
    ``stop`` ends serving and removes a directory it created.
    """

    def __init__(self, directory: str, owned: bool) -> None:
        self.directory = directory
        self.owned = owned
        self._server: Any = None

    @classmethod
    def prepare(cls, environ: Any = os.environ) -> MultiprocessExposition:
        """The operator's ``PROMETHEUS_MULTIPROC_DIR`` emptied of an earlier run's files, else a new one.

        A new one is on tmpfs when there is one: workers write their values
        through mmap, and a disk-backed directory would add writeback to
        every request.
        """
        given = environ.get(MULTIPROC_VARIABLE)
        if given and not os.path.basename(os.path.normpath(given)).startswith(OWN_DIRECTORY_PREFIX):
            os.makedirs(given, exist_ok=True)
            for entry in os.listdir(given):
                if entry.endswith(".db"):
                    os.remove(os.path.join(given, entry))
            return cls(given, owned=False)
        directory = tempfile.mkdtemp(prefix=OWN_DIRECTORY_PREFIX, dir="/dev/shm" if os.path.isdir("/dev/shm") else None)
        environ[MULTIPROC_VARIABLE] = directory
        return cls(directory, owned=True)

    def serve(self, bind: str, port: int) -> None:
        """Serve the aggregated registry on ``bind:port`` from a daemon thread; raises ``OSError`` if it cannot bind."""
        from prometheus_client import CollectorRegistry, start_http_server
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=self.directory)
        self._server, _ = start_http_server(port, addr=bind, registry=registry)

    def in_worker(self) -> None:
        """In a freshly forked worker: close its copy of the master's listening socket."""
        if self._server is not None:
            self._server.socket.close()
            self._server = None

    def worker_exited(self, pid: int) -> None:
        """Forget a dead worker's live gauges; its counters and histograms stay in the sums."""
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid, self.directory)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self.owned:
            shutil.rmtree(self.directory, ignore_errors=True)
