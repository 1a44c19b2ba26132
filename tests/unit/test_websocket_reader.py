"""An upgraded connection reads frames straight from its socket and keeps none of its HTTP request.

A real gevent WSGI server with the connection node's handler, in process,
and a raw client socket (docs/performance.md#connection-memory).
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Iterator

import gevent
import pytest
from gevent import socket
from gevent.pywsgi import WSGIServer

from autopush_flask.connection.websocket import CLOSED_READER, READ_CHUNK_BYTES, PushWebSocketHandler, SocketReader


class Echo:
    """Echoes every message; records what it was given and what its handler kept."""

    def __init__(self) -> None:
        self.environ_keys: list[str] = []
        self.kept: dict[str, object] = {}

    def __call__(self, environ: dict, start_response) -> list[bytes]:
        websocket = environ["wsgi.websocket"]
        handler = websocket.handler
        self.environ_keys = sorted(environ)
        self.kept = {"headers": handler.headers, "rfile": handler.rfile, "stream": websocket.stream}
        while (message := websocket.receive()) is not None:
            websocket.send(message)
        return []


@pytest.fixture
def echo_server() -> Iterator[tuple[Echo, int]]:
    app = Echo()
    server = WSGIServer(("127.0.0.1", 0), app, handler_class=PushWebSocketHandler, log=None)
    server.start()
    yield app, server.server_port
    server.stop(timeout=1)


def frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """A masked client frame."""
    mask = os.urandom(4)
    length = len(payload)
    head = bytes([0x80 | opcode])
    if length < 126:
        head += bytes([0x80 | length])
    else:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


def read_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "connection ended early"
        data += chunk
    return data


def server_frame(sock: socket.socket) -> tuple[int, bytes]:
    first, second = read_exactly(sock, 2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", read_exactly(sock, 2))
    return first & 0x0F, read_exactly(sock, length)


def upgrade_request() -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        "GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nUser-Agent: test-agent\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> bytes:
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    return response


def test_frames_sent_with_the_upgrade_request_are_read(echo_server) -> None:
    _, port = echo_server
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    # The first frames go out with the request, before the 101: they sit in the request's buffer.
    sock.sendall(upgrade_request() + frame(b"first") + frame(b"second"))
    assert read_response(sock).startswith(b"HTTP/1.1 101")
    assert server_frame(sock) == (0x1, b"first")
    assert server_frame(sock) == (0x1, b"second")
    sock.close()


def test_an_upgraded_connection_keeps_none_of_its_request(echo_server) -> None:
    app, port = echo_server
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(upgrade_request())
    assert read_response(sock).startswith(b"HTTP/1.1 101")
    long_message = ("é" * (2 * READ_CHUNK_BYTES + 5)).encode()
    whole = frame(long_message)
    sock.sendall(whole[:700])  # half a frame, then the rest
    gevent.sleep(0.05)
    sock.sendall(whole[700:])
    assert server_frame(sock) == (0x1, long_message)
    assert app.environ_keys == ["HTTP_USER_AGENT", "PATH_INFO", "wsgi.websocket"]
    assert app.kept["headers"] is None and app.kept["rfile"] is CLOSED_READER
    assert isinstance(app.kept["stream"], SocketReader) and app.kept["stream"].pending == b""
    sock.sendall(frame(struct.pack("!H", 1000), opcode=0x8))
    assert server_frame(sock)[0] == 0x8  # the closing handshake
    sock.close()
