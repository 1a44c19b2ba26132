"""An HTTP/1.1 relay between the endpoint and a real connection node's router.

Tests point a router record's ``node_id`` at it to make the endpoint's
keep-alive connection to a live node go stale (``cut_all``) or lose the
node's answer after the node acted on the request (``swallow_next_answer``,
what the router's one-second stop at shutdown can do). Every request that
went through is recorded whole, with the connection it came on.
"""

from __future__ import annotations

import socket
import threading
from dataclasses import dataclass

from tests.support.sockets import close_quietly

HEAD_END = b"\r\n\r\n"


@dataclass
class Relayed:
    connection: int
    head: bytes
    body: bytes
    answered: bool  # the node's answer was passed back


class HttpRelay:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._lock = threading.Lock()
        self._open: list[socket.socket] = []
        self._swallow = False
        self.connections = 0
        self.requests: list[Relayed] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def bodies(self, path_prefix: bytes = b"PUT /push/") -> list[bytes]:
        with self._lock:
            return [r.body for r in self.requests if r.head.startswith(path_prefix)]

    def cut_all(self) -> None:
        """Close every relayed connection, as a node does with idle ones when it goes away."""
        with self._lock:
            for sock in self._open:
                close_quietly(sock)
            self._open.clear()

    def swallow_next_answer(self) -> None:
        """The next request reaches the node; its answer is dropped and the connection closed."""
        with self._lock:
            self._swallow = True

    def stop(self) -> None:
        self.cut_all()
        self._listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                downstream, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                serial = self.connections
            threading.Thread(target=self._relay, args=(downstream, serial), daemon=True).start()

    def _relay(self, downstream: socket.socket, serial: int) -> None:
        upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
        with self._lock:
            self._open += [downstream, upstream]
        buffers = {downstream: b"", upstream: b""}
        try:
            while True:
                request = _read_message(downstream, buffers)
                if request is None:
                    return
                upstream.sendall(request[0] + HEAD_END + request[1])
                answer = _read_message(upstream, buffers)
                with self._lock:
                    swallow, self._swallow = self._swallow, False
                    self.requests.append(Relayed(serial, request[0], request[1], not swallow))
                if answer is None or swallow:
                    return
                downstream.sendall(answer[0] + HEAD_END + answer[1])
        except OSError:
            pass
        finally:
            close_quietly(downstream)
            close_quietly(upstream)


def _read_message(sock: socket.socket, buffers: dict) -> tuple[bytes, bytes] | None:
    """One HTTP message with a ``Content-Length`` body (all these peers send), or None at the close."""
    buffer = buffers[sock]
    while HEAD_END not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buffer += chunk
    head, _, rest = buffer.partition(HEAD_END)
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        rest += chunk
    buffers[sock] = rest[length:]
    return head, rest[:length]
