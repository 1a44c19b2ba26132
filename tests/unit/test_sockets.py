"""``connection/sockets.send_whole`` over a real socket pair: nothing lost when one ``send`` is not enough."""

from __future__ import annotations

import socket

import gevent
import gevent.socket

from autopush_flask.connection.sockets import send_whole


def _pair() -> tuple[gevent.socket.socket, gevent.socket.socket]:
    left, right = socket.socketpair()
    return gevent.socket.socket(fileno=left.detach()), gevent.socket.socket(fileno=right.detach())


def _read_all(sock: gevent.socket.socket, size: int) -> bytes:
    parts, have = [], 0
    while have < size:
        chunk = sock.recv(65536)
        if not chunk:
            break
        parts.append(chunk)
        have += len(chunk)
    return b"".join(parts)


def test_a_small_write_arrives_whole() -> None:
    writer, reader = _pair()
    with writer, reader:
        send_whole(writer, b"frame")
        assert reader.recv(100) == b"frame"


def test_a_write_larger_than_the_socket_buffer_arrives_whole_and_in_order() -> None:
    writer, reader = _pair()
    with writer, reader:
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        data = bytes(range(256)) * 8192  # 2 MiB: one send cannot take it
        received = gevent.spawn(_read_all, reader, len(data))
        send_whole(writer, data)
        assert received.get(timeout=10) == data


def test_an_error_is_raised_as_sendall_raises_it() -> None:
    writer, reader = _pair()
    reader.close()
    with writer:
        try:
            for _ in range(100):  # the first write after the peer closed may still succeed
                send_whole(writer, b"x" * 1024)
        except OSError as error:
            assert isinstance(error, (BrokenPipeError, ConnectionResetError))
        else:
            raise AssertionError("writes to a closed peer never failed")
