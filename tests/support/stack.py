"""A running service for end-to-end tests: connection node + endpoint node + their store.

Two ways to run one, both stopping it however the test ends:

* ``start_stack(request, name, store=..., **settings)`` in a fixture (of
  any scope) or a test: stopped when that fixture or test is torn down.
* ``with Stack(...) as stack:`` where the test adjusts the stack before it
  starts (per-node environments, TLS) or must stop it at a set point.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from types import TracebackType

import pytest

from autopush_flask.config import ENDPOINT, load_settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Storage, create_storage
from autopush_flask.metrics import NullMetrics
from tests.support.postgres import store_environ
from tests.support.processes import GunicornNode, free_port, free_port_range
from tests.support.push_client import PushClient


class Stack:
    def __init__(self, ddb_url: str, log_dir: Path, connection_workers: int = 1, **settings: str) -> None:
        prefix = "e" + uuid.uuid4().hex[:10]
        self.endpoint_port = free_port()
        self.router_port = free_port_range(connection_workers)
        self.environ = {
            **os.environ,
            "AUTOPUSH_DDB_ENDPOINT": ddb_url,
            "AUTOPUSH_ROUTER_TABLE": f"{prefix}_router",
            "AUTOPUSH_MESSAGE_TABLE": f"{prefix}_message",
            "AUTOPUSH_CRYPTO_KEYS": CryptoKeys.generate_key(),
            "AUTOPUSH_ENDPOINT_URL": f"http://127.0.0.1:{self.endpoint_port}",
            "AUTOPUSH_ROUTER_HOSTNAME": "127.0.0.1",
            "AUTOPUSH_ROUTER_PORT": str(self.router_port),
            "AUTOPUSH_STATSD_HOST": "",
            **settings,
        }
        self.log_dir = log_dir
        self.connection = GunicornNode("wsgi:connection_app", self.environ, workers=connection_workers)
        self.endpoint = GunicornNode("wsgi:endpoint_app", self.environ, port=self.endpoint_port)
        self.storage: Storage = create_storage(load_settings(ENDPOINT, self.environ), NullMetrics())
        self.clients: list[PushClient] = []
        self.extra_nodes: list[GunicornNode] = []

    @property
    def endpoint_url(self) -> str:
        return f"http://127.0.0.1:{self.endpoint_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.connection.port}/"

    def start(self) -> Stack:
        routers = tuple(self.router_port + slot for slot in range(self.connection.workers))
        self.connection.start(self.log_dir / "connection.log", wait_ports=routers)
        self.endpoint.start(self.log_dir / "endpoint.log")
        return self

    def __enter__(self) -> Stack:
        """``with Stack(...) as stack:`` starts it and stops it however the block ends."""
        try:
            return self.start()
        except BaseException:
            self.stop()  # the connection node may be up while the endpoint failed to start
            raise

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def stop(self) -> None:
        for client in self.clients:
            client.close()
        for node in self.extra_nodes:
            node.stop()
        self.endpoint.stop()
        self.connection.stop()

    def another_endpoint(self, name: str, **settings: str) -> GunicornNode:
        """One more endpoint node on the same tables with some settings changed (started here)."""
        node = GunicornNode("wsgi:endpoint_app", {**self.environ, **settings})
        self.extra_nodes.append(node)
        node.start(self.log_dir / f"{name}.log")
        return node

    def client(self) -> PushClient:
        client = PushClient(self.ws_url)
        self.clients.append(client)
        return client


def start_stack(
    request: pytest.FixtureRequest, name: str = "stack", store: str = "dynamodb",
    connection_workers: int = 1, **settings: str,
) -> Stack:
    """Start a stack on the shared dynalite (or a fresh PostgreSQL schema), stopped with ``request``.

    The one way fixtures and tests build a stack. Teardown is tied to the
    caller's own ``request`` rather than to a factory fixture's: a module
    ``stack`` parametrized over ``STORES`` is torn down before the next
    store's starts, so no more than two gunicorn masters run at once, and
    the stack stops before the fixtures its settings came from (fake
    bridges, statsd sinks) go away. The finalizer is registered before
    starting, so a half-started stack is stopped too.
    """
    dynalite = request.getfixturevalue("dynalite")
    log_dir = request.getfixturevalue("tmp_path_factory").mktemp(name)
    stack = Stack(dynalite.url, log_dir, connection_workers, **store_environ(request, store), **settings)
    request.addfinalizer(stack.stop)
    return stack.start()
