"""The admin view: a private, token-protected look into a connection node (docs/operations.md#admin-view).

Off unless ``AUTOPUSH_ADMIN_TOKEN`` is set. Then one worker of the node
serves a small HTML view and its JSON twin on
``AUTOPUSH_ADMIN_BIND:AUTOPUSH_ADMIN_PORT`` (``server.py``): every worker's
clients, Megaphone versions and recent errors (``workers.py``, ``recent.py``),
and for one UAID its record, channels and stored messages' counts and ages
(``uaid.py``), never a payload. The connection node builds it with
``admin_listener``; this package imports nothing of the connection node.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import requests

from autopush_flask import __version__
from autopush_flask.admin.context import AdminContext
from autopush_flask.admin.recent import RecentErrors
from autopush_flask.admin.server import AdminListener
from autopush_flask.admin.workers import WorkerTour, worker_count, worker_report
from autopush_flask.config import Settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db.interface import Storage
from autopush_flask.logging import Redactor, uaid_hash_key
from autopush_flask.node_auth import RouterRequestKeys

__all__ = [
    "AdminContext",
    "AdminListener",
    "RecentErrors",
    "WorkerTour",
    "admin_listener",
    "worker_report",
]


def admin_listener(
    settings: Settings,
    storage: Storage,
    crypto_keys: CryptoKeys,
    request_keys: RouterRequestKeys,
    http: requests.Session,
    verify: str | bool,
    slot: int,
    local_report: Callable[[], dict[str, Any]],
) -> AdminListener:
    """The admin view of the connection worker in ``slot`` (``settings.admin_token`` must be set)."""
    if not settings.admin_token:
        raise ValueError("the admin view needs AUTOPUSH_ADMIN_TOKEN")
    workers = worker_count()
    tour = WorkerTour(
        own_slot=slot,
        workers=workers,
        node_id_of=lambda other: settings.node_id(settings.router_port + other),
        request_keys=request_keys,
        http=http,
        verify=verify,
        connect_timeout=settings.node_connect_timeout or 1.0,
        local_report=local_report,
    )
    redactor = Redactor(uaid_hash_key(crypto_keys))
    about = {
        "hostname": settings.hostname or socket.gethostname(),
        "version": __version__,
        "worker_count": workers,
        "served_by_slot": slot,
    }
    # Imported here: a node without the admin view never loads its Flask app.
    from autopush_flask.admin.app import create_admin_app

    app = create_admin_app(AdminContext(settings.admin_token, storage, tour.run, redactor.uaid_hash, about))
    return AdminListener(app, settings.admin_bind, settings.admin_port, slot)
