"""What a node's request handlers share: settings, storage, keys, metrics.

Built once per worker process by the app factories (after gunicorn forks,
so each worker gets its own DynamoDB client) and kept in
``app.extensions``; handlers reach it through ``services()``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from autopush_flask import __version__
from autopush_flask.config import CONNECTION, Settings
from autopush_flask.crypto import CryptoKeys
from autopush_flask.db import Storage, create_storage
from autopush_flask.logging import log_fields, setup_logging
from autopush_flask.metrics import create_metrics

EXTENSION_KEY = "autopush"
COMPONENTS = {CONNECTION: "autoconnect"}
DEFAULT_COMPONENT = "autoendpoint"


@dataclass
class Services:
    settings: Settings
    storage: Storage
    crypto_keys: CryptoKeys
    metrics: Any
    log: logging.Logger
    client_count: Callable[[], int] = field(default=lambda: 0)

    @property
    def component(self) -> str:
        return COMPONENTS.get(self.settings.node_type, DEFAULT_COMPONENT)


def build_services(settings: Settings, metrics: Any = None) -> Services:
    """Logging, metrics, storage (tables created when configured) and keys."""
    component = COMPONENTS.get(settings.node_type, DEFAULT_COMPONENT)
    log = setup_logging(
        component, __version__, level=settings.log_level, human=settings.human_logs,
        crypto_keys=CryptoKeys(settings.crypto_keys),  # keys the logged uaid_hash alike on every node
    )
    if settings.crypto_keys_generated:
        log.warning(
            "AUTOPUSH_CRYPTO_KEYS is not set: using a generated key; endpoints will not "
            "survive a restart and other nodes cannot read them",
            extra=log_fields(setting="AUTOPUSH_CRYPTO_KEYS"),
        )
    if settings.sentry_dsn:
        _start_sentry(settings)
    if metrics is None:
        metrics = create_metrics(
            settings.statsd_host, settings.statsd_port, settings.statsd_prefix, settings.statsd_tags
        )
    storage = create_storage(settings, metrics)
    created = storage.setup()
    for table in created:
        log.info("Created table", extra=log_fields(table=table))
    return Services(settings, storage, CryptoKeys(settings.crypto_keys), metrics, log)


def _start_sentry(settings: Settings) -> None:
    """Errors and error-level logs go to Sentry too (process-wide, like logging)."""
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn, environment=settings.env, release=__version__,
        integrations=[FlaskIntegration()], send_default_pii=False,
        # Frame locals hold endpoint tokens, UAIDs and keys; logs never do.
        include_local_variables=False,
    )


def install(app: Flask, node_services: Services) -> None:
    app.extensions[EXTENSION_KEY] = node_services


def services() -> Services:
    """The current app's services (inside a request or app context)."""
    return current_app.extensions[EXTENSION_KEY]
