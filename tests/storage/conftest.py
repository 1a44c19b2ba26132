"""Every backend behind the one ``Storage`` interface, for the shared suite.

``backend_storage`` runs a test once per backend: DynamoDB on the session's
dynalite, the in-memory store, and PostgreSQL on the throw-away cluster of
``tests/support/postgres.py`` (asked for only by that parameter, so the
others run where PostgreSQL is not installed). All share a clock the test
moves, so expiry is tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import pytest

from autopush_flask.config import Settings
from autopush_flask.db import Storage, create_storage
from autopush_flask.db.memory import MemoryStorage
from autopush_flask.metrics import RecordingMetrics

BACKENDS = ["dynamodb", "memory", "postgres"]


class Clock:
    """Unix seconds that move only when told to."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> Clock:
    # Whole seconds from today: stamps and expiries look like real ones.
    return Clock(float(int(time.time())))


@pytest.fixture(params=BACKENDS)
def build_storage(
    request: pytest.FixtureRequest,
    make_settings: Callable[..., Settings],
    metrics: RecordingMetrics,
    clock: Clock,
) -> Iterator[Callable[..., Storage]]:
    """Build a store of this parameter's backend (``gated`` or not), not yet set up."""
    built: list[Storage] = []

    def build(gated: bool = False) -> Storage:
        if request.param == "memory":
            store: Storage = MemoryStorage(make_settings(), metrics, clock=clock, gated=gated)
        else:
            variables = {}
            if request.param == "postgres":
                variables["AUTOPUSH_DB_URL"] = request.getfixturevalue("postgres_url")
            store = create_storage(make_settings(**variables), metrics, clock=clock, gated=gated)
        built.append(store)
        return store

    yield build
    for store in built:
        close = getattr(store, "close", None)  # a connection pool, where the backend has one
        if close is not None:
            close()


@pytest.fixture
def backend_storage(build_storage: Callable[..., Storage]) -> Storage:
    """A ready store (``set_up()`` done) of each backend in turn."""
    store = build_storage()
    store.set_up()
    return store
