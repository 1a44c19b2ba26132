"""Serving the admin view from one worker of a connection node (docs/operations.md#admin-view).

With ``AUTOPUSH_ADMIN_TOKEN`` set, every worker tries to listen on
``AUTOPUSH_ADMIN_BIND:AUTOPUSH_ADMIN_PORT``; the first gets the port and the
others try again every ``BIND_RETRY_SECONDS``. Whichever holds it answers for
all: it asks its siblings over their router ports (``workers.py``). A worker
that stops lets the port go first thing, so a sibling or its replacement
takes over within a retry; no fixed slot is needed, which matters because a
``kill -HUP`` reload moves the workers to new slots
(docs/architecture.md#connection-node).
"""

from __future__ import annotations

import errno
import logging
import socket

import gevent
from flask import Flask
from gevent.pywsgi import WSGIServer

from autopush_flask.logging import log_fields

BIND_RETRY_SECONDS = 2.0
log = logging.getLogger("autopush.admin")


class AdminListener:
    """Serves ``app`` on ``host:port`` once this worker can bind it."""

    def __init__(self, app: Flask, host: str, port: int, slot: int, retry_seconds: float = BIND_RETRY_SECONDS) -> None:
        self.app = app
        self.host = host
        self.port = port
        self.slot = slot
        self.retry_seconds = retry_seconds
        self.server: WSGIServer | None = None
        self._greenlet: gevent.Greenlet | None = None

    @property
    def serving(self) -> bool:
        return self.server is not None

    def start(self) -> gevent.Greenlet:
        self._greenlet = gevent.spawn(self._serve_when_free)
        return self._greenlet

    def _serve_when_free(self) -> None:
        warned = False
        while self.server is None:
            try:
                self.server = self._listen()
            except OSError as error:
                # Another worker of the node holds the port: the normal case, not logged.
                if error.errno != errno.EADDRINUSE and not warned:
                    log.warning(
                        "Admin view cannot listen",
                        extra=log_fields(address=self.host, port=self.port, error=str(error)),
                    )
                    warned = True
                gevent.sleep(self.retry_seconds)
        log.info("Admin view listening", extra=log_fields(address=self.host, port=self.port, slot=self.slot))

    def _listen(self) -> WSGIServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            # Linux lets only one socket listen on the address all the same
            # (the other's listen() fails with EADDRINUSE); without it the
            # previous holder's TIME_WAIT connections would block the takeover.
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self.host, self.port))
            listener.listen(64)
        except OSError:
            listener.close()
            raise
        listener.setblocking(False)
        server = WSGIServer(listener, self.app, log=None)
        server.start()
        return server

    def stop(self) -> None:
        """Let the port go (first thing in a worker's graceful stop), so a sibling takes it."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)
            self._greenlet = None
        if self.server is not None:
            self.server.stop(timeout=1)
            self.server = None
