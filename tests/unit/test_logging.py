"""Log lines parsed back as the log pipeline would read them (§10.2)."""

from __future__ import annotations

import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator

import pytest

from autopush_flask.logging import (
    SEVERITY,
    log_fields,
    redact_authorization,
    setup_logging,
    syslog_severity,
)

KEYS = {"Timestamp", "Type", "Logger", "Hostname", "EnvVersion", "Severity", "Pid", "Fields"}


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    logger = logging.getLogger("autopush")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:] = saved[0]
    logger.setLevel(saved[1])
    logger.propagate = saved[2]


def _json_lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def _setup(stream: io.StringIO, **kwargs) -> logging.Logger:
    kwargs.setdefault("hostname", "node-1")
    return setup_logging("autoendpoint", "1.2.3", stream=stream, **kwargs)


def test_json_line_shape():
    stream = io.StringIO()
    logger = _setup(stream)
    before = time.time_ns()
    logger.info("Successful delivery", extra=log_fields(uaid_hash="abc", channel_id="chid"))
    (entry,) = _json_lines(stream)
    assert set(entry) == KEYS
    assert entry["Type"] == "autoendpoint:log"
    assert entry["Logger"] == "autoendpoint-1.2.3"
    assert entry["Hostname"] == "node-1"
    assert entry["EnvVersion"] == "2.0"
    assert entry["Severity"] == 6
    assert entry["Pid"] == os.getpid()
    assert isinstance(entry["Timestamp"], int)
    assert abs(entry["Timestamp"] - before) < 1_000_000_000
    assert entry["Fields"] == {"message": "Successful delivery", "uaid_hash": "abc", "channel_id": "chid"}


def test_child_loggers_use_the_handler():
    stream = io.StringIO()
    _setup(stream, level="debug")
    logging.getLogger("autopush.endpoint").debug("Ack %s", "x")
    (entry,) = _json_lines(stream)
    assert entry["Fields"] == {"message": "Ack x"}
    assert entry["Severity"] == 7


@pytest.mark.parametrize(
    "method, severity",
    [("debug", 7), ("info", 6), ("warning", 4), ("error", 3), ("critical", 2)],
)
def test_severity_numbers(method, severity):
    stream = io.StringIO()
    logger = _setup(stream, level="debug")
    getattr(logger, method)("m")
    assert _json_lines(stream)[0]["Severity"] == severity


def test_syslog_severity_for_custom_levels():
    assert syslog_severity(logging.INFO + 5) == 6
    assert syslog_severity(logging.ERROR + 1) == 3
    assert syslog_severity(5) == 7
    assert dict(SEVERITY)[logging.WARNING] == 4


def test_level_filtering():
    stream = io.StringIO()
    logger = _setup(stream, level="info")
    logger.debug("hidden")
    logger.info("shown")
    assert [e["Fields"]["message"] for e in _json_lines(stream)] == ["shown"]


def test_invalid_level_rejected():
    with pytest.raises(ValueError, match="log level"):
        _setup(io.StringIO(), level="verbose")


def test_field_conversion_and_flattening():
    stream = io.StringIO()
    logger = _setup(stream)
    fields = {
        "code": 200,
        "ok": True,
        "none": None,
        "ratio": 0.5,
        "tags": ["a", 1],
        "obj": object,
        "mixed": [{"a": 1}],
        "request": {"uri": "/wpush/v1/x", "size": 10},
        "message": "must not replace the real message",
    }
    logger.info("Request timings", extra=log_fields(**fields))
    got = _json_lines(stream)[0]["Fields"]
    assert got == {
        "message": "Request timings",
        "code": 200,
        "ok": True,
        "none": None,
        "ratio": 0.5,
        "tags": ["a", 1],
        "obj": str(object),
        "mixed": str([{"a": 1}]),
        "request.uri": "/wpush/v1/x",
        "request.size": 10,
    }


def test_exception_adds_traceback_and_error():
    stream = io.StringIO()
    logger = _setup(stream)
    try:
        raise KeyError("gone")
    except KeyError:
        logger.exception("Unhandled", extra=log_fields(uaid_hash="u"))
    (entry,) = _json_lines(stream)
    assert entry["Severity"] == 3
    fields = entry["Fields"]
    assert fields["error"] == "KeyError('gone')"
    assert fields["traceback"].startswith("Traceback (most recent call last):")
    assert "raise KeyError" in fields["traceback"]
    assert fields["uaid_hash"] == "u"


def test_setup_twice_does_not_duplicate():
    first, second = io.StringIO(), io.StringIO()
    _setup(first)
    logger = _setup(second)
    logger.info("once")
    assert first.getvalue() == ""
    assert len(_json_lines(second)) == 1
    assert logger.propagate is False


def test_foreign_handlers_are_kept():
    logger = logging.getLogger("autopush")
    earlier = list(logger.handlers)
    for handler in earlier:  # start clean: other tests configured this logger too
        logger.removeHandler(handler)
    foreign = logging.NullHandler()
    logger.addHandler(foreign)
    try:
        _setup(io.StringIO())
        _setup(io.StringIO())
        assert foreign in logger.handlers
        assert len(logger.handlers) == 2
    finally:
        logger.removeHandler(foreign)


def test_human_line():
    stream = io.StringIO()
    logger = _setup(stream, human=True)
    logger.info("Successful delivery", extra=log_fields(uaid_hash="abc", channel_id="c1", ua="Fire fox"))
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO autoendpoint: "
        r'Successful delivery uaid_hash=abc channel_id=c1 ua="Fire fox"\n',
        line,
    )


def test_human_exception_has_traceback_after_line():
    stream = io.StringIO()
    logger = _setup(stream, human=True)
    try:
        1 / 0
    except ZeroDivisionError:
        logger.exception("Boom")
    first, *rest = stream.getvalue().splitlines()
    assert first.endswith("""ERROR autoendpoint: Boom error="ZeroDivisionError('division by zero')\"""")
    assert rest[0] == "Traceback (most recent call last):"


def test_log_fields():
    assert log_fields(a=1, b="x") == {"fields": {"a": 1, "b": "x"}}


@pytest.mark.parametrize(
    "value, expected",
    [
        ("vapid t=eyJ0eXAiOiJKV1Qi.abc, k=BCDEF", "vapid t=eyJ0eX…"),
        ("WebPush eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9", "WebPush eyJ0eXAi…"),
        ("Bearer   abc", "Bearer abc…"),
        ("sometoken1234567", "sometoke…"),
        ("", ""),
    ],
)
def test_redact_authorization(value, expected):
    assert redact_authorization(value) == expected
