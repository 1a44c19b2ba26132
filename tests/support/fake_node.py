"""A scripted stand-in for a connection node's private router, over real HTTP.

Tests point a router record's ``node_id`` at it to make the endpoint meet a
busy node, a node that drops the connection, or a node whose client moves
away while the endpoint is talking to it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

ABORT = -1  # close the connection without answering


class FakeNode:
    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.bodies: list[bytes] = []  # of each request, in order
        # path prefix ("/push", "/notif") → status to answer, or ABORT
        self.answers: dict[str, int] = {"/push": 200, "/notif": 200}
        # called with the path before answering (e.g. to change the database)
        self.before_answer: Callable[[str], None] | None = None
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def paths(self, method: str = "PUT") -> list[str]:
        return [path for verb, path in self.requests if verb == method]

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        node = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_PUT(self) -> None:  # noqa: N802 - http.server naming
                node.bodies.append(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                node.requests.append(("PUT", self.path))
                if node.before_answer:
                    node.before_answer(self.path)
                status = next((s for p, s in node.answers.items() if self.path.startswith(p)), 404)
                if status == ABORT:
                    self.close_connection = True
                    self.connection.close()
                    return
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

        return Handler
