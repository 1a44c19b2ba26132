"""Health and version routes served by both node types (docs/protocol.md#health).

Load balancers poll ``/__lbheartbeat__`` (no dependencies); ``/health`` and
``/__heartbeat__`` check the tables so an operator sees a broken database.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable
from pathlib import Path

from flask import Blueprint, Response, current_app, jsonify
from flask.sansio.blueprints import BlueprintSetupState

from autopush_flask import __version__
from autopush_flask.services import services

VERSION_FILE = Path(__file__).resolve().parents[1] / "version.json"
# Seconds one table check answers for: a dead database shows within this.
TABLE_CHECK_MAX_AGE = 3.0
CACHE_KEY = "autopush_table_health"

health = Blueprint("health", __name__)


@health.get("/status")
def status() -> Response:
    return jsonify(status="OK", version=__version__)


class TableCheckCache:
    """The tables' health, checked at most once per ``max_age`` seconds per worker.

    ``/health`` and ``/__heartbeat__`` are public: without this every request
    would cost two DescribeTable calls. Greenlets arriving while a check runs
    wait for it and share its answer instead of starting their own.
    """

    def __init__(self, max_age: float = TABLE_CHECK_MAX_AGE, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age = max_age
        self._clock = clock
        self._lock = threading.Lock()  # a gevent lock in a patched worker
        self._checked_at = -math.inf
        self._tables: dict[str, dict[str, str]] = {}

    def get(self, check: Callable[[], dict[str, dict[str, str]]]) -> dict[str, dict[str, str]]:
        if not self._stale():
            return self._tables
        with self._lock:
            if self._stale():
                self._tables = check()
                self._checked_at = self._clock()
            return self._tables

    def _stale(self) -> bool:
        return self._clock() - self._checked_at >= self._max_age


@health.record_once
def _install_cache(state: BlueprintSetupState) -> None:
    state.app.extensions[CACHE_KEY] = TableCheckCache()


@health.get("/health")
@health.get("/__heartbeat__")
def health_check() -> tuple[Response, int]:
    node = services()
    tables = current_app.extensions[CACHE_KEY].get(node.storage.check_health)
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
