"""Prometheus and statsd carry the same metrics and tags: the catalogue matches the code.

``autopush_flask.metrics.CATALOGUE`` gives each metric its fixed Prometheus
label names; a metric or tag added in code without it would lose its labels
(docs/operations.md#metrics), so the two are compared here, both ways.
"""

from __future__ import annotations

from autopush_flask.metrics import CATALOGUE
from tests.docs.code_reference import _metric_calls, _names, _tag_keys, metrics_in_code
from tests.docs.test_observability_reference import OPERATIONS


def test_every_metric_in_code_has_its_tags_in_the_catalogue() -> None:
    in_code = {name: sorted(tags) for name, tags in metrics_in_code().items()}
    catalogued = {name: sorted(tags) for name, tags in CATALOGUE.items()}
    assert {name: tags for name, tags in in_code.items() if catalogued.get(name) != tags} == {}


def test_every_catalogue_entry_is_emitted_by_the_code() -> None:
    in_code = {name: sorted(tags) for name, tags in metrics_in_code().items()}
    assert {name: sorted(tags) for name, tags in CATALOGUE.items() if in_code.get(name) != sorted(tags)} == {}


def test_tags_given_through_a_variable_or_a_helper_are_read() -> None:
    """Guards the comparison: tags built in a local dict or returned by a helper are not missed."""
    found = metrics_in_code()
    assert found["notification.message.success"] == {"destination", "router", "vapid"}  # tags = {...}
    assert {"user_agent", "host"} <= found["ua.connection.check"]  # tags=_client_tags()


def test_the_reader_resolves_each_way_of_passing_tags(tmp_path, monkeypatch) -> None:
    source = '''
NAME = "by.constant"

def _helper():
    return {"a": 1, "b": 2}

def emit(metrics, value):
    tags = {"c": 3}
    metrics.increment("literal", tags={"d": 4})
    metrics.increment("local", tags=tags)
    metrics.increment("helper", tags=_helper())
    metrics.increment(NAME, value, {"e": 5})
    metrics.timing(f"dynamic.{value}", 1)
'''
    package = tmp_path / "autopush_flask"
    package.mkdir()
    (package / "sample.py").write_text(source)
    monkeypatch.setattr("tests.docs.code_reference.PACKAGE", package)
    found = {}
    for call, constants, dicts in _metric_calls():
        for name in _names(call.args[0], constants):
            found.setdefault(name, set()).update(_tag_keys(call, dicts))
    assert found == {
        "literal": {"d"}, "local": {"c"}, "helper": {"a", "b"}, "by.constant": {"e"}, "dynamic.{…}": set(),
    }


def test_the_name_mapping_is_documented() -> None:
    metrics = OPERATIONS.split("### Metrics", 1)[1].split("\n## ", 1)[0]
    for text in ("AUTOPUSH_METRICS", "_total", "_seconds", "PROMETHEUS_MULTIPROC_DIR", "AUTOPUSH_METRICS_PORT"):
        assert text in metrics, text
