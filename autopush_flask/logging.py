"""Log output in the mozlog JSON shape or as human-readable lines (docs/operations.md#logs).

This module shadows the stdlib name only as ``autopush_flask.logging``;
absolute imports mean ``import logging`` below is the standard library.

Call sites log through ``logging.getLogger("autopush.<area>")`` and pass
structured data with ``extra=log_fields(uaid_hash=..., code=...)``.

Capabilities never reach a log line whole, whatever a call site passes: the
formatters run every record through a ``Redactor``. Call sites pass the raw
UAID as ``uaid_hash`` and the formatter writes a keyed hash of it (the raw
``uaid`` is added only when the level is debug); endpoint URLs and tokens,
message ids, node URLs, Authorization headers and bridge device tokens are
cut to a short prefix plus a keyed hash, in named fields and in free text
(messages, ``error`` strings, tracebacks) alike, in gunicorn's own lines in
the same log, and in what Sentry reports of log records (``LogFields``). The
human format escapes control characters, as JSON does, so a client cannot
forge or colour lines.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import math
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Mapping
from typing import Any, Protocol, TextIO

from autopush_flask.ids import canonical_uaid

ROOT_LOGGER = "autopush"

# (minimum stdlib level, syslog severity), highest first. The original
# emitted only 3 and 5; docs/operations.md#logs asks for real syslog numbers.
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


class LogFields(dict):
    """A log call's fields: a plain dict to the formatters (which redact them).

    Anything else that reads log records serialises their extra attributes raw:
    Sentry's logging integration puts them in every breadcrumb and error event.
    It asks ``__sentry_repr__`` first, and gets the redacted fields (``Redactor``
    below, keyed by ``setup_logging``).
    """

    def __sentry_repr__(self) -> str:
        return json.dumps(_REPORT_REDACTOR.fields(_flatten(self)), default=str)


def log_fields(**fields: Any) -> dict[str, LogFields]:
    """Keep call sites short: ``log.info("Ack", extra=log_fields(code=200))``."""
    return {"fields": LogFields(fields)}


# ---- redaction ----------------------------------------------------------------------

# HKDF label of the UAID hash key; changing it changes every logged hash.
UAID_HASH_LABEL = b"autopush-flask log uaid hash v1"
# 64 bits: unique enough to grep one user among billions, and short.
UAID_HASH_HEX_DIGITS = 16
# Enough of a token to tell kinds apart (``gAAAAA`` Fernet, ``eyJ`` JWT), plus a hash
# to correlate lines about the same token without revealing it.
SECRET_PREFIX = 6
SECRET_HASH_HEX_DIGITS = 8
# Fields whose whole value is a capability (or holds one): an endpoint URL, a node URL,
# a ``Location``, a token, a message id, a bridge device token.
CAPABILITY_FIELDS = frozenset(
    {
        "endpoint",
        "url",
        "location",
        "token",
        "message_id",
        "version",
        "router_token",
        "device_token",
        "secret",
        "push_endpoint",
    }
)
AUTHORIZATION_FIELDS = frozenset({"authorization"})
UAID_FIELD = "uaid_hash"
RAW_UAID_FIELD = "uaid"

_UUID_TEXT = re.compile(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{8}(?:-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}")
# One pass over free text finds every capability (one regex: a log line has dozens of
# strings). In order of precedence at a position:
_CAPABILITY_TEXT = re.compile(
    # the path segment after these routes: endpoint tokens (/wpush/...), message ids
    # (/m/...), UAIDs on a node's private router (/push/, /notif/) and in the bridge
    # registration API (/registration/...), APNs device tokens (/3/device/...);
    r"(?P<route>/(?:wpush/v[12]|wpush|m|push|notif|registration|3/device)/)(?P<segment>[^/\s?#'\"<>\\\x00-\x1f\x7f]{16,})"
    # a bare UAID (32 hex digits);
    r"|(?P<uaid>\b[0-9a-fA-F]{32}\b)"
    # a token: Fernet (endpoint tokens, message ids), JWT (VAPID), FCM registration
    # token, Google OAuth2 access token (FCM), APNs device token (64 hex).
    r"|(?P<token>gAAAAA[A-Za-z0-9_-]{20,}={0,2}"
    # The two that need a later delimiter start only where a run of token characters
    # starts: tried at every position of a long run, they would scan it again and
    # again (quadratic: 64 KiB of letters took 12 s, now 10 ms).
    r"|(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]*"
    r"|(?<![A-Za-z0-9_-])[A-Za-z0-9_-]{10,}:APA91[A-Za-z0-9_-]{20,}"
    r"|ya29\.[A-Za-z0-9_.-]{20,}"
    r"|\b[0-9a-fA-F]{40,}\b)"
)
# Every pattern above needs at least this many characters: shorter text is skipped.
_SHORTEST_CAPABILITY = 16


class KeySource(Protocol):
    """``CryptoKeys``: one subkey per configured key for a label, newest first."""

    def derive(self, label: bytes) -> tuple[bytes, ...]: ...


class Redactor:
    """Keyed hashes and truncation for everything a log line must not hold whole.

    The key comes from the crypto keys every node shares, so one UAID hashes to the
    same ``uaid_hash`` on every node (operators can grep for it), while nobody
    without the key can confirm a guessed UAID. Without a key (a process that has
    none) a random one is used: still safe, but only comparable within the process.
    """

    def __init__(self, key: bytes | None = None, raw_uaid: bool = False) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self.raw_uaid = raw_uaid

    def _digest(self, text: str) -> str:
        return hmac.new(self._key, text.encode("utf-8", "surrogatepass"), hashlib.sha256).hexdigest()

    def uaid_hash(self, uaid: str) -> str:
        """HMAC-SHA256 of the UAID's 32-hex form (so the dashed form hashes the same), truncated."""
        canonical = canonical_uaid(uaid) if _UUID_TEXT.fullmatch(uaid) else uaid
        return self._digest(canonical)[:UAID_HASH_HEX_DIGITS]

    def secret(self, value: str) -> str:
        """A short prefix and a keyed hash: lines about one token correlate, the token stays unknown."""
        return f"{value[:SECRET_PREFIX]}…#{self._digest(value)[:SECRET_HASH_HEX_DIGITS]}"

    def _replace(self, match: re.Match[str]) -> str:
        if match["uaid"]:
            return f"uaid#{self.uaid_hash(match['uaid'])}"
        if match["token"]:
            return self.secret(match["token"])
        segment = match["segment"]
        if _UUID_TEXT.fullmatch(segment):
            return f"{match['route']}uaid#{self.uaid_hash(segment)}"
        return match["route"] + self.secret(segment)

    def scrub(self, text: str) -> str:
        """Free text (a message, an error, a URL, a traceback) with every capability cut."""
        if len(text) < _SHORTEST_CAPABILITY:
            return text
        return _CAPABILITY_TEXT.sub(self._replace, text)

    def capability(self, value: str) -> str:
        """A value that *is* a capability: a URL keeps its route, a bare token its prefix."""
        scrubbed = self.scrub(value)
        if scrubbed != value or "://" in value or len(value) < _SHORTEST_CAPABILITY:
            return scrubbed
        return self.secret(value)

    def fields(self, fields: dict[str, Any]) -> dict[str, Any]:
        """The flat fields of one line (``message`` included), in order, every rule applied."""
        redacted: dict[str, Any] = {}
        for key, value in fields.items():
            if key == UAID_FIELD and isinstance(value, str) and value:
                redacted[key] = self.uaid_hash(value)
                if self.raw_uaid:
                    redacted[RAW_UAID_FIELD] = value
            else:
                redacted[key] = self._value(key.rsplit(".", 1)[-1], value)
        return redacted

    def _value(self, name: str, value: Any) -> Any:
        if isinstance(value, list):
            return [self.scrub(item) if isinstance(item, str) else item for item in value]
        if not isinstance(value, str):
            return value
        if name in AUTHORIZATION_FIELDS:
            return self.scrub(redact_authorization(value))
        if name in CAPABILITY_FIELDS:
            return self.capability(value)
        return self.scrub(value)


def redact_authorization(value: str) -> str:
    """Authorization headers must not be logged in full (docs/operations.md#logs); the scheme
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


def _record_fields(record: logging.LogRecord, formatter: logging.Formatter, redactor: Redactor) -> dict[str, Any]:
    """``message`` first and never overwritten; caller fields win over the
    exception-derived ``error`` so an explicit value is not lost. Everything
    passes the redactor last, so no path into a line skips it."""
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
    return redactor.fields(fields)


class MozLogFormatter(logging.Formatter):
    """One JSON object per line, as the Mozilla log pipeline expects."""

    def __init__(self, component: str, version: str, hostname: str, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._type = f"{component}:log"
        self._logger = f"{component}-{version}"
        self._hostname = hostname
        self._redactor = redactor or Redactor()

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
            "Fields": _record_fields(record, self, self._redactor),
        }
        return json.dumps(entry, default=str)


# Characters that must not reach a terminal or a line-based log reader raw: C0/C1
# controls (newlines forge lines, ESC starts ANSI sequences), line/paragraph
# separators, bidirectional overrides (reorder what a reader sees) and lone
# surrogates (not encodable: the handler would drop the line).
_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
_NEEDS_QUOTES = re.compile(r'[\s"\\]|' + _UNSAFE.pattern)


def escape_unsafe(text: str) -> str:
    """Each unsafe character as its JSON escape (``\\n``, ``\\u001b``); the rest unchanged."""
    return _UNSAFE.sub(lambda match: json.dumps(match[0])[1:-1], text)


def _human_value(value: Any) -> str:
    """Bare when unambiguous; else a JSON string, so spaces, quotes and control
    characters can neither split a ``k=v`` pair nor reach the terminal raw."""
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return escape_unsafe(json.dumps(text, ensure_ascii=False))


class HumanFormatter(logging.Formatter):
    """``2026-11-21 04:35:00.123 INFO autoendpoint: message k=v`` (UTC)."""

    def __init__(self, component: str, redactor: Redactor | None = None) -> None:
        super().__init__()
        self._component = component
        self._redactor = redactor or Redactor()

    def formatException(self, ei: Any) -> str:  # noqa: N802 - the stdlib's name
        """A client-chosen exception message must not add lines to the traceback
        (a forged log line): its own line breaks are escaped, the traceback's are kept."""
        text = super().formatException(ei)
        seen: set[int] = set()
        error = ei[1]
        while error is not None and id(error) not in seen:
            seen.add(id(error))
            try:
                message = str(error)
            except Exception:  # noqa: BLE001 - a broken __str__ is printed as such anyway
                message = ""
            if "\n" in message or "\r" in message:
                text = text.replace(message, escape_unsafe(message))
            error = error.__cause__ or error.__context__
        return text

    def format(self, record: logging.LogRecord) -> str:
        """Traceback, if any, goes on the following lines for readability."""
        fields = _record_fields(record, self, self._redactor)
        message = escape_unsafe(fields.pop("message"))
        tb = fields.pop("traceback", None)
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(record.created))
        pairs = "".join(f" {k}={_human_value(v)}" for k, v in fields.items())
        line = f"{stamp}.{int(record.msecs):03d} {record.levelname} {self._component}: {message}{pairs}"
        if not tb:
            return line
        return line + "\n" + "\n".join(escape_unsafe(tb_line) for tb_line in tb.split("\n"))


def _level_number(level: str) -> int:
    """Reject typos loudly; docs/operations.md#settings says invalid values abort startup."""
    try:
        return _LEVELS[level.strip().lower()]
    except KeyError:
        allowed = ", ".join(_LEVELS)
        raise ValueError(f"invalid log level {level!r}; expected one of {allowed}") from None


# What error reports (Sentry) see of log fields: redacted, never the raw UAID, keyed
# like the log once ``setup_logging`` has run.
_REPORT_REDACTOR = Redactor()

# gunicorn's own loggers write to the same node log: a request line it refuses, or the
# URI of a request whose handler crashed, can hold an endpoint token.
SERVER_LOGGERS = ("gunicorn.error", "gunicorn.access")


class ServerLogFilter(logging.Filter):
    """Puts gunicorn's lines through the same redaction and escaping as ours."""

    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self._redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        """Rewrite the message in place (already formatted, so ``args`` are spent)."""
        record.msg = escape_unsafe(self._redactor.scrub(record.getMessage()))
        record.args = ()
        return True


def _guard_server_logs(redactor: Redactor) -> None:
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        for old in [f for f in logger.filters if isinstance(f, ServerLogFilter)]:
            logger.removeFilter(old)
        logger.addFilter(ServerLogFilter(redactor))


def uaid_hash_key(crypto_keys: KeySource) -> bytes:
    """The UAID hash key: the current (first) crypto key's subkey for logs.

    After a key rotation puts a new key first, hashes change; the old key's
    hashes can still be computed from it for older lines.
    """
    return crypto_keys.derive(UAID_HASH_LABEL)[0]


def setup_logging(
    component: str,
    version: str,
    level: str = "info",
    human: bool = False,
    stream: TextIO | None = None,
    hostname: str | None = None,
    crypto_keys: KeySource | None = None,
) -> logging.Logger:
    """Configure the ``autopush`` logger tree for ``autoconnect`` or
    ``autoendpoint``; safe to call again (e.g. in tests) without
    duplicating output. ``crypto_keys`` keys the UAID hash (see ``Redactor``);
    at debug level lines also carry the raw ``uaid``."""
    levelno = _level_number(level)
    logger = logging.getLogger(ROOT_LOGGER)
    for old in [h for h in logger.handlers if getattr(h, _OWN_HANDLER, False)]:
        logger.removeHandler(old)
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    setattr(handler, _OWN_HANDLER, True)
    key = uaid_hash_key(crypto_keys) if crypto_keys is not None else None
    redactor = Redactor(key, raw_uaid=levelno <= logging.DEBUG)
    _guard_server_logs(redactor)
    global _REPORT_REDACTOR
    _REPORT_REDACTOR = Redactor(key)
    if human:
        handler.setFormatter(HumanFormatter(component, redactor))
    else:
        handler.setFormatter(MozLogFormatter(component, version, hostname or socket.gethostname(), redactor))
    logger.addHandler(handler)
    logger.setLevel(levelno)
    logger.propagate = False
    return logger
