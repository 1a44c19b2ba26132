"""A TCP server that answers each HTTP request with the next scripted raw answer.

Tests of the pooled HTTP client (autopush_flask/http_client.py) need peers that misbehave on purpose: close
idle connections, answer in chunks, hang, send garbage. Each request read is
recorded with the connection it arrived on; each answer is written byte for
byte as scripted.
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass

from tests.support.sockets import close_quietly


@dataclass
class Answer:
    raw: bytes = b""
    close: bool = False  # close the connection after writing ``raw``
    delay: float = 0.0  # wait before answering


@dataclass
class Received:
    connection: int
    head: bytes
    body: bytes


def ipv6_loopback() -> bool:
    """Whether this machine can listen on ::1 (IPv6 tests skip otherwise)."""
    try:
        with socket.create_server(("::1", 0), family=socket.AF_INET6):
            return True
    except OSError:
        return False


def ok(body: bytes = b"{}", *headers: str) -> Answer:
    lines = [b"HTTP/1.1 200 OK", b"Content-Length: %d" % len(body), *(h.encode() for h in headers)]
    return Answer(b"\r\n".join(lines) + b"\r\n\r\n" + body)


class ScriptedServer:
    def __init__(self, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        """``host="::1"`` listens on the IPv6 loopback (``origin()`` then brackets it)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, 0), family=family)
        self.host = host
        self._tls = tls
        self._answers: list[Answer] = []
        self._lock = threading.Lock()
        self.received: list[Received] = []
        self.connections = 0
        self._open: list[socket.socket] = []
        threading.Thread(target=self._accept_loop, daemon=True).start()

    @property
    def port(self) -> int:
        return self._listener.getsockname()[1]

    def origin(self, scheme: str = "http") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def script(self, *answers: Answer) -> None:
        with self._lock:
            self._answers.extend(answers)

    def close_idle(self) -> None:
        """Close every open connection, as a server does with idle keep-alive ones."""
        with self._lock:
            for sock in self._open:
                close_quietly(sock)
            self._open.clear()

    def stop(self) -> None:
        self.close_idle()
        self._listener.close()

    def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                self.connections += 1
                serial = self.connections
            threading.Thread(target=self._serve, args=(sock, serial), daemon=True).start()

    def _serve(self, sock: socket.socket, serial: int) -> None:
        try:
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_side=True)
            with self._lock:
                self._open.append(sock)
            buffer = b""
            while True:
                head, buffer = _read_until(sock, buffer, b"\r\n\r\n")
                if head is None:
                    return
                length = _content_length(head)
                while len(buffer) < length:
                    chunk = sock.recv(65536)
                    if not chunk:
                        return
                    buffer += chunk
                body, buffer = buffer[:length], buffer[length:]
                with self._lock:
                    self.received.append(Received(serial, head, body))
                    answer = self._answers.pop(0) if self._answers else Answer(close=True)
                time.sleep(answer.delay)
                sock.sendall(answer.raw)
                if answer.close:
                    return
        except OSError:
            pass
        finally:
            close_quietly(sock)


def _read_until(sock: socket.socket, buffer: bytes, marker: bytes) -> tuple[bytes | None, bytes]:
    while marker not in buffer:
        chunk = sock.recv(65536)
        if not chunk:
            return None, buffer
        buffer += chunk
    head, _, rest = buffer.partition(marker)
    return head, rest


def _content_length(head: bytes) -> int:
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return 0
