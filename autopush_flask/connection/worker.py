"""The gunicorn worker class of connection nodes.

gevent-websocket's worker, plus what a connection node needs around the
WSGI server: start the private node API once the app is loaded, and on a
graceful stop (TERM, HUP of the master, max-requests) hand every client's
unacknowledged notifications to storage and close them with 1012 before
gunicorn's graceful timeout ends.

With ``AUTOPUSH_SSL_KEY``/``AUTOPUSH_SSL_CERT`` gunicorn hands the server an
SSL context and clients connect with ``wss://``; ``TlsHandshakeServer``
bounds the handshake and drops failed ones quietly.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker, PyWSGIServer

from autopush_flask.connection.websocket import PushWebSocketHandler

# The node's stop deadline ends this long before gunicorn's graceful timeout,
# when the master kills the worker: time for the last closes and the exit.
# Whatever runs the master must give it longer than the graceful timeout
# (``docker stop --time``, Kubernetes' ``terminationGracePeriodSeconds``,
# systemd's ``TimeoutStopSec``: 30 s or more for the 25 s of
# ``gunicorn.conf.py``; Docker's default is 10 s), or the node is killed
# while storing its clients' unacknowledged notifications.
SHUTDOWN_MARGIN_SECONDS = 2.0
STOP_POLL_SECONDS = 0.1
# A TLS handshake takes one or two round trips; a client that has not
# finished it by then only holds a socket and a greenlet.
TLS_HANDSHAKE_TIMEOUT_SECONDS = 10.0


class TlsHandshakeServer(PyWSGIServer):
    """gunicorn's pywsgi server with a bounded, quiet TLS handshake.

    gevent runs the handshake with no timeout, and a failed one (plain HTTP
    to the TLS port, a port scanner, a client that gives up) escapes as an
    uncaught greenlet error: a traceback of ~1.3 KB on stderr per connection.
    """

    def wrap_socket_and_handle(self, client_socket: Any, address: Any) -> Any:
        client_socket.settimeout(TLS_HANDSHAKE_TIMEOUT_SECONDS)
        try:
            tls_socket = self.wrap_socket(client_socket, **self.ssl_args)
        except OSError:  # ssl.SSLError and timeouts; gevent closes the socket
            return None
        tls_socket.settimeout(None)
        with tls_socket:
            return self.handle(tls_socket, address)


class ConnectionWorker(GeventPyWSGIWorker):
    server_class = TlsHandshakeServer
    wsgi_handler = PushWebSocketHandler

    def run(self) -> None:
        # gevent records, for debugging, each greenlet's spawner and newest ten
        # spawning frames; for the greenlet of every connection that is ~0.3 KiB
        # held while it lasts (docs/performance.md#connection-memory).
        gevent.config.track_greenlet_tree = False
        app: Any = self.wsgi
        if hasattr(app, "node"):
            app.start()
            gevent.spawn(self._shut_down_when_stopping, app.node)
        super().run()

    def _shut_down_when_stopping(self, node: Any) -> None:
        while self.alive:
            gevent.sleep(STOP_POLL_SECONDS)
        node.shutdown(timeout=max(1.0, self.cfg.graceful_timeout - SHUTDOWN_MARGIN_SECONDS))
