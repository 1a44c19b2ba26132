"""Health and version routes served by both node types (SPEC §4.13).

Load balancers poll ``/__lbheartbeat__`` (no dependencies); ``/health`` and
``/__heartbeat__`` check the tables so an operator sees a broken database.
"""

from __future__ import annotations

import json
from pathlib import Path

from flask import Blueprint, Response, jsonify

from autopush_flask import __version__
from autopush_flask.services import services

VERSION_FILE = Path(__file__).resolve().parents[1] / "version.json"

health = Blueprint("health", __name__)


@health.get("/status")
def status() -> Response:
    return jsonify(status="OK", version=__version__)


@health.get("/health")
@health.get("/__heartbeat__")
def health_check() -> tuple[Response, int]:
    node = services()
    tables = node.storage.check_tables()
    healthy = all(entry["status"] == "OK" for entry in tables.values())
    body = {
        "status": "OK" if healthy else "NOT OK",
        "version": __version__,
        "clients": node.client_count(),
        **tables,
    }
    return jsonify(body), 200 if healthy else 503


@health.get("/__lbheartbeat__")
def lbheartbeat() -> Response:
    return Response(b"", status=200)


@health.get("/__version__")
def version() -> Response:
    try:
        text = VERSION_FILE.read_text()
        json.loads(text)
    except (OSError, ValueError):
        return Response(b"", status=500)
    return Response(text, status=200, mimetype="application/json")
