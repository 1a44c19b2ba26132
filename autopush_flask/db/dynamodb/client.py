"""The one DynamoDB client of a process, with the docs/architecture.md#storage-errors retry policy.

One client per worker process, created after fork and shared by all
greenlets (docs/architecture.md#storage): item operations go through the lean signed client of
``db/dynamodb/wire.py``, table administration through a boto3 low-level client built
from the same session. botocore's own retries are switched off so that
retries, their back-off and the ``database.retry`` metric live here, next to
the error mapping.
"""

from __future__ import annotations

import functools
import os
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

import boto3
import botocore.session
from botocore.config import Config
from botocore.httpsession import where as default_ca_bundle

from autopush_flask import __version__
from autopush_flask.config import SettingsError
from autopush_flask.db.dynamodb.wire import ITEM_OPERATIONS, ItemClient
from autopush_flask.db.errors import StorageError, map_error
from autopush_flask.http_client import ConnectionPool
from autopush_flask.proxies import Proxy, ProxyRefused, proxy_for

DEFAULT_REGION = "us-east-1"
MAX_ATTEMPTS = 3
BASE_DELAY_SECONDS = 0.05
MAX_POOL_CONNECTIONS = 100
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 10.0
USER_AGENT = f"autopush-flask/{__version__}"


class DynamoCalls(Protocol):
    """What the stores use of a client: ``DynamoDB``, or the start-up ``ItemGate`` in front of it."""

    def call(self, operation: str, **kwargs: Any) -> dict: ...


class DynamoDB:
    """Sends each call (item operations through ``ItemClient``, table
    administration through the boto3 client), retrying throttling and
    transport errors.

    Every failure leaves as a typed ``StorageError``; conditional-check
    failures are raised at once as ``ConditionFailed`` for the caller to read
    as a result.
    """

    def __init__(
        self,
        client: Any,
        items: ItemClient,
        metrics: Any,
        max_attempts: int = MAX_ATTEMPTS,
        base_delay: float = BASE_DELAY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self._items = items
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._sleep = sleep

    def call(self, operation: str, **kwargs: Any) -> dict:
        if operation in ITEM_OPERATIONS:
            send = functools.partial(self._items.call, operation, kwargs)
        else:
            send = functools.partial(getattr(self.client, operation), **kwargs)
        for attempt in range(1, self._max_attempts + 1):
            try:
                return send()
            except Exception as raw:  # noqa: BLE001 - every failure is mapped below
                error = map_error(raw, operation)
            if not error.retryable or attempt == self._max_attempts:
                raise error
            self._metrics.increment("database.retry", tags={"operation": operation})
            self._sleep(self._backoff(attempt))
        raise StorageError("unreachable", operation)  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        """Exponential back-off with full jitter."""
        return random.uniform(0, self._base_delay * (2 ** (attempt - 1)))


def connect(endpoint_url: str | None, metrics: Any) -> DynamoDB:
    """The process's client; the local DynamoDB needs no real credentials."""
    core = botocore.session.get_session()
    if endpoint_url and core.get_credentials() is None:
        core.set_credentials("local", "local")
    session = boto3.session.Session(botocore_session=core)
    client = create_boto_client(session, endpoint_url)
    origin = client.meta.endpoint_url
    pool = ConnectionPool(
        origin,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        timeout=READ_TIMEOUT_SECONDS,
        concurrency=MAX_POOL_CONNECTIONS,
        # DynamoDB's certificate against the CA bundle boto3 would use
        ca_file=core.get_config_variable("ca_bundle") or default_ca_bundle(),
        proxy=_proxy(origin),
    )
    items = ItemClient(pool, client.meta.region_name, session.get_credentials(), USER_AGENT)
    return DynamoDB(client, items, metrics)


def _proxy(origin: str) -> Proxy | None:
    """The proxy boto3 uses for the same URL (docs/operations.md#http-proxies).

    config.py refused an unusable one at start-up against the configured
    endpoint; the endpoint resolved from the region is checked again here.
    """
    try:
        return proxy_for(origin, os.environ)
    except ProxyRefused as error:
        raise SettingsError(str(error)) from error


def create_boto_client(session: Any, endpoint_url: str | None) -> Any:
    """The boto3 low-level client (table administration, endpoint and region resolution)."""
    config = Config(
        retries={"total_max_attempts": 1},
        max_pool_connections=MAX_POOL_CONNECTIONS,
        connect_timeout=CONNECT_TIMEOUT_SECONDS,
        read_timeout=READ_TIMEOUT_SECONDS,
        # Requests are built by db/ alone and covered by the storage tests;
        # validating every call's parameters again costs CPU on every push.
        parameter_validation=False,
        # A fixed User-Agent: botocore otherwise rebuilds its generated one,
        # twice, on every request.
        user_agent=USER_AGENT,
    )
    return session.client(
        "dynamodb",
        endpoint_url=endpoint_url,
        region_name=session.region_name or DEFAULT_REGION,
        config=config,
    )
