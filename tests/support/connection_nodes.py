"""Connection nodes on their own (no endpoint node), for tests that play the endpoint's part.

Such tests sign ``PUT /push`` and ``PUT /notif`` to the router port
themselves (``router``), with the crypto keys every node here is started with.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from autopush_flask.config import CONNECTION, load_settings
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Storage, create_storage
from autopush_flask.metrics import NullMetrics
from tests.support.processes import GunicornNode, free_port_range, stopping
from tests.support.push_client import PushClient
from tests.support.router_auth import signed_session

CRYPTO_KEY = CryptoKeys.generate_key()
router = signed_session(CRYPTO_KEY)  # requests to the router port, signed as an endpoint node signs


def node_environ(store_variables: dict[str, str], router_port: int, **extra: str) -> dict[str, str]:
    """A connection node's environment: the store, ``CRYPTO_KEY``, routers from ``router_port`` on."""
    return {
        **os.environ,
        **store_variables,
        "AUTOPUSH_CRYPTO_KEYS": CRYPTO_KEY,
        "AUTOPUSH_ROUTER_HOSTNAME": "127.0.0.1",
        "AUTOPUSH_ROUTER_PORT": str(router_port),
        "AUTOPUSH_STATSD_HOST": "",
        **extra,
    }


def dynamodb_store(ddb_url: str, table_prefix: str) -> dict[str, str]:
    """The store variables of tables named ``table_prefix`` on the DynamoDB at ``ddb_url``."""
    return {
        "AUTOPUSH_DDB_ENDPOINT": ddb_url,
        "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
    }


@dataclass
class ConnectionNodes:
    """One gunicorn master of connection workers, the storage the test reads, and its log."""

    gunicorn: GunicornNode
    storage: Storage
    router_port: int  # worker slot N listens on router_port + N

    @property
    def router_ports(self) -> list[int]:
        return [self.router_port + slot for slot in range(self.gunicorn.workers)]

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gunicorn.port}/"

    def client(self) -> PushClient:
        return PushClient(self.ws_url)

    def subscribed(self) -> tuple[PushClient, str, str]:
        """A connected browser with one channel: (client, uaid, channel_id)."""
        client = self.client()
        uaid = client.hello()["uaid"]
        channel_id = str(uuid.uuid4())
        assert client.register(channel_id)["status"] == 200
        return client, uaid, channel_id

    def node_id(self, uaid: str) -> str:
        return self.storage.get_user(uaid).node_id

    def log_lines(self) -> list[dict]:
        """The JSON log lines' fields (gunicorn's own plain lines are skipped)."""
        return [json.loads(line)["Fields"] for line in self.gunicorn.log().splitlines() if line.startswith("{")]

    def stop(self) -> None:
        self.gunicorn.stop()


def start_connection_nodes(
    store_variables: dict[str, str], log_path: Path, workers: int = 1,
    storage_variables: dict[str, str] | None = None, **settings: str,
) -> ConnectionNodes:
    """Start the master and wait for every worker's router.

    The test reads storage through ``storage_variables`` where given (the
    real database behind a proxy the node is pointed at), else as the node does.
    """
    router_port = free_port_range(workers)
    environ = node_environ(store_variables, router_port, **settings)
    gunicorn = GunicornNode("wsgi:connection_app", environ, workers=workers)
    gunicorn.start(log_path, wait_ports=tuple(router_port + slot for slot in range(workers)))
    storage_environ = {**environ, **(storage_variables or {})}
    return ConnectionNodes(gunicorn, create_storage(load_settings(CONNECTION, storage_environ), NullMetrics()),
                           router_port)


@contextmanager
def running_connection_nodes(
    store_variables: dict[str, str], log_path: Path, workers: int = 1,
    storage_variables: dict[str, str] | None = None, **settings: str,
) -> Iterator[ConnectionNodes]:
    """``start_connection_nodes``, stopped however the block ends."""
    with stopping(start_connection_nodes(store_variables, log_path, workers, storage_variables, **settings)) as nodes:
        yield nodes
