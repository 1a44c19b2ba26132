"""The connection node's app factory.

The WSGI object gunicorn serves is a ``ConnectionApp``: WebSocket upgrades
to ``/`` go straight to a ``ClientConnection`` (no Flask request context is
kept alive for the hours a browser stays connected); every other request
goes to the public Flask app (health routes). The private HTTP API
(``node_api.py``) is a second Flask app, served on the worker's router port by ``node.start``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable

from flask import Flask

from autopush_flask.config import Settings
from autopush_flask.connection.node import ConnectionNode
from autopush_flask.connection.node_api import NODE_KEY, node_api, protect
from autopush_flask.health import health
from autopush_flask.services import Services, build_services, install

SLOT_VARIABLE = "AUTOPUSH_WORKER_SLOT"
SUBPROTOCOL = "push-notification"


class ConnectionApp:
    """WSGI entry of a connection worker."""

    def __init__(self, public_app: Flask, node_api_app: Flask, node: ConnectionNode) -> None:
        self.public_app = public_app
        self.node_api_app = node_api_app
        self.node = node

    @property
    def current_app(self) -> ConnectionApp:
        """gevent-websocket reports socket closes here; without it, it builds a
        throw-away class on every close."""
        return self

    def on_close(self, reason: str) -> None:
        """Closes are handled by each ``ClientConnection``."""

    def app_protocol(self, path: str) -> str | None:
        """gevent-websocket echoes this subprotocol when the client offers it."""
        return SUBPROTOCOL if path == "/" else None

    def start(self, host: str | None = None) -> None:
        """Serve the router on ``host`` (default ``AUTOPUSH_ROUTER_BIND``) and start the timers."""
        self.node.start(self.node_api_app, host)

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        websocket = environ.get("wsgi.websocket")
        if websocket is not None and environ.get("PATH_INFO") == "/":
            user_agent = environ.get("HTTP_USER_AGENT", "")
            self.node.serve_client(websocket, user_agent)
            return []
        return self.public_app(environ, start_response)


def _flask_app(name: str, node_services: Services, node: ConnectionNode) -> Flask:
    app = Flask(name, static_folder=None)
    install(app, node_services)
    app.extensions[NODE_KEY] = node
    app.register_blueprint(health)
    return app


def create_connection_app(
    settings: Settings, node_services: Services | None = None, slot: int | None = None
) -> ConnectionApp:
    """A connection node for one worker; its slot picks its router port and node_id."""
    node_services = node_services or build_services(settings)
    if slot is None:
        slot = int(os.environ.get(SLOT_VARIABLE, "0"))
    node = ConnectionNode(node_services, slot)
    public_app = _flask_app("autopush_flask.connection", node_services, node)
    node_api_app = _flask_app("autopush_flask.connection.node_api", node_services, node)
    node_api_app.register_blueprint(node_api)
    protect(node_api_app, node.settings.router_max_requests, node.settings.max_data, node_services.metrics)
    return ConnectionApp(public_app, node_api_app, node)
