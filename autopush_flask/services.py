"""What a node's request handlers share: settings, storage, keys, metrics.

Built once per worker process by the app factories (after gunicorn forks,
so each worker gets its own store connections) and kept in
``app.extensions``; handlers reach it through ``services()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from flask import Flask, current_app

from autopush_flask import __version__
from autopush_flask.config import CONNECTION, Settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Storage, StorageError, create_storage
from autopush_flask.logging import log_fields, setup_logging
from autopush_flask.metrics import build_metrics

EXTENSION_KEY = "autopush"
# Seconds between table set-up attempts of a worker that booted while the
# store was unavailable: doubling up to the last, so the worker serves again
# within ~5 s of the store's return and costs it a few describe calls per
# 5 s meanwhile.
FIRST_SETUP_RETRY_SECONDS = 0.5
LAST_SETUP_RETRY_SECONDS = 5.0
# Seconds between calls of the store's periodic duties (switching monthly
# tables, purging expired rows); each duty keeps its own, longer, schedule.
MAINTAIN_SECONDS = 10.0
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

    def storage_ready(self) -> bool:
        """False while a worker that booted during a store outage has not set its store up yet."""
        return self.storage.is_ready()

    @property
    def component(self) -> str:
        return COMPONENTS.get(self.settings.node_type, DEFAULT_COMPONENT)


def build_services(settings: Settings, metrics: Any = None) -> Services:
    """Logging, metrics, storage (tables created when configured) and keys."""
    component = COMPONENTS.get(settings.node_type, DEFAULT_COMPONENT)
    log = setup_logging(
        component,
        __version__,
        level=settings.log_level,
        human=settings.human_logs,
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
        metrics = build_metrics(settings)
    storage = _open_storage(settings, metrics, log)
    return Services(settings, storage, CryptoKeys(settings.crypto_keys), metrics, log)


def _open_storage(settings: Settings, metrics: Any, log: logging.Logger) -> Storage:
    """The worker's store, set up now or, while it is unavailable or throttled, in the background.

    A worker that could not set its store up used to exit with gunicorn's
    "worker failed to boot" status, and the master then shut down with all
    its healthy workers. Built ``gated``, the store refuses data operations
    as unavailable until its set-up succeeds (503s, refused upgrades).
    Raises ``StorageError`` for what waiting cannot fix (bad credentials,
    missing tables or schema that may not be created): the worker must not boot.
    """
    storage = create_storage(settings, metrics, gated=True)
    try:
        _set_up(storage, log)
    except StorageError as error:
        if not error.retryable:
            raise
        log.warning(
            "storage failure",
            extra=log_fields(error=f"store not set up at start-up, retrying in the background: {error}"),
        )
        retry = threading.Thread(target=_set_up_later, args=(storage, log))
        retry.daemon = True
        retry.start()
    duties = threading.Thread(target=_maintain_forever, args=(storage, log))
    duties.daemon = True
    duties.start()
    return storage


def _maintain_forever(storage: Storage, log: logging.Logger) -> None:
    """The store's periodic duties, in their own greenlet so nothing waits on them."""
    while True:
        time.sleep(MAINTAIN_SECONDS)
        if not storage.is_ready():
            continue
        try:
            storage.maintain()
        except StorageError as error:
            log.warning("storage failure", extra=log_fields(error=f"periodic duty: {error}"))
        except Exception:  # tried again at the next round
            log.exception("storage duty failed")


def _set_up(storage: Storage, log: logging.Logger) -> None:
    for table in storage.set_up():
        log.info("Created table", extra=log_fields(table=table))


def _set_up_later(storage: Storage, log: logging.Logger) -> None:
    """Retry the set-up until it works; the store then lets data operations through.

    Runs as a greenlet in a gevent worker (``threading`` is patched there).
    """
    delay = FIRST_SETUP_RETRY_SECONDS
    while True:
        time.sleep(delay)
        try:
            _set_up(storage, log)
        except StorageError as error:
            log.warning("storage failure", extra=log_fields(error=f"store set-up: {error}"))
            delay = min(delay * 2, LAST_SETUP_RETRY_SECONDS)
            continue
        return


def _start_sentry(settings: Settings) -> None:
    """Errors and error-level logs go to Sentry too (process-wide, like logging)."""
    import sentry_sdk
    from sentry_sdk.integrations.flask import FlaskIntegration

    sentry_sdk.init(
        dsn=settings.sentry_dsn,
        environment=settings.env,
        release=__version__,
        integrations=[FlaskIntegration()],
        send_default_pii=False,
        # Frame locals hold endpoint tokens, UAIDs and keys; logs never do.
        include_local_variables=False,
    )


def install(app: Flask, node_services: Services) -> None:
    app.extensions[EXTENSION_KEY] = node_services


def services() -> Services:
    """The current app's services (inside a request or app context)."""
    return current_app.extensions[EXTENSION_KEY]
