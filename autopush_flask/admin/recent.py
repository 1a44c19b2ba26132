"""The worker's recent warnings and errors, for the admin view (docs/operations.md#admin-view).

``RecentErrors`` is a logging handler on the ``autopush`` logger tree that
keeps the last ``CAPACITY`` records at WARNING and above in a ring buffer.
Emitting stays cheap (it runs in whichever greenlet logs): the record is cut
to its time, level, logger, message and flat structured fields, and the
exception object is kept only as its ``repr``. Redaction, the same as the log
lines get (keyed ``uaid_hash``, capabilities cut), happens when the admin view
reads the buffer. Fields that could hold a payload or a secret are dropped
whatever their value, though call sites never log them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Mapping
from typing import Any

from autopush_flask.logging import ROOT_LOGGER, Redactor

CAPACITY = 50
# Dropped whole, at any nesting (``request.body``): payloads and secrets.
DROPPED_FIELDS = frozenset({"data", "payload", "body", "headers", "token", "authorization"})
# A log message or field value longer than this is cut: the view shows recent
# events, not whole dumps.
MAX_TEXT = 500
_SCALARS = (str, int, float, bool, type(None))


def _kept(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() not in DROPPED_FIELDS


def _flat_value(value: Any) -> Any:
    if isinstance(value, _SCALARS):
        return value[:MAX_TEXT] if isinstance(value, str) else value
    return str(value)[:MAX_TEXT]


def _flat_fields(extra: Any) -> dict[str, Any]:
    """The record's ``fields`` one level deep (as the log formatters flatten them), unsafe names dropped."""
    if not isinstance(extra, Mapping):
        return {}
    flat: dict[str, Any] = {}
    for key, value in extra.items():
        if isinstance(value, Mapping):
            for sub_key, sub_value in value.items():
                name = f"{key}.{sub_key}"
                if _kept(name) and _kept(str(key)):
                    flat[name] = _flat_value(sub_value)
        elif _kept(str(key)):
            flat[str(key)] = _flat_value(value)
    return flat


class RecentErrors(logging.Handler):
    """A ring buffer of the last ``capacity`` WARNING-and-above records of this worker."""

    def __init__(self, uaid_hash_key: bytes | None = None, capacity: int = CAPACITY) -> None:
        super().__init__(logging.WARNING)
        self._redactor = Redactor(uaid_hash_key)
        self._entries: deque[tuple[float, str, str, str, dict[str, Any]]] = deque(maxlen=capacity)
        self._guard = threading.Lock()
        self.total = 0

    def emit(self, record: logging.LogRecord) -> None:
        try:
            fields = _flat_fields(getattr(record, "fields", None))
            if record.exc_info and record.exc_info[1] is not None:
                fields.setdefault("error", repr(record.exc_info[1])[:MAX_TEXT])
            entry = (record.created, record.levelname, record.name, record.getMessage()[:MAX_TEXT], fields)
        except Exception:  # noqa: BLE001 - a log call must never fail because of this view
            return
        with self._guard:
            self._entries.append(entry)
            self.total += 1

    def entries(self) -> list[dict[str, Any]]:
        """Newest first, redacted as the log lines are."""
        with self._guard:
            entries = list(self._entries)
        shown = []
        for created, level, logger, message, fields in reversed(entries):
            redacted = self._redactor.fields({"message": message, **fields})
            shown.append(
                {
                    "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(created)),
                    "timestamp": round(created, 3),
                    "level": level,
                    "logger": logger,
                    "message": redacted.pop("message"),
                    "fields": redacted,
                }
            )
        return shown

    def attach(self, logger_name: str = ROOT_LOGGER) -> None:
        logger = logging.getLogger(logger_name)
        if self not in logger.handlers:
            logger.addHandler(self)

    def detach(self, logger_name: str = ROOT_LOGGER) -> None:
        logging.getLogger(logger_name).removeHandler(self)
