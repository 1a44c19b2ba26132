"""The endpoint node's Flask app factory."""

from __future__ import annotations

from flask import Flask
from werkzeug.middleware.proxy_fix import ProxyFix

from autopush_flask.config import Settings
from autopush_flask.endpoint.body_limits import BodyLimits
from autopush_flask.endpoint.diagnostics import diagnostics
from autopush_flask.endpoint.errors import install_error_handlers
from autopush_flask.endpoint.headers import install_response_headers
from autopush_flask.endpoint.message import message
from autopush_flask.endpoint.openapi import openapi
from autopush_flask.endpoint.registration import registration
from autopush_flask.endpoint.state import STATE_KEY, build_state
from autopush_flask.endpoint.webpush import webpush
from autopush_flask.health import health
from autopush_flask.services import Services, build_services, install


def create_endpoint_app(settings: Settings, node_services: Services | None = None) -> Flask:
    """An endpoint node for ``settings`` (storage set up unless services are given)."""
    app = Flask("autopush_flask.endpoint", static_folder=None)
    node_services = node_services or build_services(settings)
    install(app, node_services)
    app.extensions[STATE_KEY] = build_state(node_services)
    for blueprint in (health, diagnostics, webpush, message, registration, openapi):
        app.register_blueprint(blueprint)
    install_error_handlers(app)
    install_response_headers(app, settings)
    # Routes that read a body set their own cap (body_limits.read_body); this
    # one covers any other reader.
    app.config["MAX_CONTENT_LENGTH"] = settings.max_data
    if settings.proxy_fix:
        # Behind exactly one reverse proxy (deploy/nginx.conf) that sets these.
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1)  # type: ignore[method-assign]
    app.wsgi_app = BodyLimits(app.wsgi_app, settings.body_min_rate, settings.body_grace)  # type: ignore[method-assign]
    return app
