"""Log lines parsed back as the log pipeline would read them (docs/operations.md#logs)."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Iterator

import pytest

from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.logging import (
    SEVERITY,
    Redactor,
    log_fields,
    redact_authorization,
    setup_logging,
    syslog_severity,
)

# Two nodes of one deployment share these keys; another deployment has its own.
SHARED_KEYS = CryptoKeys([CryptoKeys.generate_key()])
OTHER_KEYS = CryptoKeys([CryptoKeys.generate_key()])
UAID = uuid.UUID("5f1b2c3d-4e5f-4a6b-8c7d-9e0f1a2b3c4d")
CONTROL = "\x1b[31mred\x1b[0m\r\nFAKE 2026 ERROR forged\x00\x07\x7f\x85\u2028\u202e"


def expected_uaid_hash(keys: CryptoKeys, uaid: uuid.UUID) -> str:
    """What operators compute: HMAC-SHA256(HKDF subkey "autopush-flask log uaid hash v1", 32-hex UAID)."""
    key = keys.derive(b"autopush-flask log uaid hash v1")[0]
    return hmac.new(key, uaid.hex.encode(), hashlib.sha256).hexdigest()[:16]

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
    kwargs.setdefault("crypto_keys", SHARED_KEYS)
    return setup_logging("autoendpoint", "1.2.3", stream=stream, **kwargs)


def test_json_line_shape():
    stream = io.StringIO()
    logger = _setup(stream)
    before = time.time_ns()
    logger.info("Successful delivery", extra=log_fields(uaid_hash=UAID.hex, channel_id="chid"))
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
    assert entry["Fields"] == {
        "message": "Successful delivery", "uaid_hash": expected_uaid_hash(SHARED_KEYS, UAID), "channel_id": "chid",
    }


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
        logger.exception("Unhandled", extra=log_fields(uaid_hash=UAID.hex))
    (entry,) = _json_lines(stream)
    assert entry["Severity"] == 3
    fields = entry["Fields"]
    assert fields["error"] == "KeyError('gone')"
    assert fields["traceback"].startswith("Traceback (most recent call last):")
    assert "raise KeyError" in fields["traceback"]
    assert fields["uaid_hash"] == expected_uaid_hash(SHARED_KEYS, UAID)


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
    logger.info("Successful delivery", extra=log_fields(uaid_hash=UAID.hex, channel_id="c1", ua="Fire fox"))
    line = stream.getvalue()
    assert line.count("\n") == 1
    assert re.fullmatch(
        r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} INFO autoendpoint: "
        rf'Successful delivery uaid_hash={expected_uaid_hash(SHARED_KEYS, UAID)} channel_id=c1 ua="Fire fox"\n',
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


# ---- capabilities never logged whole ------------------------------------------------------


def _fields_of(logger_call, **kwargs) -> dict:
    """Log one INFO line with ``logger_call(logger)`` on a fresh JSON logger; its Fields."""
    stream = io.StringIO()
    logger_call(_setup(stream, **kwargs))
    (entry,) = _json_lines(stream)
    return entry["Fields"]


def test_uaid_hash_is_keyed_and_the_same_on_every_node_sharing_the_keys():
    """Two nodes (two set-ups) with the same keys give the value an operator computes;
    the dashed form is the same UAID; another deployment's keys give another value."""
    def log(logger: logging.Logger, uaid: str) -> None:
        logger.info("Register", extra=log_fields(uaid_hash=uaid))

    node_a = _fields_of(lambda logger: log(logger, UAID.hex))["uaid_hash"]
    node_b = _fields_of(lambda logger: log(logger, str(UAID)))["uaid_hash"]
    other = _fields_of(lambda logger: log(logger, UAID.hex), crypto_keys=OTHER_KEYS)["uaid_hash"]
    assert node_a == node_b == expected_uaid_hash(SHARED_KEYS, UAID)
    assert other == expected_uaid_hash(OTHER_KEYS, UAID) != node_a
    assert re.fullmatch(r"[0-9a-f]{16}", node_a)


def test_raw_uaid_only_at_debug():
    def log(logger: logging.Logger) -> None:
        logger.info("Session", extra=log_fields(uaid_hash=UAID.hex, error=f"no row for {UAID.hex}"))

    info = _fields_of(log, level="info")
    debug = _fields_of(log, level="debug")
    assert UAID.hex not in json.dumps(info)
    assert info["error"] == f"no row for uaid#{expected_uaid_hash(SHARED_KEYS, UAID)}"
    assert debug["uaid"] == UAID.hex
    assert debug["uaid_hash"] == info["uaid_hash"]


def test_empty_uaid_hash_stays_empty():
    assert _fields_of(lambda logger: logger.info("Session", extra=log_fields(uaid_hash="")))["uaid_hash"] == ""


def test_endpoint_urls_keep_their_route_but_not_their_token():
    endpoint = make_endpoint_url(SHARED_KEYS, "https://push.example.com", UAID, uuid.uuid4(), None)
    token = endpoint.rsplit("/", 1)[1]
    got = _fields_of(lambda logger: logger.info("Register", extra=log_fields(endpoint=endpoint)))["endpoint"]
    assert token not in got and token[6:30] not in got
    assert re.fullmatch(r"https://push\.example\.com/wpush/v1/gAAAAA…#[0-9a-f]{8}", got), got
    again = _fields_of(lambda logger: logger.info("Register", extra=log_fields(endpoint=endpoint)))["endpoint"]
    assert again == got  # lines about one endpoint correlate


@pytest.mark.parametrize(
    ("field", "value", "secret", "shown"),
    [
        ("url", f"http://10.0.0.5:8081/push/{UAID.hex}", UAID.hex, r"http://10\.0\.0\.5:8081/push/uaid#{h}"),
        ("url", f"http://10.0.0.5:8081/notif/{UAID.hex}/1700000000",
         UAID.hex, r"http://10\.0\.0\.5:8081/notif/uaid#{h}/1700000000"),
        ("location", "https://push.example.com/m/gAAAAABmZXJuZXQtbWVzc2FnZS1pZC1mb3ItdGVzdHM=",
         "ZXJuZXQtbWVzc2FnZS1pZC1mb3ItdGVzdHM", r"https://push\.example\.com/m/gAAAAA…#[0-9a-f]{8}"),
        ("message_id", "gAAAAABmZXJuZXQtbWVzc2FnZS1pZC1mb3ItdGVzdHM=", "ZXJuZXQtbWVzc2FnZS1pZC1mb3ItdGVzdHM",
         r"gAAAAA…#[0-9a-f]{8}"),
        ("router_token", "cYmnoKsd0w4:APA91bHqwertyuiopasdfghjklzxcvbnm1234567890", "APA91bHqwertyuiop",
         r"cYmnoK…#[0-9a-f]{8}"),
        ("token", "a" * 16 + "0123456789abcdef" * 3, "0123456789abcdef", r"aaaaaa…#[0-9a-f]{8}"),
        ("router_token", "opaque-bridge-secret-value", "bridge-secret", r"opaque…#[0-9a-f]{8}"),
        ("authorization", "vapid t=eyJ0eXAiOiJKV1QiLCJhbGciOiJFUzI1NiJ9.eyJhdWQiOiJodHRwcyJ9.c2ln, k=BPUB",
         "eyJhdWQiOiJodHRwcyJ9", r"vapid t=eyJ0eX…"),
    ],
    ids=["node-push-url", "node-notif-url", "location", "message-id", "fcm-token", "apns-token",
         "opaque-token", "authorization"],
)
def test_capability_fields_are_cut(field, value, secret, shown):
    got = _fields_of(lambda logger: logger.info("x", extra=log_fields(**{field: value})))[field]
    assert secret not in got
    assert re.fullmatch(shown.replace("{h}", expected_uaid_hash(SHARED_KEYS, UAID)), got), got


def test_capabilities_in_free_text_are_cut():
    """Errors from HTTP clients quote URLs; tracebacks quote messages: all pass the same rules."""
    endpoint = make_endpoint_url(SHARED_KEYS, "https://push.example.com", UAID, uuid.uuid4(), None)
    token = endpoint.rsplit("/", 1)[1]
    apns = "0123456789abcdef" * 4
    jwt_payload = "eyJzdWIiOiJtYWlsdG86YUBleGFtcGxlLmNvbSJ9"
    error = (f"HTTPConnectionPool(host='10.0.0.5', port=8081): Max retries exceeded with url: /push/{UAID.hex} "
             f"| token {token} | device {apns} | WebPush eyJhbGciOiJFUzI1NiJ9.{jwt_payload}.sig "
             f"| Bearer ya29.a0AfB_byC-access-token-value-1234")

    def log(logger: logging.Logger) -> None:
        try:
            raise RuntimeError(error)
        except RuntimeError:
            logger.exception(f"failed for {UAID.hex}", extra=log_fields(error=error, notes=[token, "ok"]))

    fields = _fields_of(log)
    text = json.dumps(fields)
    for secret in (UAID.hex, token[6:], apns, jwt_payload, "access-token-value"):
        assert secret not in text, secret
    assert f"/push/uaid#{expected_uaid_hash(SHARED_KEYS, UAID)}" in fields["error"]
    assert fields["message"] == f"failed for uaid#{expected_uaid_hash(SHARED_KEYS, UAID)}"
    assert fields["notes"][1] == "ok"
    assert "RuntimeError" in fields["traceback"]


def test_harmless_values_are_untouched():
    fields = {"channel_id": str(UAID), "request.uri": "/wpush/v1/x", "node_id": "http://10.0.0.5:8081",
              "table": "message_2026_11", "user_agent": "Mozilla/5.0 (X11; Linux x86_64; rv:133.0) Firefox/133.0"}
    got = _fields_of(lambda logger: logger.info("x", extra=log_fields(**{"request": {"uri": "/wpush/v1/x"}},
                                                                    **{k: v for k, v in fields.items() if "." not in k})))
    assert got == {"message": "x", **fields}


# ---- control characters --------------------------------------------------------------


def test_human_format_escapes_control_characters():
    """A User-Agent or URL path with ANSI escapes or newlines cannot forge or colour lines."""
    stream = io.StringIO()
    logger = _setup(stream, human=True)
    logger.info(f"path {CONTROL}", extra=log_fields(user_agent=CONTROL, plain="\x1b[1m"))
    line = stream.getvalue()
    assert line.count("\n") == 1 and line.endswith("\n")
    body = line[:-1]
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202e]", body), body
    assert r"path \u001b[31mred\u001b[0m\r\nFAKE 2026 ERROR forged\u0000\u0007\u007f\u0085\u2028\u202e" in body
    assert r'user_agent="\u001b[31mred\u001b[0m\r\nFAKE 2026 ERROR forged' in body
    assert r'plain="\u001b[1m"' in body


def test_human_traceback_keeps_its_lines_but_escapes_the_rest():
    stream = io.StringIO()
    logger = _setup(stream, human=True)
    try:
        raise ValueError(CONTROL)
    except ValueError:
        logger.exception("Boom")
    lines = stream.getvalue().splitlines()
    assert lines[1] == "Traceback (most recent call last):"
    assert all(not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u202e]", line) for line in lines)
    assert lines[-1].startswith(r"ValueError: \u001b[31mred")


def test_human_format_survives_a_lone_surrogate():
    stream = io.StringIO()
    _setup(stream, human=True).info("x", extra=log_fields(value="a\ud800b"))
    assert stream.getvalue().rstrip("\n").endswith(r'value="a\ud800b"')
    stream.getvalue().encode("utf-8")  # writable to a UTF-8 stream


def test_json_format_escapes_control_characters():
    stream = io.StringIO()
    _setup(stream).info(CONTROL, extra=log_fields(user_agent=CONTROL))
    raw = stream.getvalue()
    assert raw.count("\n") == 1
    assert not re.search(r"[\x00-\x1f\x7f-\x9f\u2028\u202e]", raw[:-1])
    assert _json_lines(stream)[0]["Fields"]["user_agent"] == CONTROL


def test_scrubbing_hostile_text_stays_linear():
    """64 KiB strings crafted against the token patterns: ≈ 0.1 s for all seven here.
    Without the patterns' start-of-run anchors (each try rescanning the rest of a run
    of token characters) four of them took 9–18 s each, 55 s in all."""
    redactor = Redactor(b"k" * 32)
    size = 64 * 1024
    hostile = ["z" * size, "eyJ" + "z" * size + ".", "eyJ" * (size // 3), ("z" * 12 + ":APA9") * (size // 17),
               ("0" * 31 + "g") * (size // 32), "/m/" * (size // 3), ("/push/" + "z" * 15) * (size // 21)]
    started = time.perf_counter()
    for text in hostile:
        assert redactor.scrub(text) == text  # none of it is a capability
    assert time.perf_counter() - started < 1.0


def test_gunicorn_lines_get_the_same_redaction_and_escaping():
    """gunicorn logs a refused request line verbatim (repr) and a crashed request's URI."""
    endpoint = make_endpoint_url(SHARED_KEYS, "https://push.example.com", UAID, uuid.uuid4(), None)
    token = endpoint.rsplit("/", 1)[1]
    _setup(io.StringIO())
    server = logging.getLogger("gunicorn.error")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    server.addHandler(handler)
    try:
        server.warning("Invalid request from ip=%s: %s", "127.0.0.1",
                       f"Invalid HTTP request line: 'POST /wpush/v1/{token}\x1b[2J HTTP/1.1'")
        server.error("Error handling request %s %s", "POST", f"/wpush/v1/{token}")
    finally:
        server.removeHandler(handler)
    text = stream.getvalue()
    assert token[6:] not in text and "\x1b" not in text
    assert text.count("/wpush/v1/gAAAAA…#") == 2 and r"\u001b[2J" in text
