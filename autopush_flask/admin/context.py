"""What the admin view's handlers share: the parts it was built with, and its error answers."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Response, current_app, jsonify, render_template, request

from autopush_flask.db.interface import Storage

ADMIN_KEY = "autopush_admin"
log = logging.getLogger("autopush.admin")


@dataclass
class AdminContext:
    """What the views need, handed in by whoever serves the app."""

    token: str
    storage: Storage
    # ``WorkerTour.run``: {"workers", "unreachable", "absent_slots"}
    tour: Callable[[], dict[str, Any]]
    # The keyed hash the logs print for a UAID, to follow it into them.
    uaid_hash: Callable[[str], str]
    about: dict[str, Any] = field(default_factory=dict)


def context() -> AdminContext:
    return current_app.extensions[ADMIN_KEY]


def wants_json() -> bool:
    return request.path.startswith("/api/")


def error_response(status: int, message: str) -> Response:
    """The same error for both audiences: JSON under ``/api/``, else a small page."""
    if wants_json():
        response = jsonify(error=status, message=message)
    else:
        response = Response(render_template("error.html", status=status, message=message), mimetype="text/html")
    response.status_code = status
    return response
