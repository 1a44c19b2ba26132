"""WSGI entry points for gunicorn:

    gunicorn -c gunicorn.conf.py wsgi:connection_app
    gunicorn wsgi:endpoint_app

Each app is built on first access, so serving one never builds the other.

``create_app`` is what the Flask CLI finds here when run from the repository
root (``flask maintain-tables`` and the other commands of
``autopush_flask/cli.py``); it builds neither node's app and opens no storage.
The commands read the settings themselves and do not require crypto keys:
only ``endpoint-diagnostic`` deciphers tokens, and it refuses without them.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any

from autopush_flask.config import CONNECTION, ENDPOINT, Settings, SettingsError, load_settings
from autopush_flask.db import StorageError

# gunicorn's "worker failed to boot" status: the master stops instead of
# restarting a worker that can never start. Kept for what an operator must
# fix (a bad setting, bad credentials, a missing table that may not be
# created); the master stops with its healthy workers too, so a store that is
# only unavailable or throttled does not get here: the worker boots, refuses
# storage work and finishes its set-up when the store is back (db/dynamodb/startup.py).
BOOT_ERROR_STATUS = 3


def _build(node_type: str, factory: Callable[[Settings], Any]) -> Any:
    """Build an app, turning a bad setting or an unusable database into one line."""
    try:
        return factory(load_settings(node_type, os.environ))
    except SettingsError as error:
        print(error, file=sys.stderr)
    except StorageError as error:
        print(f"storage not usable at start-up: {error}", file=sys.stderr)
    raise SystemExit(BOOT_ERROR_STATUS)


def create_app() -> Any:
    """The Flask CLI's app: the operations commands only."""
    from autopush_flask.cli import create_cli_app

    return create_cli_app()


def __getattr__(name: str) -> Any:
    if name == "connection_app":
        from autopush_flask.connection.app import create_connection_app

        return _build(CONNECTION, create_connection_app)
    if name == "endpoint_app":
        from autopush_flask.endpoint.app import create_endpoint_app

        return _build(ENDPOINT, create_endpoint_app)
    raise AttributeError(name)
