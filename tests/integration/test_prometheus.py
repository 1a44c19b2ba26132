"""Prometheus exposition beside statsd, over real gunicorn nodes and HTTP (docs/operations.md#prometheus).

The endpoint node's master serves the sum of its workers' values (multiprocess
mode); each connection worker serves its own on ``AUTOPUSH_METRICS_PORT + slot``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import TEST_CRYPTO_KEY
from tests.support.connection_nodes import running_connection_nodes
from tests.support.processes import ROOT, GunicornNode, free_port, free_port_range, running_node, wait_for_port
from tests.support.statsd_sink import StatsdSink

RECEIVED = "autoendpoint_notification_received_total"


def scrape(port: int, host: str = "127.0.0.1") -> dict[tuple[str, frozenset], float]:
    """Every sample served on ``host:port``: (name, labels) → value."""
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def listens_on_all_interfaces(port: int) -> bool:
    """Bound to 127.0.0.1 only, the port refuses 127.0.0.2 (another loopback address)."""
    try:
        with socket.create_connection(("127.0.0.2", port), timeout=1):
            return True
    except OSError:
        return False


def per_worker(directory: Path, tmp_path: Path) -> dict[str, float]:
    """``notification.received`` of each worker, read from its own file in the multiprocess directory."""
    counts = {}
    for path in directory.glob("counter_*.db"):
        alone = tmp_path / f"alone-{path.stem}"
        alone.mkdir(exist_ok=True)
        shutil.copy(path, alone / path.name)
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(alone))
        counts[path.stem] = registry.get_sample_value(RECEIVED) or 0.0
    return counts


@pytest.fixture
def statsd() -> Iterator[StatsdSink]:
    sink = StatsdSink()
    yield sink
    sink.close()


def test_endpoint_master_serves_the_sum_of_its_workers_and_statsd_still_receives(
    store_variables: dict[str, str], statsd: StatsdSink, tmp_path: Path
) -> None:
    metrics_port = free_port()
    directory = tmp_path / "multiproc"
    directory.mkdir()
    stale = directory / "counter_1.db"
    stale.write_bytes(b"stale values of an earlier run")
    environ = {
        **os.environ, **store_variables, **statsd.settings(),
        "AUTOPUSH_CRYPTO_KEYS": TEST_CRYPTO_KEY,
        "AUTOPUSH_METRICS": "both",
        "AUTOPUSH_METRICS_PORT": str(metrics_port),
        "PROMETHEUS_MULTIPROC_DIR": str(directory),
    }
    node = GunicornNode("wsgi:endpoint_app", environ, workers=2)
    with running_node(node, tmp_path / "endpoint.log", wait_ports=(metrics_port,)):
        assert not stale.exists()  # emptied at start
        sent = 0

        def bad_push(_: int) -> int:
            response = requests.post(f"{node.url}/wpush/v1/not-a-token", headers={"TTL": "60"}, timeout=5)
            return response.status_code

        # New connections, a batch at a time, until both workers have counted some.
        with ThreadPoolExecutor(8) as pool:
            for _ in range(30):
                assert set(pool.map(bad_push, range(8))) == {404}
                sent += 8
                counts = per_worker(directory, tmp_path)
                if len([c for c in counts.values() if c > 0]) == 2:
                    break
        assert len([c for c in counts.values() if c > 0]) == 2, counts
        assert sum(counts.values()) == sent
        assert scrape(metrics_port)[(RECEIVED, frozenset())] == sent
        assert statsd.wait_count("autoendpoint.notification.received", sent) == sent
        assert not listens_on_all_interfaces(metrics_port)
    with pytest.raises(OSError):  # the master stopped serving with its exit
        socket.create_connection(("127.0.0.1", metrics_port), timeout=1).close()


def test_endpoint_metrics_port_taken_stops_the_master_with_one_line(store_variables: dict[str, str]) -> None:
    shm = Path("/dev/shm")
    before = set(shm.glob("autopush-prometheus-*")) if shm.is_dir() else set()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        environ = {**os.environ, **store_variables, "AUTOPUSH_CRYPTO_KEYS": TEST_CRYPTO_KEY,
                   "AUTOPUSH_STATSD_HOST": "", "AUTOPUSH_METRICS": "prometheus", "AUTOPUSH_METRICS_PORT": str(port)}
        public = free_port()
        result = subprocess.run(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{public}",
             "wsgi:endpoint_app"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30,
        )
    assert result.returncode == 3
    assert f"cannot serve metrics on 127.0.0.1:{port}: " in result.stderr
    assert "Listening at" not in result.stderr  # stopped before binding the public port
    if shm.is_dir():  # the directory it made for its workers is gone with it
        assert set(shm.glob("autopush-prometheus-*")) - before == set()


def test_connection_workers_serve_their_own_metrics_on_port_plus_slot(
    store_variables: dict[str, str], tmp_path: Path
) -> None:
    metrics_port = free_port_range(2)
    with running_connection_nodes(
        store_variables, tmp_path / "connection.log", workers=2,
        AUTOPUSH_METRICS="prometheus", AUTOPUSH_METRICS_PORT=str(metrics_port),
    ) as nodes:
        ports = [metrics_port + slot for slot in range(2)]
        for port in ports:
            wait_for_port(port)
        client, uaid, _ = nodes.subscribed()  # hello, and a register that stores the record naming the worker
        client.close()
        slot = int(nodes.node_id(uaid).rsplit(":", 1)[1]) - nodes.router_port
        hello = ("autoconnect_ua_command_hello_total", frozenset({("uaid", "new")}))
        served = [scrape(port) for port in ports]
        assert served[slot][hello] == 1
        assert hello not in served[1 - slot]  # the other worker keeps its own registry
        assert all(not listens_on_all_interfaces(port) for port in ports)
