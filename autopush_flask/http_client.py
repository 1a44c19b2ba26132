"""Pooled keep-alive HTTP/1.1 for the calls on every push's path, on geventhttpclient.

A direct notification costs one DynamoDB request and one ``PUT /push`` to a
connection node. Both go through geventhttpclient (docs/architecture.md#dependency-notes):
gevent sockets, each request written at once, answers parsed by its C
parser. This module adds what its callers need around it: one bounded pool
per origin, a deadline for the whole exchange, a ``Host`` header that is also
what gets signed (IPv6 literals in brackets, IDNA names as ASCII), and one
pair of exceptions.

Repeats. geventhttpclient checks a pooled connection before reusing it: one
the peer closed while idle is dropped and nothing is sent on it. It repeats
an idempotent request (``PUT``) whose connection closed before any answer,
on another connection, up to ``concurrency`` + 1 times, all within the
deadline (in practice once: the next connection gets the answer, or is
refused by a node that went away). The peer may have read the first copy before dying, so
this is only safe for requests that say the same thing twice: ``PUT /push``
carries the message's one version, which the connection node recognises as
a repeat; ``PUT /notif`` only asks for a storage check. A ``POST`` (DynamoDB)
is never repeated here: it fails, and the storage retry policy decides
(docs/architecture.md#storage-errors).

Proxies are the caller's choice (``proxies.Proxy``; docs/operations.md#http-proxies):
DynamoDB's pool takes the one boto3 would use, the connection nodes' pools
never take one.
"""

from __future__ import annotations

import ipaddress
import socket
import weakref
from dataclasses import dataclass
from urllib.parse import urlsplit

import gevent
from gevent.hub import Hub
from geventhttpclient import HTTPClient
from geventhttpclient.header import Headers
from geventhttpclient.response import HTTPParseError

from autopush_flask.proxies import Proxy

DEFAULT_CONCURRENCY = 100  # connections per origin, in use or idle
DEFAULT_MAX_POOLS = 100  # origins per PoolManager


class HTTPFailure(Exception):
    """The exchange failed at the network level or the answer was not HTTP."""


class HTTPTimeout(HTTPFailure):
    """Connecting or answering took longer than allowed."""


@dataclass(slots=True)
class Response:
    status: int
    body: bytes
    _fields: Headers

    def header(self, name: str) -> str | None:
        """A header's value, the name in any case; None when absent or repeated."""
        value = self._fields.get(name)
        return value if isinstance(value, str) else None


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
        # client per hub, i.e. one in a gevent worker, one per thread elsewhere
        # (tests, tools) that shares a storage client between threads.
        self._clients: weakref.WeakKeyDictionary[Hub, HTTPClient] = weakref.WeakKeyDictionary()

    def request(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes = b"") -> Response:
        """One exchange; ``Host`` and ``Content-Length`` are added here."""
        hub = gevent.get_hub()
        client = self._clients.get(hub) or self._replace(hub, None)
        fields = dict(headers)
        fields["Host"] = self.host_header
        deadline = gevent.Timeout(self._timeout)
        deadline.start()
        try:
            answer = client.request(method, path, body=body, headers=fields)
            data = answer.read()
            return Response(answer.status_code, data, answer.info())
        except gevent.Timeout as error:
            if error is not deadline:
                raise
            # Cut short anywhere, even between taking a connection and
            # handing it back: the next requests get a fresh pool.
            self._replace(hub, client)
            raise HTTPTimeout(f"{self.host_header}: timed out") from None
        except TimeoutError as error:
            raise HTTPTimeout(f"{self.host_header}: timed out") from error
        except (OSError, HTTPParseError, RuntimeError, ValueError) as error:
            raise HTTPFailure(f"{self.host_header}: {_describe(error)}") from error
        finally:
            deadline.close()

    def close(self) -> None:
        for client in list(self._clients.values()):
            client.close()

    def _new_client(self) -> HTTPClient:
        origin, proxy = self.origin, self._proxy
        return HTTPClient(
            origin.host,
            port=origin.port,
            ssl=origin.scheme == "https",
            # ssl_options turn TLS on whatever ``ssl`` says: only for https
            ssl_options={"ca_certs": self._ca_file} if self._ca_file and origin.scheme == "https" else None,
            connection_timeout=self._connect_timeout,
            network_timeout=self._timeout,
            concurrency=self._concurrency,
            proxy_host=proxy.host if proxy else None,
            proxy_port=proxy.port if proxy else None,
            proxy_user=proxy.user if proxy else None,
            proxy_password=proxy.password if proxy else None,
        )

    def _replace(self, hub: Hub, client: HTTPClient | None) -> HTTPClient:
        """A new client for ``hub``, closing ``client`` if it is still the current one."""
        current = self._clients.get(hub)
        if current is not None and current is not client:
            return current  # another greenlet replaced it already
        fresh = self._clients[hub] = self._new_client()
        if client is not None:
            client.close()
        return fresh


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
