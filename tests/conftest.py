"""Shared fixtures: a real local DynamoDB (dynalite) and settings pointing at it, fake bridges.

Running nodes come from ``tests.support.stack.start_stack`` (endpoint and
connection node), ``tests.support.connection_nodes`` (connection nodes
alone) and ``tests.support.processes.running_node`` (one gunicorn master).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator

import pytest

from autopush_flask.config import Settings, load_settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Storage, create_storage
from autopush_flask.metrics import RecordingMetrics
from tests.support.bridges import FakeBridges
from tests.support.fake_node import FakeNode
from tests.support.postgres import STORES, postgres_cluster, postgres_url  # noqa: F401 - fixtures, asked for by name
from tests.support.processes import LocalDynamoDB
from tests.support.statsd_sink import StatsdSink

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


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test marked ``both_stores`` runs once on DynamoDB (dynalite) and once on PostgreSQL."""
    if metafunc.definition.get_closest_marker("both_stores") and "store_backend" in metafunc.fixturenames:
        metafunc.parametrize("store_backend", STORES, indirect=True)


@pytest.fixture
def store_backend(request: pytest.FixtureRequest) -> str:
    """The store a test runs on: DynamoDB unless the test is marked ``both_stores``."""
    return getattr(request, "param", "dynamodb")


@pytest.fixture
def store_variables(
    request: pytest.FixtureRequest, store_backend: str, dynalite: LocalDynamoDB, table_prefix: str
) -> dict[str, str]:
    """The settings naming this test's own store: tables on dynalite, or a PostgreSQL schema."""
    return store_settings(request, store_backend, dynalite, table_prefix)


def store_settings(
    request: pytest.FixtureRequest, backend: str, dynalite: LocalDynamoDB, prefix: str
) -> dict[str, str]:
    """``store_variables`` for fixtures of any scope (a module's stack asks with its own prefix)."""
    variables = {
        "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
        "AUTOPUSH_ROUTER_TABLE": f"{prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{prefix}_message",
    }
    if backend == "postgres":
        cluster = request.getfixturevalue("postgres_cluster")
        variables["AUTOPUSH_DB_URL"] = cluster.schema_url(prefix)
    return variables


@pytest.fixture
def make_settings(store_variables: dict[str, str]) -> Callable[..., Settings]:
    """Settings for a node using this test's own store (tables on the shared dynalite by default)."""

    def make(node_type: str = "endpoint", **variables: str) -> Settings:
        environ = {
            **store_variables,
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


@pytest.fixture(scope="module")
def fakes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FakeBridges]:
    """Fake FCM and APNs servers for a module's endpoint node (``fakes.node_settings`` wires them in)."""
    bridges = FakeBridges.start(tmp_path_factory.mktemp("pki"))
    yield bridges
    bridges.stop()


@pytest.fixture(scope="module")
def statsd() -> Iterator[StatsdSink]:
    """A real UDP statsd receiver for one module's nodes (``StatsdSink.settings()`` points them at it)."""
    sink = StatsdSink()
    yield sink
    sink.close()
