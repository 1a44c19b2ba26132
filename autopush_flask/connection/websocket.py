"""gevent-websocket, adapted to push clients.

Imported by the gunicorn worker class in the master process, so it must not
import anything that loads ``ssl`` (boto3, requests) before the worker has
monkey-patched.

What is changed from gevent-websocket 0.10.1, and why:

* Every write has a deadline (``send_timeout``): a client that stops reading
  would otherwise block the writing greenlet, and the lock it holds, forever.
  A write that misses it resets the connection (``SendTimeout``).
* Each connection's kernel send buffer is capped (``SEND_BUFFER_BYTES``), so
  a client that does not read can make the node queue only that much for it.
* Text is validated by ``bytes.decode`` (C) instead of the library's
  pure-Python validator, which cost ~10 ms of CPU per 64 KiB message and ran
  twice per message; masks are removed with one integer XOR instead of a
  Python loop over every byte (~6.5 ms per 64 KiB). Invalid UTF-8 still closes
  with 1007.
* After our close frame, the connection is still read until the client's
  close frame comes back (the closing handshake); the transport bounds that
  wait.
* The HTTP request that opens a connection must arrive whole (and be
  answered) within ``upgrade_timeout``, else the connection is closed
  (slow-header attacks); the deadline ends once it is a WebSocket.
* Once a connection is a WebSocket, what only its HTTP request needed is let
  go (parsed headers, the WSGI environ, the buffered request reader), and
  frames are read straight from the socket (``SocketReader``): an idle
  client holds no read buffer (docs/performance.md#connection-memory).
"""

from __future__ import annotations

import io
import socket
import struct
import time
import types
from typing import Any, ClassVar

import gevent
from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, ProtocolError, Stream, WebSocket

from autopush_flask.connection.sockets import send_whole

MAX_MESSAGE_BYTES = 64 * 1024
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_UTF8 = 1007
CLOSE_TOO_BIG = 1009
MAX_CLOSE_REASON = 123
# The read buffer of each connection's HTTP request (its upgrade). The stock
# 8 KiB buffer would stay allocated for as long as a client is connected, and
# once heap pages dirtied by earlier requests are reused for it, all of it is
# resident. Once the connection is a WebSocket it holds no buffer at all.
READ_BUFFER_BYTES = 1024
# What one WebSocket read asks the socket for at least: push clients send
# small frames (a few hundred bytes), so a frame's header and payload mostly
# come in one call; longer payloads are read at their length.
READ_CHUNK_BYTES = 1024
# The kernel send buffer of each client socket (Linux doubles it for its own
# bookkeeping). Left to autotuning it grows to ``tcp_wmem``'s maximum (4 MiB
# by default) for a client that does not read; capped, a stalled client holds
# at most ~128 KiB of kernel memory until ``send_timeout`` drops it. Push
# messages are a few KiB, so this costs a reading client nothing. The buffer
# is only used while data is queued; an idle client costs no kernel memory.
SEND_BUFFER_BYTES = 64 * 1024
# Used only without a node (a bare handler); nodes use AUTOPUSH_SEND_TIMEOUT and AUTOPUSH_UPGRADE_TIMEOUT.
DEFAULT_SEND_TIMEOUT = 10.0
DEFAULT_UPGRADE_TIMEOUT = 10.0
RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST, drops queued data


class MessageTooBig(Exception):
    """A client message exceeds ``MAX_MESSAGE_BYTES`` (closed with 1009)."""

    def __init__(self, unread: int) -> None:
        super().__init__(f"message too big; {unread} bytes of its frame unread")
        self.unread = unread


# What ``receive`` returns for a message it refused with a close frame (1007,
# 1009) while the connection can still be read: the closing handshake follows.
MESSAGE_REFUSED = object()


class SendTimeout(WebSocketError):
    """A write missed its deadline; the connection has been reset."""


class _SendDeadline(Exception):
    """Raised into a write by its timer. Not an ``OSError``, so gevent-websocket
    cannot turn it into a plain ``WebSocketError`` on the way out."""


class _NoValidator:
    """Stands in for gevent-websocket's incremental validator, which
    ``read_message`` resets on every message; text is checked when decoded."""

    __slots__ = ()

    def reset(self) -> None:
        pass


NO_VALIDATOR = _NoValidator()


class SocketReader:
    """A WebSocket's reads, straight from its socket.

    gevent-websocket reads through the request's buffered reader: a buffer
    and a ``memoryview`` of it held by every waiting client, and a C-to-Python
    call (``BufferedReader`` into ``SocketIO``) on the stack each waiting
    greenlet saves. This asks the socket itself; what a read gets past the
    bytes asked for waits in ``pending`` (less than ``READ_CHUNK_BYTES``) for
    the next one, and is empty between a client's messages.
    """

    __slots__ = ("sock", "pending")

    def __init__(self, sock: Any, pending: bytes = b"") -> None:
        self.sock = sock
        self.pending = pending

    def write(self, data: bytes) -> None:
        send_whole(self.sock, data)

    def read(self, size: int) -> bytes:
        """``size`` bytes; fewer only when the connection ends first."""
        data = self.pending
        if len(data) < size:
            parts = [data]
            have = len(data)
            while have < size:
                chunk = self.sock.recv(max(size - have, READ_CHUNK_BYTES))
                if not chunk:
                    break
                parts.append(chunk)
                have += len(chunk)
            data = b"".join(parts)
        self.pending = data[size:]
        return data[:size]


class _NoInput:
    """Stands in for the request body of an upgraded connection (it has none to discard)."""

    __slots__ = ()

    def _discard(self) -> None:
        pass


NO_INPUT = _NoInput()
# The request reader of an upgraded connection: ``closed``, so nothing reads another request.
CLOSED_READER = io.BytesIO()
CLOSED_READER.close()


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR ``payload`` with the repeated 4-byte ``mask`` as one big integer (C speed)."""
    length = len(payload)
    key = (mask * (length // 4 + 1))[:length]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(length, "little")


class PushWebSocket(WebSocket):
    """gevent-websocket's socket with a message-size limit, pong tracking, write
    deadlines, C-speed text decoding and a closing handshake."""

    __slots__ = ("message_bytes", "last_pong", "send_timeout", "unread_bytes")

    def __init__(
        self,
        environ: dict | None,
        stream: Stream | SocketReader,
        handler: Any,
        send_timeout: float = DEFAULT_SEND_TIMEOUT,
    ) -> None:
        # Not super().__init__: it would give every client its own pure-Python validator.
        self.environ = environ
        self.closed = False
        self.stream = stream
        self.raw_write = stream.write
        self.raw_read = stream.read
        self.utf8validator = NO_VALIDATOR
        self.handler = handler
        self.message_bytes = 0
        self.last_pong = 0.0
        self.send_timeout = send_timeout
        self.unread_bytes = 0  # of a refused frame, still to be read past

    # ---- reading

    def read_frame(self) -> tuple[Header, bytes]:
        """Refuse oversize messages before reading their payload."""
        header = Header.decode_header(self.stream)
        if header.flags:
            raise ProtocolError("reserved bits set")
        if header.opcode in (self.OPCODE_TEXT, self.OPCODE_BINARY):
            self.message_bytes = 0
        if header.opcode <= self.OPCODE_BINARY:
            self.message_bytes += header.length
            if self.message_bytes > MAX_MESSAGE_BYTES:
                raise MessageTooBig(header.length)
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        return header, unmask(payload, header.mask) if header.mask else payload

    def _discard(self) -> None:
        """Read past the rest of a refused frame without keeping it, so that the
        client's close frame can still be read after it."""
        while self.unread_bytes > 0:
            chunk = self.raw_read(min(self.unread_bytes, MAX_MESSAGE_BYTES))
            if not chunk:
                raise WebSocketError("Unexpected EOF reading frame payload")
            self.unread_bytes -= len(chunk)

    def validate_utf8(self, payload: bytes) -> None:
        """Nothing: ``_decode_bytes`` decodes the whole message in C and closes with
        1007 when it is not UTF-8."""

    def receive(self) -> Any:
        """The next message, ``MESSAGE_REFUSED``, or ``None`` once the connection is over.

        After our close frame (``closed``) this still reads until the client's
        close frame arrives or the socket ends; the caller drops what it gets
        meanwhile. A frame that breaks the framing (1002) ends the connection
        at once: nothing after it can be parsed.
        """
        if self.raw_read is None:
            return None
        try:
            if self.unread_bytes:
                self._discard()
            message = self.read_message()
        except MessageTooBig as refused:
            self.close(CLOSE_TOO_BIG, b"message too big")
            self.unread_bytes = refused.unread  # read past it once the caller has bounded the wait
            return MESSAGE_REFUSED
        except UnicodeError:
            self.close(CLOSE_INVALID_UTF8, b"invalid UTF-8")
            return MESSAGE_REFUSED
        except ProtocolError:
            self.close(CLOSE_PROTOCOL_ERROR)
        except Exception:  # noqa: BLE001 - a broken peer ends its connection, nothing else
            pass
        else:
            if message is not None:
                return message
        self._release()
        return None

    def _release(self) -> None:
        self.closed = True
        self.stream = self.raw_write = self.raw_read = self.environ = None

    # ---- writing

    def send(self, message: Any, binary: bool | None = None) -> None:
        if binary is None:
            binary = not isinstance(message, str)
        self.send_frame(message, self.OPCODE_BINARY if binary else self.OPCODE_TEXT)

    def send_frame(self, message: Any, opcode: int) -> None:
        """Write one frame within ``send_timeout``, else reset the connection (``SendTimeout``)."""
        if self.closed:
            raise WebSocketError("Connection is already closed")
        deadline = gevent.Timeout(self.send_timeout, _SendDeadline)
        deadline.start()
        try:
            super().send_frame(message, opcode)
        except _SendDeadline:
            self.abort(reset=True)
            raise SendTimeout(f"a write to the client took over {self.send_timeout} s") from None
        finally:
            deadline.close()

    def close(self, code: int = 1000, message: bytes | str | None = b"") -> None:
        """Send a close frame carrying ``code`` (0.10.1's own close drops the code).

        The connection is then closed for writing only; ``receive`` goes on
        until the client's close frame comes back.
        """
        if self.closed:
            return
        reason = message.encode() if isinstance(message, str) else bytes(message or b"")
        try:
            self.send_frame(struct.pack("!H", code) + reason[:MAX_CLOSE_REASON], self.OPCODE_CLOSE)
        except WebSocketError:
            pass
        finally:
            self.closed = True

    def abort(self, reset: bool = False) -> None:
        """End the TCP connection now, from any greenlet, so the reading one ends promptly.

        ``reset`` discards what is still queued for the client (its close
        sends RST), so a client that does not read holds no kernel memory.
        """
        self.closed = True
        sock = getattr(self.handler, "socket", None)
        if sock is None:
            return
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET_ON_CLOSE)
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def handle_pong(self, header: Header, payload: bytes) -> None:
        self.last_pong = time.monotonic()

    def ping(self) -> None:
        self.send_frame(b"", self.OPCODE_PING)


class PushWebSocketHandler(WebSocketHandler):
    """gevent-websocket's handler with a connection limit, a small read buffer, a
    deadline for the opening request and ``PushWebSocket``."""

    # The deadline of each request being read or answered, by handler. Kept
    # here rather than on the handler: one more attribute in the handler's
    # ``__dict__`` makes it grow a size class, ~1.4 KiB for every idle client.
    request_deadlines: ClassVar[dict[PushWebSocketHandler, gevent.Timeout]] = {}
    environ: dict

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER_BYTES)
        super().__init__(sock, address, server, rfile)

    def handle_one_request(self) -> Any:
        """Read and answer one request, all of it within ``upgrade_timeout``.

        A client that sends its request head (or body) slowly, or never
        finishes it, would otherwise hold a greenlet and a socket for good:
        a thousand of them are cheap to open. The deadline ends when the
        connection becomes a WebSocket (``run_websocket``); a connection whose
        request misses it is closed without an answer, which
        also ends idle keep-alive connections.
        """
        node = getattr(self.server.application, "node", None)
        seconds = node.settings.upgrade_timeout if node is not None else DEFAULT_UPGRADE_TIMEOUT
        self.request_deadlines[self] = gevent.Timeout.start_new(seconds)
        try:
            return super().handle_one_request()
        except gevent.Timeout as error:
            if error is not self.request_deadlines.get(self):
                raise
            self.close_connection = True
            return None
        finally:
            self._end_request_deadline()

    def _end_request_deadline(self) -> None:
        deadline = self.request_deadlines.pop(self, None)
        if deadline is not None:
            deadline.close()

    def handle_error(self, t: Any, v: Any, tb: Any) -> None:
        """The deadline passed while answering a plain HTTP request: hang up, log nothing."""
        if v is not None and v is self.request_deadlines.get(self):
            self.close_connection = True
            return
        super().handle_error(t, v, tb)

    def run_websocket(self) -> Any:
        """gevent-websocket's, without its table of clients (``server.clients``, which
        nothing here reads), after letting go of what only the request needed."""
        self._end_request_deadline()
        websocket: Any = self.websocket
        if self.environ.get("PATH_INFO") == "/":  # a push client (other paths go to Flask, which reads all of it)
            self._shed_request()
        environ: dict = self.environ
        app = self.application
        # A class's ``__call__`` called as the plain function it is: CPython then
        # runs it without a C-level call, ~0.7 KiB less of C stack that the
        # greenlet of every waiting client keeps (docs/performance.md#connection-memory).
        call = type(app).__dict__.get("__call__")
        try:
            if isinstance(call, types.FunctionType):
                list(call(app, environ, _ignore_response))
            else:
                list(app(environ, _ignore_response))
        finally:
            if not websocket.closed:
                websocket.close()
            environ["wsgi.websocket"] = None
            self.websocket = None

    def _shed_request(self) -> None:
        """Let go of the HTTP request of an upgraded connection: ~4 KiB per client.

        Its parsed headers, raw header lines, response headers and WSGI
        environ stay referenced by the handler (and the environ by the app)
        for as long as the client is connected. The app is given what it
        reads: the path, the user agent and the WebSocket.
        """
        environ: dict = self.environ
        self.environ = {
            "PATH_INFO": environ.get("PATH_INFO"),
            "HTTP_USER_AGENT": environ.get("HTTP_USER_AGENT", ""),
            "wsgi.websocket": environ.get("wsgi.websocket"),
        }
        self.headers = self.response_headers = None
        self.wsgi_input = NO_INPUT
        self.rfile = CLOSED_READER

    def _buffered_input(self) -> bytes:
        """What the request's reader holds past the request, without waiting for more.

        A client may send its first frames before our 101 arrives; they are
        in the reader's buffer, which the WebSocket no longer reads through.
        """
        sock = self.socket
        timeout = sock.gettimeout()
        sock.settimeout(0.0)
        try:
            return self.rfile.read1(READ_BUFFER_BYTES) or b""
        except OSError:  # nothing buffered and nothing on the socket (TLS: "want read")
            return b""
        finally:
            sock.settimeout(timeout)

    def upgrade_connection(self) -> Any:
        node = getattr(self.application, "node", None)
        if node is not None and node.at_capacity():
            self.start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"Too many connections"]
        if node is not None and not node.services.storage_ready():
            # Booted during a store outage: no hello could be answered yet (db/dynamodb/startup.py).
            self.start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"Storage unavailable"]
        result = super().upgrade_connection()
        plain = getattr(self, "websocket", None)
        if plain is not None:
            plain.closed = True  # its __del__ would otherwise send a close frame
            send_timeout = node.settings.send_timeout if node is not None else DEFAULT_SEND_TIMEOUT
            reader = SocketReader(self.socket, self._buffered_input())
            self.websocket = PushWebSocket(None, reader, self, send_timeout)
            self.environ["wsgi.websocket"] = self.websocket
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER_BYTES)
        return result


def _ignore_response(status: str, headers: list, exc_info: Any = None) -> list:
    """The ``start_response`` of an upgraded connection: its response (the 101) is sent."""
    return []
