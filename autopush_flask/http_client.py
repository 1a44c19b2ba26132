"""Pooled keep-alive HTTP/1.1 for the calls on every push's path.

A direct notification costs one DynamoDB request and one ``PUT /push`` to a
connection node. This module gives both one bounded pool per origin, a
deadline for the whole exchange (waiting for a connection, connecting,
writing, reading the answer, any repeat), a ``Host`` header that is also
what gets signed (IPv6 literals in brackets, IDNA names as ASCII), and one
pair of exceptions.

Two ways to carry an exchange (docs/architecture.md#dependency-notes):

- through a proxy (DynamoDB's pool, when ``HTTPS_PROXY``/``HTTP_PROXY``
  apply; docs/operations.md#http-proxies): geventhttpclient, which tunnels
  https through ``CONNECT`` and sends plain http in absolute form;
- otherwise, the common case, a short exchange written here: the request
  head joined once and written with its body in one ``send``, the answer's
  head split with a few string operations. Two endpoint workers, identical
  but for this module, fed in the same window: geventhttpclient used 12.5 %
  more CPU per direct notification, past the 10 % the dependency notes set
  for keeping our own.

Repeats. A pooled connection is checked before reuse: one the peer closed
while idle is dropped and nothing is sent on it. A ``PUT`` whose
connection closed before any byte of an answer is sent again on another
connection, at most ``MAX_REPEATS`` times, within the deadline. The peer
may have read the first copy before dying, so this is only safe for
requests that say the same thing twice: ``PUT /push`` carries the
message's one version, which the connection node recognises as a repeat;
``PUT /notif`` only asks for a storage check. A ``POST`` (DynamoDB) is never
repeated here: it fails, and the storage retry policy decides
(docs/architecture.md#storage-errors). Through a proxy, geventhttpclient
repeats an idempotent request up to ``concurrency`` + 1 times instead.
"""

from __future__ import annotations

import ipaddress
import re
import select
import socket
import weakref
from collections import deque
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent
import gevent.monkey
import gevent.socket
import gevent.ssl
from gevent.hub import Hub
from gevent.lock import BoundedSemaphore
from geventhttpclient import HTTPClient
from geventhttpclient.header import Headers
from geventhttpclient.response import HTTPParseError

from autopush_flask.proxies import Proxy

DEFAULT_CONCURRENCY = 100  # connections per origin, in use or idle
DEFAULT_MAX_POOLS = 100  # origins per PoolManager
MAX_HEAD_BYTES = 64 * 1024  # an answer's head (status line and headers)
RECV_BYTES = 64 * 1024
MAX_REPEATS = 2  # copies of an idempotent request beyond the first (see the module doc)
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
# A header value as sent: no line breaks (they would start a header of their own).
_FIELD_VALUE = re.compile(r"[^\r\n\x00]*")


class HTTPFailure(Exception):
    """The exchange failed at the network level or the answer was not HTTP."""


class HTTPTimeout(HTTPFailure):
    """Connecting or answering took longer than allowed."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    _fields: dict[str, str | None]  # lower-case names; None for a repeated header

    def header(self, name: str) -> str | None:
        """A header's value, the name in any case; None when absent or repeated."""
        return self._fields.get(name.lower())


def _fields_of(headers: Headers) -> dict[str, str | None]:
    fields: dict[str, str | None] = {}
    for name, value in headers.items():
        key = name.lower()
        fields[key] = None if key in fields else value
    return fields


@dataclass(slots=True, frozen=True)
class Origin:
    scheme: str
    host: str  # as connected to: an IPv6 literal without brackets, a name in IDNA ASCII
    port: int
    host_header: str  # as sent and signed: brackets around IPv6, no default port

    @classmethod
    def parse(cls, origin: str) -> Origin:
        """``scheme://host[:port]``; raises ``HTTPFailure`` for anything else."""
        try:
            parts = urlsplit(origin)
            port = parts.port
            host = _ascii_host(parts.hostname or "")
        except (ValueError, UnicodeError):
            raise HTTPFailure(f"not an http(s) origin: {origin[:100]!r}") from None
        if parts.scheme not in ("http", "https") or not host or parts.path not in ("", "/"):
            raise HTTPFailure(f"not an http(s) origin: {origin[:100]!r}")
        default_port = 443 if parts.scheme == "https" else 80
        port = port or default_port
        bracketed = f"[{host}]" if ":" in host else host
        host_header = bracketed if port == default_port else f"{bracketed}:{port}"
        return cls(parts.scheme, host, port, host_header)


def _ascii_host(host: str) -> str:
    """IPv6 literals as they are (``urlsplit`` took the brackets off), names in IDNA ASCII."""
    if ":" in host:
        return str(ipaddress.IPv6Address(host.partition("%")[0]))
    return host.encode("idna").decode("ascii").lower() if not host.isascii() else host.lower()


class ConnectionPool:
    """Keep-alive connections to one origin (``scheme://host[:port]``), at most ``concurrency`` at once.

    ``timeout`` bounds the whole exchange: waiting for a free connection,
    connecting (itself bounded by ``connect_timeout``), writing and reading
    the answer, and any repeat. https origins are verified against
    ``ca_file`` (a CA bundle path), else the system trust store.
    """

    def __init__(
        self,
        origin: str,
        connect_timeout: float,
        timeout: float,
        concurrency: int = DEFAULT_CONCURRENCY,
        ca_file: str | None = None,
        proxy: Proxy | None = None,
    ) -> None:
        self.origin = Origin.parse(origin)
        self.host_header = self.origin.host_header
        self._timeout = timeout
        self._connect_timeout = connect_timeout
        self._concurrency = concurrency
        self._ca_file = ca_file
        self._proxy = proxy
        # gevent sockets belong to the hub of the thread that made them: one
        # set of connections per hub, i.e. one in a gevent worker, one per
        # thread elsewhere (tests, tools) that shares a storage client.
        self._per_hub: weakref.WeakKeyDictionary[Hub, HTTPClient | _Connections] = weakref.WeakKeyDictionary()

    def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        """One exchange; ``Host`` and ``Content-Length`` are added here."""
        hub = gevent.get_hub()
        carrier = self._per_hub.get(hub) or self._replace(hub, None)
        deadline = gevent.Timeout(self._timeout)
        deadline.start()
        try:
            if isinstance(carrier, _Connections):
                return carrier.exchange(method, path, headers, body)
            fields = dict(headers)
            fields["Host"] = self.host_header
            answer = carrier.request(method, path, body=body, headers=fields)
            data = answer.read()
            return Response(answer.status_code, data, _fields_of(answer.info()))
        except gevent.Timeout as error:
            if error is not deadline:
                raise
            # Cut short anywhere, even between taking a connection and
            # handing it back: the next requests get a fresh pool.
            self._replace(hub, carrier)
            raise HTTPTimeout(f"{self.host_header}: timed out") from None
        except TimeoutError as error:
            raise HTTPTimeout(f"{self.host_header}: timed out") from error
        except HTTPFailure:
            raise
        except (OSError, HTTPParseError, RuntimeError, ValueError) as error:
            raise HTTPFailure(f"{self.host_header}: {_describe(error)}") from error
        finally:
            deadline.close()

    def close(self) -> None:
        for carrier in list(self._per_hub.values()):
            carrier.close()

    def _new_carrier(self) -> HTTPClient | _Connections:
        origin, proxy = self.origin, self._proxy
        if proxy is None:
            return _Connections(origin, self._connect_timeout, self._concurrency, self._ca_file)
        return HTTPClient(
            origin.host,
            port=origin.port,
            ssl=origin.scheme == "https",
            # ssl_options turn TLS on whatever ``ssl`` says: only for https
            ssl_options={"ca_certs": self._ca_file} if self._ca_file and origin.scheme == "https" else None,
            connection_timeout=self._connect_timeout,
            network_timeout=self._timeout,
            concurrency=self._concurrency,
            proxy_host=proxy.host,
            proxy_port=proxy.port,
            proxy_user=proxy.user,
            proxy_password=proxy.password,
        )

    def _replace(self, hub: Hub, carrier: HTTPClient | _Connections | None) -> HTTPClient | _Connections:
        """New connections for ``hub``, closing ``carrier``'s if it is still the current one."""
        current = self._per_hub.get(hub)
        if current is not None and current is not carrier:
            return current  # another greenlet replaced it already
        fresh = self._per_hub[hub] = self._new_carrier()
        if carrier is not None:
            carrier.close()
        return fresh


class _Connections:
    """One hub's keep-alive connections to an origin, and the exchange on them.

    The caller's deadline (a ``gevent.Timeout``) bounds everything here, so
    the sockets themselves have no timeout: a timeout per read would start a
    timer per read.
    """

    def __init__(self, origin: Origin, connect_timeout: float, concurrency: int, ca_file: str | None) -> None:
        self._origin = origin
        self._connect_timeout = connect_timeout
        self._slots = BoundedSemaphore(concurrency)
        self._idle: deque[gevent.socket.socket] = deque()
        self._tls = gevent.ssl.create_default_context(cafile=ca_file) if origin.scheme == "https" else None
        self._closed = False

    def exchange(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> Response:
        payload = self._request_bytes(method, path, headers, body)
        repeats = MAX_REPEATS if method in IDEMPOTENT_METHODS else 0
        with self._slots:
            while True:
                sock = self._take_idle() or self._connect()
                reader = _Reader(sock)
                try:
                    sock.sendall(payload)
                    response, keep_alive = _read_response(reader, method)
                except (OSError, _PeerClosed) as error:
                    sock.close()
                    if repeats and not reader.received:
                        repeats -= 1
                        continue  # closed before any answer: this request says the same thing twice
                    if isinstance(error, OSError):
                        raise
                    raise HTTPFailure(f"{self._origin.host_header}: {error}") from None
                except BaseException:
                    sock.close()
                    raise
                if keep_alive and not self._closed:
                    self._idle.append(sock)
                else:
                    sock.close()
                return response

    def close(self) -> None:
        self._closed = True
        while self._idle:
            self._idle.pop().close()

    def _request_bytes(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self._origin.host_header}", f"Content-Length: {len(body)}"]
        for name, value in headers:
            if not _FIELD_VALUE.fullmatch(value):
                raise HTTPFailure(f"invalid value for header field {name!r}")
            lines.append(f"{name}: {value}")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def _take_idle(self) -> gevent.socket.socket | None:
        """A pooled connection the peer has not closed: an idle one that is readable
        has been closed (or sent something unasked) and is dropped unused.

        Asked with the system's ``poll`` and no timeout, which never blocks:
        gevent's ``select`` calls the system's ``select`` first, which refuses
        a descriptor past 1024, as a worker holding thousands of browsers has
        (tests/unit/test_http_client.py).
        """
        while self._idle:
            sock = self._idle.pop()
            if not _readable_now(sock):
                return sock
            sock.close()
        return None

    def _connect(self) -> gevent.socket.socket:
        origin = self._origin
        sock = gevent.socket.create_connection((origin.host, origin.port), timeout=self._connect_timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=origin.host)
            sock.settimeout(None)  # the caller's deadline bounds the exchange
        except BaseException:
            sock.close()
            raise
        return sock


_system_poll = gevent.monkey.get_original("select", "poll")


def _readable_now(sock: gevent.socket.socket) -> bool:
    """Whether ``sock`` has input or an end waiting, asked without waiting."""
    poller = _system_poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class _PeerClosed(Exception):
    """The peer closed the connection before the answer was complete."""


class _Reader:
    """Buffered reads from one socket."""

    __slots__ = ("_sock", "buffer", "received")

    def __init__(self, sock: gevent.socket.socket) -> None:
        self._sock = sock
        self.buffer = bytearray()
        self.received = False

    def fill(self) -> None:
        chunk = self._sock.recv(RECV_BYTES)
        if not chunk:
            raise _PeerClosed("connection closed by peer" + (" mid-answer" if self.received else " without answer"))
        self.received = True
        self.buffer += chunk

    def until(self, marker: bytes, limit: int) -> bytes:
        """The bytes before ``marker`` (consumed with it)."""
        while (end := self.buffer.find(marker)) < 0:
            if len(self.buffer) > limit:
                raise HTTPFailure("answer head too large")
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
    """The answer and whether its connection may be kept."""
    while True:
        version, status, fields = _read_head(reader)
        if not 100 <= status < 200:
            break  # informational answers (100 Continue) precede the real one
    if method == "HEAD" or status in (204, 304):
        body = b""
    elif "chunked" in (fields.get("transfer-encoding") or "").lower():
        body = _read_chunked(reader)
    elif "content-length" in fields:
        length = fields["content-length"] or ""
        if not (length.isascii() and length.isdigit()):
            raise HTTPFailure(f"bad Content-Length {length[:20]!r}")
        body = reader.exactly(int(length))
    else:
        return Response(status, reader.to_close(), fields), False
    keep_alive = version == "HTTP/1.1" and (fields.get("connection") or "").lower() != "close"
    return Response(status, body, fields), keep_alive and not reader.buffer


def _read_head(reader: _Reader) -> tuple[str, int, dict[str, str | None]]:
    lines = reader.until(b"\r\n\r\n", MAX_HEAD_BYTES).decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
        raise HTTPFailure(f"not an HTTP answer: {lines[0][:80]!r}")
    fields: dict[str, str | None] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        fields[key] = None if key in fields else value.strip()
    return version, int(code), fields


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


class PoolManager:
    """One ``ConnectionPool`` per origin, for requests to many peers (connection nodes); never proxied."""

    def __init__(
        self,
        connect_timeout: float,
        timeout: float,
        max_pools: int = DEFAULT_MAX_POOLS,
        ca_file: str | None = None,
        concurrency: int = DEFAULT_CONCURRENCY,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._timeout = timeout
        self._max_pools = max_pools
        self._ca_file = ca_file
        self._concurrency = concurrency
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
                origin, self._connect_timeout, self._timeout, self._concurrency, ca_file=self._ca_file
            )
        return pool


def _describe(error: BaseException) -> str:
    if isinstance(error, socket.gaierror):
        return f"cannot resolve ({error})"
    return str(error) or type(error).__name__
