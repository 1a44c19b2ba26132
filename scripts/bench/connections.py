#!/usr/bin/env python3
"""Memory and hello rate of idle push clients, against the stack's floor.

Opens N idle clients (hello + 2 registers each) against one connection
worker under gunicorn, and in the same run N clients against a bare
gevent-websocket echo app under the same worker class. Prints the worker's
RSS growth per client for both, their ratio (target <= 1.2), and hellos per
second against the floor's connects per second.

    .venv/bin/python scripts/bench/connections.py [--clients 5000]

Clients run in a separate process; the open-files cap (20,000) bounds N.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.support.processes import (  # noqa: E402
    LocalDynamoDB,
    free_port,
    free_port_range,
    stop_process,
    wait_for_port,
)

GUNICORN = str(Path(sys.executable).parent / "gunicorn")
ECHO_WORKER = "geventwebsocket.gunicorn.workers.GeventWebSocketWorker"
SETTLE_SECONDS = 3.0


def open_clients(url: str, count: int, mode: str, registers: int) -> None:
    """Client side (own process): open ``count`` idle clients, report, hold them."""
    import resource

    import websocket

    resource.setrlimit(resource.RLIMIT_NOFILE, (20000, 20000))
    clients = []
    options = {"subprotocols": ["push-notification"]} if mode == "push" else {}
    started = time.perf_counter()
    for _ in range(count):
        ws = websocket.create_connection(url, timeout=30, **options)
        if mode == "push":
            ws.send(json.dumps({"messageType": "hello", "use_webpush": True, "broadcasts": {}}))
            ws.recv()
            for _ in range(registers):
                ws.send(json.dumps({"messageType": "register", "channelID": str(uuid.uuid4())}))
                ws.recv()
        else:
            ws.send("hello")
            ws.recv()
        clients.append(ws)
    elapsed = time.perf_counter() - started
    print(json.dumps({"clients": count, "seconds": elapsed}), flush=True)
    sys.stdin.readline()


def worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def measure(command: list[str], env: dict, port: int, url: str, count: int, mode: str, registers: int) -> dict:
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        time.sleep(SETTLE_SECONDS)
        worker = worker_pid(server.pid)
        before = rss_kib(worker)
        clients = subprocess.Popen(
            [sys.executable, __file__, "--client", url, "--clients", str(count), "--mode", mode,
             "--registers", str(registers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        report = json.loads(clients.stdout.readline())
        time.sleep(SETTLE_SECONDS)
        after = rss_kib(worker)
        clients.stdin.write("done\n")
        clients.stdin.flush()
        clients.wait(60)
    finally:
        stop_process(server, timeout=30)
    return {
        "per_client_kib": (after - before) / count,
        "rate": count / report["seconds"],
        "rss_before_kib": before,
        "rss_after_kib": after,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--registers", type=int, default=2, help="registers per client (default 2)")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="push", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        open_clients(args.client, args.clients, args.mode, args.registers)
        return 0

    database = LocalDynamoDB()
    database.start()
    try:
        floor_port, push_port, router_port = free_port(), free_port(), free_port_range(1)
        base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        floor = measure(
            [GUNICORN, "--worker-class", ECHO_WORKER, "--worker-connections", "20000",
             "--bind", f"127.0.0.1:{floor_port}", "scripts.bench.echo_app:app"],
            base_env, floor_port, f"ws://127.0.0.1:{floor_port}/", args.clients, "echo", 0,
        )
        push_env = {
            **base_env,
            "AUTOPUSH_DDB_ENDPOINT": database.url,
            "AUTOPUSH_ROUTER_PORT": str(router_port),
            "AUTOPUSH_ROUTER_HOSTNAME": "127.0.0.1",
            "AUTOPUSH_STATSD_HOST": "",
            "AUTOPUSH_LOG_LEVEL": "warning",
            "AUTOPUSH_CRYPTO_KEYS": "0" * 43 + "=",
        }
        push = measure(
            [GUNICORN, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{push_port}", "wsgi:connection_app"],
            push_env, push_port, f"ws://127.0.0.1:{push_port}/", args.clients, "push", args.registers,
        )
    finally:
        database.stop()
    ratio = push["per_client_kib"] / floor["per_client_kib"]
    print(f"clients: {args.clients}")
    print(f"floor (bare gevent-websocket echo): {floor['per_client_kib']:.1f} KiB/client, "
          f"{floor['rate']:.0f} connects/s")
    print(f"connection node (hello + {args.registers} registers): {push['per_client_kib']:.1f} KiB/client, "
          f"{push['rate']:.0f} clients/s")
    print(f"memory ratio: {ratio:.2f} (target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
