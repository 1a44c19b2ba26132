#!/usr/bin/env python3
"""Memory and hello rate of idle push clients, against the stack's floor.

Opens N idle clients (hello + 2 registers each) against one connection
worker under gunicorn, and in the same run N clients against a bare
gevent-websocket echo app under the same worker class. Prints the worker's
RSS growth per client for both, their ratio (target <= 1.2), and hellos per
second against the floor's connects per second.

    .venv/bin/python scripts/bench/connections.py [--clients 5000] [--registers 2]

Clients run in a separate process; the open-files cap (20,000) bounds N.

``--breakdown`` also prints where each worker's growth is: resident KiB per
kind of mapping (``/proc/<pid>/smaps``), the allocators' own figures (glibc
``mallinfo2``, pymalloc arenas, saved greenlet stacks; the workers then run
under ``gunicorn_diag.conf.py``), and which sizes of glibc heap chunks are
only partly resident. With ``PYTHONTRACEMALLOC=<frames>`` in the environment
(and ``GUNICORN_CMD_ARGS="--timeout 600"``: snapshots are slow) each report
also dumps a tracemalloc snapshot next to it, to compare between runs with
``tracemalloc.Snapshot.load(...).compare_to(...)``. ``--only floor|push``
measures one side.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
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
    greeting = 0.0  # connect + hello (or the echo) only, without registers
    for _ in range(count):
        begun = time.perf_counter()
        ws = websocket.create_connection(url, timeout=30, **options)
        if mode == "push":
            ws.send(json.dumps({"messageType": "hello", "use_webpush": True, "broadcasts": {}}))
            ws.recv()
            greeting += time.perf_counter() - begun
            for _ in range(registers):
                ws.send(json.dumps({"messageType": "register", "channelID": str(uuid.uuid4())}))
                ws.recv()
        else:
            ws.send("hello")
            ws.recv()
            greeting += time.perf_counter() - begun
        clients.append(ws)
    elapsed = time.perf_counter() - started
    print(json.dumps({"clients": count, "seconds": elapsed, "greeting_seconds": greeting}), flush=True)
    sys.stdin.readline()


def worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    return int(children[0])


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def snapshot(worker: int, diag_dir: str | None) -> dict:
    """The worker's smaps breakdown and its own allocator report."""
    from scripts.bench.memory import heap_residency, smaps_breakdown

    report = None
    if diag_dir:
        path = Path(diag_dir) / f"{worker}.json"
        path.unlink(missing_ok=True)
        deadline = time.monotonic() + 300
        while not path.with_suffix(".ready").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        os.kill(worker, signal.SIGUSR2)
        while not path.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.2)
        report = json.loads(path.read_text())
    return {"smaps": smaps_breakdown(worker), "report": report, "heap": heap_residency(worker, samples=4)}


def measure(
    command: list[str], env: dict, port: int, url: str, count: int, mode: str, registers: int,
    diag_dir: str | None = None,
) -> dict:
    if diag_dir:
        command = [command[0], "-c", str(ROOT / "scripts/bench/gunicorn_diag.conf.py")] + [
            part for part in command[1:] if part not in ("-c", "gunicorn.conf.py")
        ]
        env = {**env, "BENCH_DIAG_DIR": diag_dir}
    server = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port, timeout=30)
        time.sleep(SETTLE_SECONDS)
        worker = worker_pid(server.pid)
        before = rss_kib(worker)
        snapshots = [snapshot(worker, diag_dir)] if diag_dir else []
        clients = subprocess.Popen(
            [sys.executable, __file__, "--client", url, "--clients", str(count), "--mode", mode,
             "--registers", str(registers)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        )
        report = json.loads(clients.stdout.readline())
        time.sleep(SETTLE_SECONDS)
        after = rss_kib(worker)
        if diag_dir:
            snapshots.append(snapshot(worker, diag_dir))
        clients.stdin.write("done\n")
        clients.stdin.flush()
        clients.wait(60)
    finally:
        stop_process(server, timeout=30)
    return {
        "per_client_kib": (after - before) / count,
        "rate": count / report["seconds"],
        "greeting_rate": count / report["greeting_seconds"],
        "rss_before_kib": before,
        "rss_after_kib": after,
        "snapshots": snapshots,
    }


def _flatten(snap: dict) -> dict[str, float]:
    flat = {f"smaps {kind} rss": v["rss"] for kind, v in snap["smaps"].items()}
    flat.update({f"smaps {kind} count": v["count"] for kind, v in snap["smaps"].items()})
    report = snap["report"] or {}
    flat.update({f"malloc {k}": v for k, v in report.get("mallinfo2_kib", {}).items()})
    flat.update({f"pymalloc {k}": v for k, v in report.get("pymalloc", {}).items()})
    for key in ("greenlets", "greenlet_stack_saved_kib", "threads", "gc_objects"):
        if key in report:
            flat[key] = report[key]
    return flat


def print_breakdown(name: str, result: dict, count: int) -> None:
    """Per-client growth of each smaps kind and allocator figure."""
    before, after = (_flatten(s) for s in result["snapshots"])
    print(f"--- {name}: growth per client (KiB unless a count; pymalloc in bytes)")
    for key in sorted(set(before) | set(after)):
        delta = after.get(key, 0) - before.get(key, 0)
        if delta:
            print(f"  {key:55s} {before.get(key, 0):>14,.0f} -> {after.get(key, 0):>14,.0f}"
                  f"  {delta / count:10.3f}/client")
    heap = result["snapshots"][1]["heap"]
    chunks = heap["chunks"]
    print(f"  heap walked {heap['walked_to'] / 1024:,.0f} of {heap['heap'] / 1024:,.0f} KiB; "
          f"chunks by size (count, in use, pages not resident), top by pages not resident:")
    for size, (number, in_use, absent) in sorted(chunks.items(), key=lambda kv: (-kv[1][2], -kv[1][0]))[:8]:
        print(f"    {size:>8} B: {number:>7} chunks, {in_use:>7} in use, {absent:>6} pages not resident")
    for address, size, data in heap["samples"]:
        print(f"    partly resident chunk {address:#x} ({size} B) starts {data[:48]!r}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--registers", type=int, default=2, help="registers per client (default 2)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also break the growth down by mapping kind and allocator")
    parser.add_argument("--only", choices=("floor", "push"), help="measure one side only")
    parser.add_argument("--client", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="push", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        open_clients(args.client, args.clients, args.mode, args.registers)
        return 0

    diag_dir = tempfile.mkdtemp(prefix="bench-diag-") if args.breakdown else None
    if diag_dir:
        print(f"diagnostics in {diag_dir}")
    database = LocalDynamoDB()
    database.start()
    floor = push = None
    try:
        floor_port, push_port, router_port = free_port(), free_port(), free_port_range(1)
        base_env = {**os.environ, "PYTHONPATH": str(ROOT)}
        if args.only != "push":
            floor = measure(
                [GUNICORN, "--worker-class", ECHO_WORKER, "--worker-connections", "20000",
                 "--bind", f"127.0.0.1:{floor_port}", "scripts.bench.echo_app:app"],
                base_env, floor_port, f"ws://127.0.0.1:{floor_port}/", args.clients, "echo", 0, diag_dir,
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
        if args.only != "floor":
            push = measure(
                [GUNICORN, "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{push_port}", "wsgi:connection_app"],
                push_env, push_port, f"ws://127.0.0.1:{push_port}/", args.clients, "push", args.registers,
                diag_dir,
            )
    finally:
        database.stop()
    print(f"clients: {args.clients}")
    if floor:
        print(f"floor (bare gevent-websocket echo): {floor['per_client_kib']:.1f} KiB/client, "
              f"{floor['rate']:.0f} connects/s")
    if push:
        print(f"connection node (hello + {args.registers} registers): {push['per_client_kib']:.1f} KiB/client, "
              f"{push['rate']:.0f} clients/s")
    if floor and push:
        print(f"memory ratio: {push['per_client_kib'] / floor['per_client_kib']:.2f} (target <= 1.2)")
        print(f"hellos: {push['greeting_rate']:.0f}/s (connect + hello, one client at a time) against the floor's "
              f"{floor['greeting_rate']:.0f} connects/s (connect + echo)")
    if args.breakdown:
        for name, result in (("floor", floor), ("connection node", push)):
            if result:
                print_breakdown(name, result, args.clients)
    return 0


if __name__ == "__main__":
    sys.exit(main())
