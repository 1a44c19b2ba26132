"""The connection node's private HTTP API (docs/protocol.md#node-api, "the router"), on its router port only.

Endpoint nodes and other connection nodes call these to hand over a
notification, ask a client to check storage, or drop a stale duplicate.

Whoever reaches the port could do the same, so every request passes three
checks, cheapest first, before a handler runs:

1. ``RequestGate`` (WSGI middleware, and asked by ``RouterHandler`` for the
   ``PUT /push`` it answers itself): at most ``AUTOPUSH_ROUTER_MAX_REQUESTS``
   requests in progress per worker; the next one gets 503 at once, which the
   endpoint takes as "store the message".
2. ``refuse_large_bodies`` (the whole API app): a declared body larger than a
   ``PUT /push`` can legitimately be gets 413 before any of it is read. A
   chunked body gets 411: nodes always send ``Content-Length``, and werkzeug
   would silently cut a chunked body at the cap rather than refuse it.
   Whatever the client still sends of a refused body, gevent reads and drops
   in 16 KiB pieces after the answer; it is never held in memory.
3. ``require_signature`` (the API's routes; the health routes stay open):
   the signature of ``node_auth`` is checked from the head alone, then the
   body is read and compared with the hash that was signed (401 otherwise).
"""

from __future__ import annotations

import email.parser
import email.utils
import http.client
import json
import re
import ssl
import time
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.ssl
from flask import Blueprint, Flask, Response, current_app, request
from gevent.pywsgi import OldMessage, WSGIHandler
from marshmallow import Schema, ValidationError, fields, validate
from werkzeug.http import HTTP_STATUS_CODES

from autopush_flask import tracking, urgency
from autopush_flask.admin.workers import WORKER_PATH
from autopush_flask.config import Settings
from autopush_flask.connection.sockets import send_whole
from autopush_flask.db import Notification
from autopush_flask.ids import canonical_uaid
from autopush_flask.node_auth import BODY_HASH_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, RouterAuthError

NODE_KEY = "autopush_node"
# The gate and the lean PUT /push of the API app, for ``RouterHandler``.
PUSH_PATH_KEY = "autopush_push_path"
GATE_CLOSED_TEXT = "Router busy."
TEXT_TYPE = "text/plain; charset=utf-8"
AUTH_ERROR_METRIC = "router.auth.error"
REJECTED_METRIC = "router.request.rejected"
# A push body is JSON holding the base64 of at most max_data bytes (4/3 of
# it) plus the channel id, version (a Fernet token of ~200 bytes), topic,
# TTL, timestamp and the encryption headers: 4 KiB covers those with room.
BODY_OVERHEAD_BYTES = 4096
node_api = Blueprint("node_api", __name__)


def max_body_bytes(max_data: int) -> int:
    """The largest API request body a legitimate node sends for ``AUTOPUSH_MAX_DATA``."""
    return max_data * 4 // 3 + BODY_OVERHEAD_BYTES


class RequestGate:
    """WSGI middleware: at most ``limit`` API requests in progress per worker.

    Beyond that a request is answered 503 straight away instead of waiting
    (and holding memory) for a slot. Checking a signature never yields to
    another greenlet, so only requests that are reading a signed body or
    being handled occupy a slot: unsigned floods cannot fill the gate.
    """

    def __init__(self, app: Callable, limit: int, metrics: Any) -> None:
        self.app = app
        self.limit = limit
        self.metrics = metrics
        self.active = 0

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        if not self.admit():
            body = GATE_CLOSED_TEXT.encode()
            start_response(
                "503 Service Unavailable",
                [
                    ("Content-Type", "text/plain"),
                    ("Content-Length", str(len(body))),
                ],
            )
            return [body]
        try:
            return self.app(environ, start_response)
        finally:
            self.leave()

    def admit(self) -> bool:
        """Take a slot, or count the refusal; every ``True`` is followed by one ``leave``."""
        if self.active >= self.limit:
            self.metrics.increment(REJECTED_METRIC, tags={"reason": "busy"})
            return False
        self.active += 1
        return True

    def leave(self) -> None:
        self.active -= 1


def protect(api_app: Flask, limit: int, max_data: int, metrics: Any) -> None:
    """Install the gate, the body cap and ``PUT /push``'s lean paths on the API app (see the module doc)."""
    api_app.config["MAX_CONTENT_LENGTH"] = max_body_bytes(max_data)
    api_app.before_request(refuse_large_bodies)
    route = PushRoute(api_app)
    gate = RequestGate(route, limit, metrics)
    # Flask's documented way to wrap the WSGI app; typeshed sees a method
    api_app.wsgi_app = gate  # type: ignore[method-assign]
    api_app.extensions[PUSH_PATH_KEY] = (gate, route)


class RouterHandler(WSGIHandler):
    """gevent's request handler for the router port: the plain ``PUT /push``
    answered from the buffered request (``handle_one_request``), and for the
    rest no access log, lean header parsing and one write per answer
    (docs/performance.md#the-routers-put-push).

    The router's ``WSGIServer`` is built with ``log=None``, but gevent still
    formats an access-log line (a ``datetime.now()`` and a ``%`` format) for
    every request before throwing it away. gevent parses request headers
    with the ``email`` package (~7 % of the worker's busy samples once Flask
    was off the path); plain
    ``Name: value`` lines are read here with one regular expression, with the
    same limits (``http.client``'s line length and header count) and the same
    result, and anything else (folded or non-ASCII lines) still goes to
    ``email``. And gevent writes a response's head and its first body piece
    with two ``send`` calls: for the router's answers (a few dozen bytes, one
    per direct notification) that is a second system call and a second
    loopback segment for the endpoint to read. Here the head is held and goes
    out with the first piece (up to ``COALESCE_BYTES``; larger ones are
    written as gevent does).
    """

    COALESCE_BYTES = 16 * 1024
    _held: bytearray | None = None

    def log_request(self) -> None:
        return None

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - gevent's name
        return read_headers(fp)

    def _write_with_headers(self, data: bytes) -> None:
        self._held = bytearray()
        try:
            super()._write_with_headers(data)
            held = self._held
        finally:
            self._held = None
        if held:
            self._send_out(held)

    def _sendall(self, data: bytes) -> None:
        held = self._held
        if held is not None and len(held) + len(data) <= self.COALESCE_BYTES:
            held += data
            return
        if held:
            self._held = None
            self._send_out(held)
            self._held = bytearray()
        self._send_out(data)

    def _send_out(self, data: bytes | bytearray) -> None:
        """One ``send`` (``sockets``); gevent's ``_sendall``, with its accounting and
        its record of errors, for whatever that leaves."""
        self.response_length += send_whole(self.socket, data, super()._sendall)

    # ---- the plain PUT /push, answered from the buffered request

    def handle_one_request(self) -> Any:
        """A plain ``PUT /push`` (``_plain_push``) answered here; anything else as gevent handles it.

        Why: with the Flask cycle gone (``PushRoute``), gevent's own work around
        each request was a third of the connection worker's busy samples per
        direct notification: the request line checked and split, the head
        looked up name by name, a WSGI environ and its input object built, the
        status and headers checked, encoded and dated. The endpoint sends a
        ``PUT /push`` in one ``send``, so the whole head is usually buffered
        already: it is matched at once, and the answer written in one piece.
        """
        request = self._plain_push()
        if request is None:
            return super().handle_one_request()
        return self._answer_push(*request)

    def _plain_push(self) -> tuple[str, str, dict[str, str], int] | None:
        """Path, UAID, signature headers and body length of a buffered request in the
        plain form, its head then read past; ``None`` (nothing read) for anything else.

        Plain: ``PUT /push/{uaid} HTTP/1.1`` with a UAID of letters, digits and
        dashes (nothing to unquote), a head of plain lines (``_PLAIN_HEAD``)
        within gevent's limits with no name twice, a ``Content-Length`` within
        the body cap, and none of ``Transfer-Encoding``, ``Expect``, ``Upgrade``
        or a ``Connection`` other than keep-alive.
        """
        rfile = self.rfile
        if rfile.closed:
            return None
        try:
            buffered = rfile.peek(1)  # what is buffered; one read of the socket when nothing is
        except OSError:
            return None  # gevent's reading meets the same error and ends the connection
        line = _PUSH_REQUEST_LINE.match(buffered)
        if line is None:
            return None
        head = _plain_fields(buffered, line.end())
        if head is None:
            return None
        end, pairs = head
        fields = {name.decode("ascii").lower(): value.decode("ascii") for name, value in pairs}
        length = fields.get("content-length", "")
        push_path = getattr(self.server.application, "extensions", {}).get(PUSH_PATH_KEY)
        if (
            push_path is None
            or len(fields) != len(pairs)
            or not (length.isascii() and length.isdigit() and int(length) <= push_path[1].max_body)
            or not _PLAIN_PUSH_FIELDS.isdisjoint(fields)
            or fields.get("connection", "keep-alive").lower() != "keep-alive"
        ):
            return None
        rfile.read(end)
        signature = {name: fields[name.lower()] for name in _SIGNATURE_NAMES if name.lower() in fields}
        return line[1].decode("ascii"), line[2].decode("ascii"), signature, int(length)

    def _answer_push(self, path: str, uaid: str, signature: dict[str, str], length: int) -> bool | None:
        """What ``RequestGate`` and ``PushRoute`` answer, in one write; then the unread
        rest of the body is dropped, as gevent does; ``True``: read the next request."""
        gate, route = self.server.application.extensions[PUSH_PATH_KEY]
        self.response_length = 0
        unread = length

        def read(size: int) -> bytes:
            nonlocal unread
            data = self.rfile.read(size)
            unread -= len(data)
            return data

        if gate.admit():
            try:
                status, text = route.answer(path, uaid, signature, read, length)
            finally:
                gate.leave()
        else:
            status, text = 503, GATE_CLOSED_TEXT
        body = text.encode()
        head = f"HTTP/1.1 {_STATUS_LINES[status]}\r\nContent-Type: {TEXT_TYPE}\r\nContent-Length: {len(body)}\r\n"
        try:
            self._send_out(f"{head}Date: {route.date()}\r\n\r\n".encode("latin-1") + body)
            if unread > 0 and len(self.rfile.read(unread)) < unread:
                return None  # the client left mid-body
        except OSError:
            return None
        return True


def refuse_large_bodies() -> Response | None:
    if request.content_length is None and "chunked" in request.headers.get("Transfer-Encoding", "").lower():
        return _refuse_unread("length_required", "Content-Length required", 411)
    if (request.content_length or 0) > (request.max_content_length or 0):
        return _refuse_unread("too_large", "Request body too large", 413)
    return None


def _refuse_unread(reason: str, text: str, status: int) -> Response:
    """Refuse before reading the body, and close the connection rather than keep it alive."""
    _node().services.metrics.increment(REJECTED_METRIC, tags={"reason": reason})
    response = _text(text, status)
    response.headers["Connection"] = "close"
    return response


@node_api.before_request
def require_signature() -> Response | None:
    node = _node()
    if not node.settings.router_auth:
        return None
    return _refuse_unsigned(node)


def _refuse_unsigned(node: Any) -> Response | None:
    target = request.path + (f"?{request.query_string.decode('latin-1')}" if request.query_string else "")
    try:
        signed_sha256 = node.request_keys.verify_head(request.method, target, request.headers)
        node.request_keys.verify_body(signed_sha256, request.get_data())
    except RouterAuthError as error:
        node.services.metrics.increment(AUTH_ERROR_METRIC, tags={"reason": error.reason})
        return _text("Invalid router signature", 401)
    return None


def _node() -> Any:
    return current_app.extensions[NODE_KEY]


def node_api_tls(settings: Settings) -> ssl.SSLContext | None:
    """The router's TLS context when ``AUTOPUSH_ROUTER_SSL_KEY``/``_CERT`` are set.

    Without it a https ``node_id`` would be announced while the port spoke
    plain HTTP, and every direct delivery would fail. gevent's context makes
    the handshakes cooperative even where ``ssl`` was not monkey-patched.
    """
    if not (settings.router_ssl_key and settings.router_ssl_cert):
        return None
    context = gevent.ssl.create_default_context(gevent.ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(settings.router_ssl_cert, settings.router_ssl_key)
    return context


class NotificationSchema(Schema):
    """The body of ``PUT /push/{uaid}`` (docs/protocol.md#put-push)."""

    channelID = fields.UUID(required=True)  # noqa: N815 - wire name
    version = fields.String(required=True, validate=validate.Length(min=1))
    ttl = fields.Integer(load_default=0, validate=validate.Range(min=0))
    topic = fields.String(load_default=None, allow_none=True)
    timestamp = fields.Integer(load_default=0)
    data = fields.String(load_default=None, allow_none=True)
    headers = fields.Dict(keys=fields.String(), values=fields.String(), load_default=None, allow_none=True)
    # The endpoint's stamp (timestamp messages), so a copy the node stores
    # keeps the endpoint's version; ``stored``: the endpoint already stored it.
    sortkey_timestamp = fields.Integer(load_default=None, allow_none=True, validate=validate.Range(min=0))
    stored = fields.Boolean(load_default=False)
    urgency = fields.String(load_default=None, allow_none=True, validate=validate.OneOf(urgency.LEVELS))
    sender = fields.String(
        load_default=None,
        allow_none=True,
        validate=[validate.Length(max=tracking.SENDER_MAX_LENGTH), validate.Regexp(tracking.DOMAIN)],
    )


NOTIFICATION_SCHEMA = NotificationSchema()


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, mimetype="text/plain")


def _answer(answer: tuple[int, str]) -> Response:
    status, body = answer
    return _text(body, status)


def _client(uaid: str) -> Any:
    return _registered(_node(), uaid)


def _registered(node: Any, uaid: str) -> Any:
    """The identified client for a UAID in either spelling, or ``None``."""
    try:
        canonical = canonical_uaid(uaid)
    except ValueError:
        return None
    client = node.registry.get(canonical)
    if client is None or not client.identified:
        return None
    return client


class PushRoute:
    """WSGI: ``PUT /push/{uaid}`` without Flask's request cycle; every other request to the Flask app.

    Why: ``PUT /push`` is the one router request made for every direct
    notification. Profiled through Flask (py-spy, 3,000 pushes,
    docs/performance.md#the-routers-put-push), the connection worker spent
    1.26 ms CPU per direct notification at a load average of 1.7 (0.62 ms on
    a quiet machine); ~13 % of its busy samples were Flask around the view
    (request context, URL matching, the ``before_request`` hooks, the
    ``Response`` object) and ~5 % marshmallow; the write of the frame to the
    browser's socket, the ack and gevent's loop are most of the rest. With
    this path (and ``RouterHandler``): 0.53 ms at a load average of 1.9.
    This path does the same checks in the same order, with the same
    statuses, bodies and metrics (docs/protocol.md#put-push).

    Only the plain form is taken here: ``PUT``, an ASCII UAID segment, no
    query string, a ``Content-Length`` within the body cap and no
    ``Transfer-Encoding``. Anything else (a chunked or oversized body, a
    malformed length, other methods and paths) goes to the Flask app, whose
    hooks answer it as before (411, 413, 404, 405). Most plain requests do not
    even reach this WSGI path: ``RouterHandler`` answers them through
    ``answer`` straight from the buffered request; what it leaves to gevent
    (an ``Expect``, a folded header line, a UAID to unquote, HTTP/1.0) comes
    here.
    """

    PREFIX = "/push/"

    def __init__(self, api_app: Flask) -> None:
        self.api_app = api_app
        self.flask_wsgi_app = api_app.wsgi_app
        self.max_body = api_app.config["MAX_CONTENT_LENGTH"]
        self._date_second = -1
        self._date = ""

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        path: str = environ.get("PATH_INFO", "")
        length: str = environ.get("CONTENT_LENGTH") or "0"
        if (
            environ.get("REQUEST_METHOD") != "PUT"
            or not path.startswith(self.PREFIX)
            or environ.get("QUERY_STRING")
            or environ.get("SCRIPT_NAME")
            or "HTTP_TRANSFER_ENCODING" in environ
            or not (length.isascii() and length.isdigit())
            or int(length) > self.max_body
        ):
            return self.flask_wsgi_app(environ, start_response)
        uaid = path[len(self.PREFIX) :]
        if not uaid or "/" in uaid or not uaid.isascii():
            return self.flask_wsgi_app(environ, start_response)
        signature = {name: environ[key] for name, key in _SIGNATURE_ENVIRON if key in environ}
        status, text = self.answer(path, uaid, signature, environ["wsgi.input"].read, int(length))
        body = text.encode()
        start_response(
            _STATUS_LINES[status],
            [("Content-Type", TEXT_TYPE), ("Content-Length", str(len(body))), ("Date", self.date())],
        )
        return [body]

    def date(self) -> str:
        """The answer's ``Date``, formatted once a second rather than by gevent for each answer."""
        now = int(time.time())
        if now != self._date_second:
            self._date_second, self._date = now, email.utils.formatdate(now, usegmt=True)
        return self._date

    def answer(
        self, path: str, uaid: str, signature: dict[str, str], read: Callable[[int], bytes], length: int
    ) -> tuple[int, str]:
        """``push``, and what Flask does with an exception in a view: log it, answer 500."""
        try:
            return self.push(path, uaid, signature, read, length)
        except Exception:
            self.api_app.logger.error("Exception on %s [PUT]", path, exc_info=True)
            return 500, "Internal Server Error"

    def push(
        self, path: str, uaid: str, signature: dict[str, str], read: Callable[[int], bytes], length: int
    ) -> tuple[int, str]:
        """The checks of docs/protocol.md#put-push in their order; ``signature``: the
        signature headers that came (absent ones: ``verify_head`` says "missing");
        ``read(length)``, the body, is called at most once."""
        node = self.api_app.extensions[NODE_KEY]
        data: bytes | None = None
        if node.settings.router_auth:
            try:
                signed_sha256 = node.request_keys.verify_head("PUT", path, signature)
                data = read(length) if length else b""
                node.request_keys.verify_body(signed_sha256, data)
            except RouterAuthError as error:
                node.services.metrics.increment(AUTH_ERROR_METRIC, tags={"reason": error.reason})
                return 401, "Invalid router signature"
        client = _registered(node, uaid)
        if client is None:
            return NOT_CONNECTED
        if data is None:
            data = read(length) if length else b""
        notification = parse_notification(data)
        if notification is None:
            return INVALID
        if not client.deliver(notification):
            return BUSY
        return ACCEPTED


# http.client's limits on a head (_MAXLINE, _MAXHEADERS), which gevent's own parsing applies.
MAX_HEADER_LINE = 65536
MAX_HEADERS = 100
# A header line as the email package reads it (compat32): the name in the
# characters of its header pattern, the value without leading blanks or the
# line end. Printable ASCII only; anything else is left to the email package.
_PLAIN_HEADER_LINE = re.compile(rb"([!-9;-~]+):[ \t]*([\t -~]*?)\r?\n\Z")
# A whole head of such lines, each ended by CRLF, then the blank line.
_PLAIN_HEAD = re.compile(rb"(?:[!-9;-~]+:[\t -~]*\r\n)*\r\n")
_PLAIN_HEAD_FIELD = re.compile(rb"([!-9;-~]+):[ \t]*([\t -~]*)\r\n")


class PlainHead(OldMessage):
    """A head of plain lines, whose lookups use a dict built once.

    gevent asks a request's head for six names or so (``Content-Length``,
    ``Transfer-Encoding``, ``Connection``, ``Upgrade``, ``Content-Type``…) and
    the email package's ``get`` lower-cases every header name for each. The
    head is not changed after it is read, except by gevent's ``del`` of
    ``Content-Length`` beside a chunked body, which keeps the dict in step.
    """

    def __init__(self, fields: list[tuple[str, str]]) -> None:
        super().__init__()
        self._first: dict[str, str] = {}
        for name, value in fields:
            self.set_raw(name, value)
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, failobj: Any = None) -> Any:
        return self._first.get(name.lower(), failobj)

    def __delitem__(self, name: str) -> None:
        super().__delitem__(name)
        self._first.pop(name.lower(), None)


def read_headers(fp: Any) -> Any:
    """A request's headers as gevent's ``headers_factory`` gives them (an
    ``OldMessage``), without the email parser for plain lines.

    The endpoint sends a ``PUT /push`` in one ``send``, so its whole head is
    usually in the reader's buffer already: it is then matched and split at
    once (``_plain_head``) rather than line by line.
    """
    head = _plain_head(fp)
    if head is not None:
        return head
    lines = []
    while True:  # http.client's reading of a head, with its limits
        line = fp.readline(MAX_HEADER_LINE + 1)
        if len(line) > MAX_HEADER_LINE:
            too_long = OldMessage()
            too_long.status = "Line too long"
            return too_long
        lines.append(line)
        if len(lines) > MAX_HEADERS:
            raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
        if line in (b"\r\n", b"\n", b""):
            break
    if lines[-1]:  # ended by a blank line, not by the end of the stream
        fields = []
        for line in lines[:-1]:
            match = _PLAIN_HEADER_LINE.match(line)
            if match is None:
                break
            fields.append((match[1].decode("ascii"), match[2].decode("ascii")))
        else:
            return PlainHead(fields)
    return email.parser.Parser(_class=OldMessage).parsestr(b"".join(lines).decode("iso-8859-1"))


def _plain_head(fp: Any) -> PlainHead | None:
    """The head when all of it is buffered and plain, read past; else ``None`` with nothing read."""
    peek = getattr(fp, "peek", None)
    if peek is None:
        return None
    head = _plain_fields(peek(1), 0)  # what is buffered; one read of the socket when nothing is
    if head is None:
        return None
    end, pairs = head
    fp.read(end)
    return PlainHead([(name.decode("ascii"), value.decode("ascii")) for name, value in pairs])


def _plain_fields(buffered: bytes, start: int) -> tuple[int, list[tuple[bytes, bytes]]] | None:
    """Where the head starting at ``start`` ends (past its blank line) and its
    fields, when all of it is in ``buffered`` in plain CRLF lines within
    gevent's header count; else ``None``."""
    if buffered.startswith(b"\r\n", start):
        return start + 2, []  # no header at all
    end = buffered.find(b"\r\n\r\n", start) + 4
    if end < 4 or buffered.count(b"\n", start, end) > MAX_HEADERS:  # header lines and the blank one
        return None
    if _PLAIN_HEAD.fullmatch(buffered, start, end) is None:
        return None
    return end, _PLAIN_HEAD_FIELD.findall(buffered, start, end)


# A PUT /push request line with nothing to unquote in its UAID segment (``RouterHandler``).
_PUSH_REQUEST_LINE = re.compile(rb"PUT (/push/([0-9A-Za-z-]+)) HTTP/1\.1\r\n")
# Request headers that take a request off the plain path, to gevent's handling.
_PLAIN_PUSH_FIELDS = frozenset({"transfer-encoding", "expect", "upgrade"})
_SIGNATURE_NAMES = (TIMESTAMP_HEADER, BODY_HASH_HEADER, SIGNATURE_HEADER)
_SIGNATURE_ENVIRON = [(name, "HTTP_" + name.upper().replace("-", "_")) for name in _SIGNATURE_NAMES]
_STATUS_LINES = {code: f"{code} {HTTP_STATUS_CODES[code].upper()}" for code in (200, 401, 400, 404, 500, 503)}


NOT_CONNECTED = (404, "Client not connected.")
INVALID = (400, "Invalid notification")
BUSY = (503, "Client busy.")
ACCEPTED = (200, "Client accepted for delivery")


@node_api.put("/push/<uaid>")
def push(uaid: str) -> Response:
    """The Flask form of ``PUT /push``, for what ``PushRoute`` hands over (and the test client)."""
    client = _client(uaid)
    if client is None:
        return _answer(NOT_CONNECTED)
    notification = parse_notification(request.get_data())
    if notification is None:
        return _answer(INVALID)
    if not client.deliver(notification):
        return _answer(BUSY)
    return _answer(ACCEPTED)


def parse_notification(data: bytes) -> Notification | None:
    """The notification of a ``PUT /push`` body, or ``None`` when it is not a valid one."""
    try:
        loaded = json.loads(data)
    except (ValueError, RecursionError, TypeError):
        return None
    if type(loaded) is dict and (notification := _plain_notification(loaded)) is not None:
        return notification
    try:
        body = NOTIFICATION_SCHEMA.load(loaded or {})
    except (ValueError, RecursionError, TypeError, ValidationError):
        return None
    return Notification(
        channel_id=str(body["channelID"]),
        version=body["version"],
        ttl=body["ttl"],
        timestamp=body["timestamp"],
        topic=body["topic"] or None,
        data=body["data"] or None,
        headers=body["headers"],
        sortkey_timestamp=body["sortkey_timestamp"],
        stored=body["stored"],
        urgency=body["urgency"],
        sender=body["sender"],
    )


_CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\Z")
_FIELD_NAMES = frozenset(NOTIFICATION_SCHEMA.fields)


def _plain_notification(body: dict) -> Notification | None:
    """The notification when every field has exactly the type and form an endpoint
    sends (canonical channel id, ``int``, ``bool``, ``str``), else ``None``.

    A shortcut past marshmallow (~5 % of the worker's CPU per push): it accepts
    only bodies the schema accepts, with the same values, so ``None`` just
    means "let the schema decide" (tests/unit/test_node_api_parse.py).
    """
    get = body.get
    channel_id, version, ttl, timestamp = get("channelID"), get("version"), get("ttl", 0), get("timestamp", 0)
    topic, data, headers, sender = get("topic"), get("data"), get("headers"), get("sender")
    sortkey, stored, level = get("sortkey_timestamp"), get("stored", False), get("urgency")
    if not (
        _FIELD_NAMES.issuperset(body)
        and type(channel_id) is str
        and _CANONICAL_UUID.match(channel_id)
        and type(version) is str
        and version
        and type(ttl) is int
        and ttl >= 0
        and type(timestamp) is int
        and (topic is None or type(topic) is str)
        and (data is None or type(data) is str)
        and (sortkey is None or (type(sortkey) is int and sortkey >= 0))
        and type(stored) is bool
        and (level is None or (type(level) is str and level in urgency.LEVELS))
        and (
            sender is None
            or (type(sender) is str and len(sender) <= tracking.SENDER_MAX_LENGTH and tracking.DOMAIN.match(sender))
        )
        and (
            headers is None
            or (
                type(headers) is dict and all(type(key) is str and type(value) is str for key, value in headers.items())
            )
        )
    ):
        return None
    return Notification(
        channel_id=channel_id,
        version=version,
        ttl=ttl,
        timestamp=timestamp,
        topic=topic or None,
        data=data or None,
        headers=headers,
        sortkey_timestamp=sortkey,
        stored=stored,
        urgency=level,
        sender=sender,
    )


@node_api.put("/notif/<uaid>")
def check_storage(uaid: str) -> Response:
    client = _client(uaid)
    if client is None:
        return _answer(NOT_CONNECTED)
    if client.check_storage():
        return _text("Flagged for Notification check", 202)
    return _text("Notification check started", 200)


@node_api.get(WORKER_PATH)
def admin_worker() -> Response:
    """This worker's part of the admin view (docs/operations.md#admin-view); 404 without one.

    Signed even with ``AUTOPUSH_ROUTER_AUTH=false``: only the admin view asks.
    """
    node = _node()
    if not node.settings.admin_token:
        return _text("Not Found", 404)
    if not node.settings.router_auth and (refused := _refuse_unsigned(node)) is not None:
        return refused
    return Response(json.dumps(node.admin_report()), mimetype="application/json")


@node_api.delete("/notif/<uaid>/<connected_at>")
def drop_duplicate(uaid: str, connected_at: str) -> Response:
    if not connected_at.isdigit():
        return _text("Not Found", 404)
    client = _client(uaid)
    if client is None or client.connected_at != int(connected_at):
        return _text("", 200)
    client.evict(int(connected_at))
    return _text("Terminated duplicate", 200)
