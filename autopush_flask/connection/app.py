"""The connection node's Flask app factory."""

from __future__ import annotations

from flask import Flask

from autopush_flask.config import Settings
from autopush_flask.health import health
from autopush_flask.services import Services, build_services, install


def create_connection_app(settings: Settings, node_services: Services | None = None) -> Flask:
    """A connection node's public app for ``settings``."""
    app = Flask("autopush_flask.connection")
    install(app, node_services or build_services(settings))
    app.register_blueprint(health)
    # The WebSocket route and the per-worker private router register here.
    return app
