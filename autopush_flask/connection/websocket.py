"""gevent-websocket, adapted to push clients.

Imported by the gunicorn worker class in the master process, so it must not
import anything that loads ``ssl`` (boto3, requests) before the worker has
monkey-patched.
"""

from __future__ import annotations

import struct
import time
from typing import Any

from geventwebsocket.exceptions import WebSocketError
from geventwebsocket.handler import WebSocketHandler
from geventwebsocket.websocket import Header, ProtocolError, Stream, WebSocket

MAX_MESSAGE_BYTES = 64 * 1024
CLOSE_TOO_BIG = 1009
MAX_CLOSE_REASON = 123
# The read buffer of each connection. Push clients send small frames (a
# few hundred bytes), longer ones are read straight into their message.
# The stock 8 KiB buffer stays allocated for as long as a client is
# connected, and once heap pages dirtied by earlier requests are reused
# for it, all of it is resident: most of an idle client's memory.
READ_BUFFER_BYTES = 1024


class MessageTooBig(Exception):
    """A client message exceeds ``MAX_MESSAGE_BYTES`` (closed with 1009)."""


class PushWebSocket(WebSocket):
    """gevent-websocket's socket with a message-size limit and pong tracking."""

    __slots__ = ("message_bytes", "last_pong")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.message_bytes = 0
        self.last_pong = 0.0

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
                raise MessageTooBig(self.message_bytes)
        payload = self.raw_read(header.length) if header.length else b""
        if len(payload) != header.length:
            raise WebSocketError("Unexpected EOF reading frame payload")
        return header, header.unmask_payload(payload) if header.mask else payload

    def receive(self) -> Any:
        """The next message, or ``None`` once the connection is over for any reason."""
        if self.closed:
            return None
        try:
            return super().receive()
        except MessageTooBig:
            self.close(CLOSE_TOO_BIG, b"message too big")
        except Exception:  # noqa: BLE001 - a broken peer ends its connection, nothing else
            self.closed = True
        return None

    def close(self, code: int = 1000, message: bytes | str | None = b"") -> None:
        """Send a close frame carrying ``code`` (0.10.1's own close drops the code)."""
        if self.closed:
            return
        reason = message.encode() if isinstance(message, str) else bytes(message or b"")
        try:
            self.send_frame(struct.pack("!H", code) + reason[:MAX_CLOSE_REASON], self.OPCODE_CLOSE)
        except WebSocketError:
            pass
        finally:
            self.closed = True
            self.stream = self.raw_write = self.raw_read = self.environ = None

    def handle_pong(self, header: Header, payload: bytes) -> None:
        self.last_pong = time.monotonic()

    def ping(self) -> None:
        self.send_frame(b"", self.OPCODE_PING)


class PushWebSocketHandler(WebSocketHandler):
    """gevent-websocket's handler with a connection limit, a small read buffer and
    ``PushWebSocket``."""

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        if rfile is None:
            rfile = sock.makefile("rb", READ_BUFFER_BYTES)
        super().__init__(sock, address, server, rfile)

    def upgrade_connection(self) -> Any:
        node = getattr(self.application, "node", None)
        if node is not None and node.at_capacity():
            self.start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"Too many connections"]
        result = super().upgrade_connection()
        plain = getattr(self, "websocket", None)
        if plain is not None:
            plain.closed = True  # its __del__ would otherwise send a close frame
            self.websocket = PushWebSocket(self.environ, Stream(self), self)
            self.environ["wsgi.websocket"] = self.websocket
        return result
