"""The one DynamoDB client of a process, with the SPEC §7.8 retry policy.

One boto3 low-level client per worker process, created after fork and shared
by all greenlets (DESIGN §2). botocore's own retries are switched off so that
retries, their back-off and the ``database.retry`` metric live here, next to
the error mapping.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import boto3
from botocore.config import Config

from autopush_flask import __version__
from autopush_flask.db.errors import StorageError, map_error

DEFAULT_REGION = "us-east-1"
MAX_ATTEMPTS = 3
BASE_DELAY_SECONDS = 0.05
MAX_POOL_CONNECTIONS = 100
CONNECT_TIMEOUT_SECONDS = 2.0
READ_TIMEOUT_SECONDS = 10.0
USER_AGENT = f"autopush-flask/{__version__}"


class DynamoDB:
    """Calls the low-level client, retrying throttling and transport errors.

    Every failure leaves as a typed ``StorageError``; conditional-check
    failures are raised at once as ``ConditionFailed`` for the caller to read
    as a result.
    """

    def __init__(
        self,
        client: Any,
        metrics: Any,
        max_attempts: int = MAX_ATTEMPTS,
        base_delay: float = BASE_DELAY_SECONDS,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.client = client
        self._metrics = metrics
        self._max_attempts = max_attempts
        self._base_delay = base_delay
        self._sleep = sleep

    def call(self, operation: str, **kwargs: Any) -> dict:
        method = getattr(self.client, operation)
        for attempt in range(1, self._max_attempts + 1):
            try:
                return method(**kwargs)
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


def create_boto_client(endpoint_url: str | None, max_pool_connections: int = MAX_POOL_CONNECTIONS) -> Any:
    """A DynamoDB low-level client; the local DynamoDB needs no real credentials."""
    session = boto3.session.Session()
    credentials = {}
    if endpoint_url and session.get_credentials() is None:
        credentials = {"aws_access_key_id": "local", "aws_secret_access_key": "local"}
    config = Config(
        retries={"total_max_attempts": 1},
        max_pool_connections=max_pool_connections,
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
        **credentials,
    )
