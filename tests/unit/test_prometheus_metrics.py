"""The Prometheus sink: statsd names and tags as Prometheus metrics and labels (docs/operations.md#prometheus)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from autopush_flask.config import CONNECTION, ENDPOINT, load_settings
from autopush_flask.metrics import (
    MAX_LABEL_VALUE_CHARS,
    MAX_SERIES_PER_METRIC,
    MULTIPROC_VARIABLE,
    OVERFLOW_LABEL_VALUE,
    FanOutMetrics,
    Metrics,
    MultiprocessExposition,
    NullMetrics,
    PrometheusMetrics,
    RecordingMetrics,
    build_metrics,
    labels_of,
    prometheus_name,
)
from tests.conftest import TEST_CRYPTO_KEY


def value(sink: PrometheusMetrics, name: str, **labels: str) -> float | None:
    return sink.prometheus_registry.get_sample_value(name, labels)


def test_counters_are_prefixed_totals_with_every_catalogue_label() -> None:
    sink = PrometheusMetrics("autoendpoint")
    sink.increment("notification.received")
    sink.increment("notification.received")
    sink.increment("notification.message_data", 120, tags={"destination": "Direct"})
    sink.increment("notification.message.success", tags={"destination": "Direct", "router": "webpush", "vapid": True})
    assert value(sink, "autoendpoint_notification_received_total") == 2
    assert value(sink, "autoendpoint_notification_message_data_total", destination="Direct") == 120
    labels = {"destination": "Direct", "router": "webpush", "vapid": "True"}  # booleans as statsd writes them
    assert value(sink, "autoendpoint_notification_message_success_total", **labels) == 1


def test_timers_are_histograms_in_seconds() -> None:
    sink = PrometheusMetrics("autoconnect")
    sink.timing("ua.connection.lifespan", 1500)
    with sink.timer("notification.storage.time"):
        pass
    assert value(sink, "autoconnect_ua_connection_lifespan_seconds_sum") == 1.5
    assert value(sink, "autoconnect_ua_connection_lifespan_seconds_count") == 1
    assert value(sink, "autoconnect_ua_connection_lifespan_seconds_bucket", le="2.5") == 1
    assert value(sink, "autoconnect_ua_connection_lifespan_seconds_bucket", le="1.0") == 0
    assert value(sink, "autoconnect_notification_storage_time_seconds_count") == 1


def test_gauges_and_histograms_keep_their_kind() -> None:
    sink = PrometheusMetrics("p")
    sink.gauge("some.gauge", -3)
    sink.histogram("some.sizes", 7)
    assert value(sink, "p_some_gauge") == -3
    assert value(sink, "p_some_sizes_sum") == 7 and value(sink, "p_some_sizes_bucket", le="10.0") == 1


def test_missing_tags_are_empty_and_unknown_tags_are_dropped(caplog: pytest.LogCaptureFixture) -> None:
    sink = PrometheusMetrics("autoendpoint")
    with caplog.at_level(logging.DEBUG, logger="autopush.metrics"):
        sink.increment("ua.command.register")  # the WebSocket's register: no user_agent, no host
        sink.increment("ua.command.register", tags={"host": "h", "user_agent": "ua", "shoe_size": 44})
    assert value(sink, "autoendpoint_ua_command_register_total", host="", user_agent="") == 1
    assert value(sink, "autoendpoint_ua_command_register_total", host="h", user_agent="ua") == 1
    assert "shoe_size" in caplog.text


def test_metrics_outside_the_catalogue_and_clashes_never_raise() -> None:
    sink = PrometheusMetrics("p")
    sink.increment("not.catalogued", tags={"any": "thing"})
    sink.gauge("not.catalogued", 1)  # p_not_catalogued is taken by the counter: dropped
    sink.increment("notification.received", -1)  # counters only go up: dropped
    sink.timing("ua.connection.lifespan", float("nan"))
    sink.increment("ua.command.hello", tags=None)
    assert value(sink, "p_not_catalogued_total") == 1
    assert value(sink, "p_not_catalogued") is None
    assert value(sink, "p_ua_command_hello_total", uaid="") == 1


def test_variable_names_are_sanitised_and_share_their_entry() -> None:
    sink = PrometheusMetrics("auto.endpoint")
    sink.increment("updates.notification.encoding.aes128gcm")
    sink.increment("updates.notification.encoding.weird-enc/ü")
    assert value(sink, "auto_endpoint_updates_notification_encoding_aes128gcm_total") == 1
    assert value(sink, "auto_endpoint_updates_notification_encoding_weird_enc___total") == 1
    assert labels_of("updates.notification.encoding.x") == ()
    assert labels_of("updates.notification.encoding.") is None
    assert prometheus_name("9lives.x") == "_9lives_x"


def test_label_sets_are_bounded() -> None:
    sink = PrometheusMetrics("autoendpoint")
    for n in range(MAX_SERIES_PER_METRIC + 5):
        sink.increment("ua.connection.check", tags={"user_agent": f"agent {n}", "host": "h" * 500})
    name = "autoendpoint_ua_connection_check_total"
    assert value(sink, name, user_agent=OVERFLOW_LABEL_VALUE, host=OVERFLOW_LABEL_VALUE) == 5
    assert value(sink, name, user_agent="agent 0", host="h" * MAX_LABEL_VALUE_CHARS) == 1
    sink.increment("ua.connection.check", tags={"user_agent": "agent 0", "host": "h" * 500})  # a known set still counts
    assert value(sink, name, user_agent="agent 0", host="h" * MAX_LABEL_VALUE_CHARS) == 2


def test_fan_out_hands_every_call_to_each_sink() -> None:
    recording, prometheus = RecordingMetrics(), PrometheusMetrics("p")
    both = FanOutMetrics(recording, prometheus)
    both.increment("notification.received")
    with both.timer("ua.connection.lifespan"):
        pass
    both.gauge("g", 2)
    both.histogram("h", 3)
    both.close()
    assert [c.kind for c in recording.calls] == ["increment", "timing", "gauge", "histogram"]
    assert value(prometheus, "p_notification_received_total") == 1
    assert both.prometheus_registry is prometheus.prometheus_registry


def settings(node_type: str, **variables: str):
    return load_settings(node_type, {"AUTOPUSH_CRYPTO_KEYS": TEST_CRYPTO_KEY, **variables})


def test_the_setting_picks_the_sinks() -> None:
    statsd = build_metrics(settings(ENDPOINT, AUTOPUSH_STATSD_HOST="127.0.0.1"))
    assert isinstance(statsd, Metrics)
    statsd.close()
    assert isinstance(build_metrics(settings(CONNECTION, AUTOPUSH_METRICS="prometheus")), PrometheusMetrics)
    both = build_metrics(settings(CONNECTION, AUTOPUSH_METRICS="both", AUTOPUSH_STATSD_HOST=""))
    assert isinstance(both, FanOutMetrics) and isinstance(both.sinks[0], NullMetrics)
    assert both.prometheus_registry is not None


def test_metrics_settings_defaults_and_validation() -> None:
    endpoint, connection = settings(ENDPOINT), settings(CONNECTION)
    assert (endpoint.metrics, endpoint.metrics_port, endpoint.metrics_bind) == ("statsd", 9102, "127.0.0.1")
    assert (connection.metrics_port, connection.metrics_bind) == (9103, "127.0.0.1")
    with pytest.raises(Exception, match="AUTOPUSH_METRICS"):
        settings(ENDPOINT, AUTOPUSH_METRICS="graphite")
    with pytest.raises(Exception, match="AUTOPUSH_METRICS_PORT"):
        settings(ENDPOINT, AUTOPUSH_METRICS_PORT="0")


def test_the_multiprocess_directory_is_fresh_or_emptied(tmp_path: Path) -> None:
    environ: dict[str, str] = {}
    own = MultiprocessExposition.prepare(environ)
    try:
        assert own.owned and environ[MULTIPROC_VARIABLE] == own.directory and os.path.isdir(own.directory)
        # A re-executed master (USR2) inherits the directory: it takes a new one, never empties the old.
        (Path(own.directory) / "counter_1.db").write_bytes(b"x")
        again = MultiprocessExposition.prepare(environ)
        assert again.owned and again.directory != own.directory
        assert (Path(own.directory) / "counter_1.db").exists()
        again.stop()
        assert not os.path.exists(again.directory)
    finally:
        own.stop()
    given = tmp_path / "prom"
    given.mkdir()
    (given / "counter_99.db").write_bytes(b"x")
    (given / "keep.txt").write_text("not ours")
    operator = MultiprocessExposition.prepare({MULTIPROC_VARIABLE: str(given)})
    operator.stop()
    assert not operator.owned and sorted(p.name for p in given.iterdir()) == ["keep.txt"]
