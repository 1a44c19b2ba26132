"""The endpoint node's Flask app factory."""

from __future__ import annotations

from flask import Flask

from autopush_flask.config import Settings
from autopush_flask.health import health
from autopush_flask.services import Services, build_services, install


def create_endpoint_app(settings: Settings, node_services: Services | None = None) -> Flask:
    """An endpoint node for ``settings`` (storage set up unless services are given)."""
    app = Flask("autopush_flask.endpoint")
    install(app, node_services or build_services(settings))
    app.register_blueprint(health)
    # The webpush, message and bridge-registration blueprints register here.
    return app
