"""A small pooled keep-alive HTTP/1.1 client for the calls on every push's path.

A direct notification costs one DynamoDB request and one ``PUT /push`` to a
connection node. Through http.client (and urllib3 and botocore on top) those
two exchanges cost more CPU than everything else the endpoint does: headers
and body leave in separate writes, response headers go through the email
parser, pooled sockets are polled before every reuse. This client writes each
request at once, parses responses with a few string operations and learns
that a pooled connection went stale from the failed exchange itself, which
it then repeats once on a new connection, byte for byte (the same head,
signature and body).

Usually the peer had closed an idle connection and never saw the request.
But a peer that read it and then died or was stopped before answering (a
connection worker's router is given one second to finish at shutdown) looks
the same from here, so the repeat may be the second copy a peer sees: it is
only safe for requests that say the same thing twice. ``PUT /push`` carries
the message's one version, which the connection node recognises as a repeat;
``PUT /notif`` only asks for a storage check. DynamoDB, the other peer,
closes idle connections but does not die mid-request.

It speaks only what its peers speak: requests with a complete body, answers
with ``Content-Length``, chunked or read-to-close bodies; no proxies, no
redirects.
"""

from __future__ import annotations

import contextlib
import socket
import ssl
import time
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
RECV_BYTES = 64 * 1024
DEFAULT_MAX_IDLE = 100
DEFAULT_MAX_POOLS = 100


class HTTPFailure(Exception):
    """The exchange failed at the network level or the answer was not HTTP."""


class HTTPTimeout(HTTPFailure):
    """Connecting or answering took longer than allowed."""


class _StaleConnection(HTTPFailure):
    """A pooled connection was closed by the peer before any answer."""


@dataclass(slots=True)
class Response:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes


class _Connection:
    __slots__ = ("sock", "reused")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.reused = False

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


class ConnectionPool:
    """Keep-alive connections to one origin (``scheme://host[:port]``)."""

    def __init__(
        self,
        origin: str,
        connect_timeout: float,
        timeout: float,
        max_idle: int = DEFAULT_MAX_IDLE,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(origin)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme not in ("http", "https") or not parts.hostname or port == -1:
            raise HTTPFailure(f"not an http(s) origin: {origin[:100]!r}")
        default_port = 443 if parts.scheme == "https" else 80
        self.host = parts.hostname
        self.port = port or default_port
        self.host_header = self.host if self.port == default_port else f"{self.host}:{self.port}"
        self._tls = (ssl_context or ssl.create_default_context()) if parts.scheme == "https" else None
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._idle: deque[_Connection] = deque(maxlen=max_idle)

    def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        """One exchange; ``Host`` and ``Content-Length`` are added here."""
        head = [f"{method} {path} HTTP/1.1", f"Host: {self.host_header}", f"Content-Length: {len(body)}"]
        head.extend(f"{name}: {value}" for name, value in headers)
        payload = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body
        deadline = time.monotonic() + self._timeout
        while True:
            connection = self._idle.pop() if self._idle else self._connect(deadline)
            try:
                response, keep_alive = self._exchange(connection, payload, method, deadline)
            except _StaleConnection:
                connection.close()
                continue  # only pooled connections go stale; the next one may be new
            except BaseException:
                connection.close()
                raise
            if keep_alive:
                connection.reused = True
                self._idle.append(connection)
            else:
                connection.close()
            return response

    def close(self) -> None:
        while self._idle:
            self._idle.pop().close()

    def _connect(self, deadline: float) -> _Connection:
        timeout = min(self._connect_timeout, _remaining(deadline))
        try:
            sock = socket.create_connection((self.host, self.port), timeout=timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except TimeoutError as error:
            raise HTTPTimeout(f"connect to {self.host_header}: timed out") from error
        except OSError as error:
            raise HTTPFailure(f"connect to {self.host_header}: {error}") from error
        return _Connection(sock)

    def _exchange(self, connection: _Connection, payload: bytes, method: str, deadline: float) -> tuple[Response, bool]:
        reader = _Reader(connection.sock, deadline, self.host_header)
        try:
            connection.sock.settimeout(_remaining(deadline))
            connection.sock.sendall(payload)
            return _read_response(reader, method)
        except TimeoutError as error:
            raise HTTPTimeout(f"{self.host_header}: timed out") from error
        except OSError as error:
            if connection.reused and not reader.received:
                raise _StaleConnection(str(error)) from error
            raise HTTPFailure(f"{self.host_header}: {error}") from error
        except _PeerClosed as error:
            if connection.reused and not reader.received:
                raise _StaleConnection(str(error)) from error
            raise HTTPFailure(f"{self.host_header}: {error}") from error


class PoolManager:
    """One ``ConnectionPool`` per origin, for requests to many peers (connection nodes)."""

    def __init__(
        self,
        connect_timeout: float,
        timeout: float,
        max_pools: int = DEFAULT_MAX_POOLS,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_pools = max_pools
        self._ssl_context = ssl_context  # for https origins; None: the system trust store
        self._pools: dict[str, ConnectionPool] = {}

    def request(self, method: str, url: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        scheme, _, rest = url.partition("://")
        authority, _, path = rest.partition("/")
        return self.pool(f"{scheme}://{authority}").request(method, "/" + path, headers, body)

    def pool(self, origin: str) -> ConnectionPool:
        pool = self._pools.get(origin)
        if pool is None:
            if len(self._pools) >= self._max_pools:
                self._pools.pop(next(iter(self._pools))).close()
            pool = self._pools[origin] = ConnectionPool(
                origin, self._connect_timeout, self._timeout, ssl_context=self._ssl_context
            )
        return pool


class _PeerClosed(Exception):
    """The peer closed the connection in the middle of an answer."""


class _Reader:
    """Buffered reads from one socket, each bounded by the exchange's deadline."""

    __slots__ = ("_sock", "_deadline", "_peer", "buffer", "received")

    def __init__(self, sock: socket.socket, deadline: float, peer: str) -> None:
        self._sock = sock
        self._deadline = deadline
        self._peer = peer
        self.buffer = bytearray()
        self.received = False

    def fill(self) -> None:
        self._sock.settimeout(_remaining(self._deadline))
        chunk = self._sock.recv(RECV_BYTES)
        if not chunk:
            raise _PeerClosed("connection closed by peer")
        self.received = True
        self.buffer += chunk

    def until(self, marker: bytes, limit: int) -> bytes:
        """The bytes before ``marker`` (consumed with it)."""
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise HTTPFailure(f"{self._peer}: answer head too large")
            self.fill()
        data = bytes(self.buffer[:end])
        del self.buffer[: end + len(marker)]
        return data

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self.fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def to_close(self) -> bytes:
        try:
            while True:
                self.fill()
        except _PeerClosed:
            data = bytes(self.buffer)
            self.buffer.clear()
            return data


def _read_response(reader: _Reader, method: str) -> tuple[Response, bool]:
    while True:
        version, status, headers = _read_head(reader)
        if not 100 <= status < 200:
            break  # informational answers (100 Continue) precede the real one
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in headers.get("transfer-encoding", "").lower():
        body = _read_chunked(reader)
    elif "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise HTTPFailure(f"bad Content-Length {headers['content-length']!r}") from None
        body = reader.exactly(length)
    else:
        return Response(status, headers, reader.to_close()), False
    keep_alive = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    return Response(status, headers, body), keep_alive and not reader.buffer


def _read_head(reader: _Reader) -> tuple[str, int, dict[str, str]]:
    lines = reader.until(b"\r\n\r\n", MAX_HEAD_BYTES).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise HTTPFailure(f"not an HTTP answer: {lines[0][:80]!r}")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return version, int(code), headers


def _read_chunked(reader: _Reader) -> bytes:
    parts: list[bytes] = []
    while True:
        size_line = reader.until(b"\r\n", MAX_HEAD_BYTES).split(b";", 1)[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise HTTPFailure(f"bad chunk size {size_line[:20]!r}") from None
        if size == 0:
            while reader.until(b"\r\n", MAX_HEAD_BYTES):
                pass  # trailers
            return b"".join(parts)
        parts.append(reader.exactly(size))
        reader.exactly(2)


def _remaining(deadline: float) -> float:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise HTTPTimeout("deadline passed")
    return remaining
