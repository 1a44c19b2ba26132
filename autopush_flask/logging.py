"""Log output in the mozlog JSON shape or as human-readable lines (§10.2).

This module shadows the stdlib name only as ``autopush_flask.logging``;
absolute imports mean ``import logging`` below is the standard library.

Call sites log through ``logging.getLogger("autopush.<area>")`` and pass
structured data with ``extra=log_fields(uaid_hash=..., code=...)``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

ROOT_LOGGER = "autopush"

# (minimum stdlib level, syslog severity), highest first. The original
# emitted only 3 and 5; §10.2 asks for real syslog numbers.
SEVERITY: tuple[tuple[int, int], ...] = (
    (logging.CRITICAL, 2),
    (logging.ERROR, 3),
    (logging.WARNING, 4),
    (logging.INFO, 6),
    (logging.DEBUG, 7),
)

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

_SCALARS = (str, int, float, bool, type(None))

# Marks handlers installed by setup_logging so a second call replaces them
# instead of duplicating every line, while leaving foreign handlers alone.
_OWN_HANDLER = "_autopush_handler"


def syslog_severity(levelno: int) -> int:
    """Map custom in-between levels to the next lower standard severity."""
    for threshold, severity in SEVERITY:
        if levelno >= threshold:
            return severity
    return 7


def log_fields(**fields: Any) -> dict[str, dict[str, Any]]:
    """Keep call sites short: ``log.info("Ack", extra=log_fields(code=200))``."""
    return {"fields": fields}


def redact_authorization(value: str) -> str:
    """Authorization headers must not be logged in full (§10.2); the scheme
    and a short prefix are still enough to correlate a client's requests."""
    parts = value.strip().split(None, 1)
    if not parts:
        return ""
    if len(parts) == 1:  # no scheme: treat it all as credentials
        return parts[0][:8] + "…"
    return f"{parts[0]} {parts[1][:8]}…"


def _field_value(value: Any) -> Any:
    """Log pipelines index flat scalar fields; anything richer becomes text."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # NaN/Infinity are not valid JSON
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, _SCALARS) for v in value):
        return list(value)
    return str(value)


def _flatten(fields: Mapping[str, Any]) -> dict[str, Any]:
    """One level of nesting (``request.uri``) covers the request-info dicts."""
    flat: dict[str, Any] = {}
    for key, value in fields.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                flat[f"{key}.{sub_key}"] = _field_value(sub_value)
        else:
            flat[str(key)] = _field_value(value)
    return flat


def _record_fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    """``message`` first and never overwritten; caller fields win over the
    exception-derived ``error`` so an explicit value is not lost."""
    fields: dict[str, Any] = {"message": record.getMessage()}
    extra = getattr(record, "fields", None)
    if isinstance(extra, Mapping):
        for key, value in _flatten(extra).items():
            fields.setdefault(key, value)
    if record.exc_info and record.exc_info[1] is not None:
        fields.setdefault("error", repr(record.exc_info[1]))
        fields["traceback"] = formatter.formatException(record.exc_info)
    if record.stack_info:
        fields["stack"] = formatter.formatStack(record.stack_info)
    return fields


class MozLogFormatter(logging.Formatter):
    """One JSON object per line, as the Mozilla log pipeline expects."""

    def __init__(self, component: str, version: str, hostname: str) -> None:
        super().__init__()
        self._type = f"{component}:log"
        self._logger = f"{component}-{version}"
        self._hostname = hostname

    def format(self, record: logging.LogRecord) -> str:
        """Serialise ``record``; ``default=str`` means a log call never fails."""
        entry = {
            "Timestamp": int(record.created * 1_000_000_000),
            "Type": self._type,
            "Logger": self._logger,
            "Hostname": self._hostname,
            "EnvVersion": "2.0",
            "Severity": syslog_severity(record.levelno),
            "Pid": os.getpid(),
            "Fields": _record_fields(record, self),
        }
        return json.dumps(entry, default=str)


def _human_value(value: Any) -> str:
    """Quote values with spaces so ``k=v`` pairs stay unambiguous."""
    if isinstance(value, str):
        text = value
    else:
        text = json.dumps(value, default=str, separators=(",", ":"))
    return json.dumps(text) if (not text or any(c.isspace() for c in text)) else text


class HumanFormatter(logging.Formatter):
    """``2026-11-21 04:35:00.123 INFO autoendpoint: message k=v`` (UTC)."""

    def __init__(self, component: str) -> None:
        super().__init__()
        self._component = component

    def format(self, record: logging.LogRecord) -> str:
        """Traceback, if any, goes on the following lines for readability."""
        fields = _record_fields(record, self)
        message = fields.pop("message")
        tb = fields.pop("traceback", None)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        pairs = "".join(f" {k}={_human_value(v)}" for k, v in fields.items())
        line = (
            f"{stamp}.{int(record.msecs):03d} {record.levelname} "
            f"{self._component}: {message}{pairs}"
        )
        return f"{line}\n{tb}" if tb else line


def _level_number(level: str) -> int:
    """Reject typos loudly; §8 says invalid values abort startup."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        allowed = ", ".join(_LEVELS)
        raise ValueError(f"invalid log level {level!r}; expected one of {allowed}") from None


def setup_logging(
    component: str,
    version: str,
    level: str = "info",
    human: bool = False,
    stream: TextIO | None = None,
    hostname: str | None = None,
) -> logging.Logger:
    """Configure the ``autopush`` logger tree for ``autoconnect`` or
    ``autoendpoint``; safe to call again (e.g. in tests) without
    duplicating output."""
    levelno = _level_number(level)
    logger = logging.getLogger(ROOT_LOGGER)
    for old in [h for h in logger.handlers if getattr(h, _OWN_HANDLER, False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    setattr(handler, _OWN_HANDLER, True)
    if human:
        handler.setFormatter(HumanFormatter(component))
    else:
        handler.setFormatter(
            MozLogFormatter(component, version, hostname or socket.gethostname())
        )
    logger.addHandler(handler)
    logger.setLevel(levelno)
    logger.propagate = False
    return logger
