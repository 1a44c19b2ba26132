"""Shared fixtures: a real local DynamoDB (dynalite) and settings pointing at it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from autopush_flask.config import Settings, load_settings
from autopush_flask.crypto import CryptoKeys
from autopush_flask.db import Storage, create_storage
from autopush_flask.metrics import RecordingMetrics
from tests.support.fake_node import FakeNode
from tests.support.postgres import postgres_cluster, postgres_url  # noqa: F401 - fixtures, asked for by name
from tests.support.processes import LocalDynamoDB

# Nodes refuse to start without crypto keys: one key for the run, as all the
# nodes of a deployment share theirs.
TEST_CRYPTO_KEY = CryptoKeys.generate_key()


@pytest.fixture(scope="session")
def dynalite() -> Iterator[LocalDynamoDB]:
    """One in-memory dynalite for the whole run; tests use their own tables."""
    database = LocalDynamoDB()
    database.start()
    yield database
    database.stop()


@pytest.fixture
def table_prefix() -> str:
    return "t" + uuid.uuid4().hex[:10]


@pytest.fixture
def make_settings(dynalite: LocalDynamoDB, table_prefix: str) -> Callable[..., Settings]:
    """Settings for a node using this test's own tables on the shared dynalite."""

    def make(node_type: str = "endpoint", **variables: str) -> Settings:
        environ = {
            "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
            "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
            "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
            "AUTOPUSH_HOSTNAME": "localhost",
            "AUTOPUSH_STATSD_HOST": "",
            "AUTOPUSH_CRYPTO_KEYS": TEST_CRYPTO_KEY,
            **variables,
        }
        return load_settings(node_type, environ)

    return make


@pytest.fixture
def metrics() -> RecordingMetrics:
    return RecordingMetrics()


@pytest.fixture
def storage(make_settings: Callable[..., Settings], metrics: RecordingMetrics) -> Storage:
    """Single-table storage with freshly created tables."""
    store = create_storage(make_settings(), metrics)
    store.set_up()
    return store


@pytest.fixture
def fake_node() -> Iterator[FakeNode]:
    """A scripted connection node's router, for the endpoint's node-failure paths."""
    node = FakeNode()
    yield node
    node.stop()
