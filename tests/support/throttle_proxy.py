"""An HTTP proxy in front of the local DynamoDB that can answer "throttled".

Storage code under test talks to it over real HTTP; while ``throttling`` is
on, every request gets DynamoDB's ProvisionedThroughputExceededException, as
an overloaded table would answer.
"""

from __future__ import annotations

import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

THROTTLED_BODY = json.dumps(
    {
        "__type": "com.amazonaws.dynamodb.v20120810#ProvisionedThroughputExceededException",
        "message": "The level of configured provisioned throughput for the table was exceeded.",
    }
).encode()


THROTTLED_FIELDS = [("Content-Type", "application/x-amz-json-1.0")]
# Not passed on: this proxy frames its own answers and keeps its own connections.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length"}


class ThrottleProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.throttling = False
        # Operation names (e.g. {"PutItem"}) to throttle; None throttles every call.
        self.throttle_targets: set[str] | None = None
        self.requests = 0
        self.throttled = 0
        self._upstream = threading.local()  # each handler thread's connection to the local DynamoDB
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> ThrottleProxy:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests += 1
                target = self.headers.get("X-Amz-Target", "").rpartition(".")[2]
                if proxy.throttling and (proxy.throttle_targets is None or target in proxy.throttle_targets):
                    proxy.throttled += 1
                    self._reply(400, THROTTLED_BODY)
                    return
                status, fields, payload = proxy._forward(self.headers, body)
                self._reply(status, payload, fields)

            def _reply(self, status: int, payload: bytes, fields: list[tuple[str, str]] = THROTTLED_FIELDS) -> None:
                # The upstream's header fields (request id, CRC32, date), and
                # head and body in one write, as DynamoDB answers: written
                # apart, every answer would reach the client as two segments.
                head = f"HTTP/1.1 {status} {self.responses[status][0]}\r\n" + "".join(
                    f"{name}: {value}\r\n" for name, value in fields
                )
                self.wfile.write(f"{head}Content-Length: {len(payload)}\r\n\r\n".encode("latin-1") + payload)

        return Handler

    def _forward(self, headers: object, body: bytes) -> tuple[int, list[tuple[str, str]], bytes]:
        """One call upstream on this thread's keep-alive connection.

        A connection per call made the local DynamoDB accept and close one
        for every storage call; in the benchmarks that was CPU on the same
        two cores the measured nodes run on. A connection the local DynamoDB
        closed while idle fails before any answer: the call goes again once
        on a new one (nothing was read, so nothing was applied).
        """
        forwarded = {k: v for k, v in headers.items() if k.lower() not in ("host", "connection")}
        for attempt in (1, 2):
            connection = getattr(self._upstream, "connection", None)
            if connection is None:
                connection = self._upstream.connection = http.client.HTTPConnection(
                    "127.0.0.1", self.upstream_port, timeout=10
                )
            try:
                connection.request("POST", "/", body=body, headers=forwarded)
                response = connection.getresponse()
                fields = [(name, value) for name, value in response.getheaders() if name.lower() not in HOP_BY_HOP]
                return response.status, fields, response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError):
                connection.close()
                self._upstream.connection = None
                if attempt == 2:
                    raise
            except BaseException:
                connection.close()
                self._upstream.connection = None
                raise
        raise AssertionError("unreachable")
