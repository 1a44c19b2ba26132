"""The gunicorn worker class of connection nodes.

gevent-websocket's worker, plus what a connection node needs around the
WSGI server: start the private router once the app is loaded, and on a
graceful stop (TERM, HUP of the master, max-requests) hand every client's
unacknowledged notifications to storage and close them with 1012 before
gunicorn's graceful timeout ends.
"""

from __future__ import annotations

from typing import Any

import gevent
from gunicorn.workers.ggevent import GeventPyWSGIWorker

from autopush_flask.connection.websocket import PushWebSocketHandler

SHUTDOWN_MARGIN_SECONDS = 2.0
STOP_POLL_SECONDS = 0.1


class ConnectionWorker(GeventPyWSGIWorker):
    wsgi_handler = PushWebSocketHandler

    def run(self) -> None:
        app: Any = self.wsgi
        if hasattr(app, "node"):
            app.start()
            gevent.spawn(self._shut_down_when_stopping, app.node)
        super().run()

    def _shut_down_when_stopping(self, node: Any) -> None:
        while self.alive:
            gevent.sleep(STOP_POLL_SECONDS)
        node.shutdown(timeout=max(1.0, self.cfg.graceful_timeout - SHUTDOWN_MARGIN_SECONDS))
