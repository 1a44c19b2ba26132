#!/usr/bin/env python3
"""Memory and hello rate of idle push clients, against the stack's floor.

Opens N idle clients (hello + 2 registers each) against one connection
worker under gunicorn, and in the same run N clients against a bare
gevent-websocket echo app under the same worker class. Prints the worker's
RSS growth per client for both, their ratio (target <= 1.2), hellos per
second against the floor's connects per second, and the CPU the idle
clients cost each worker (% of one core per 10,000 clients).

    .venv/bin/python scripts/bench/connections.py [--clients 5000] [--registers 2] [--idle-seconds 20]

Idle CPU is read from ``/proc/<worker>/task/*/schedstat`` (nanoseconds)
over ``--idle-seconds`` once the clients are connected and settled, in
``IDLE_WINDOWS`` windows: the median and the spread (lowest–highest) are
printed, and the worker's idle CPU before any client connected, over half as
long. ``--idle-seconds 0`` skips it.

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
import statistics
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
IDLE_WINDOWS = 5


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


def cpu_seconds(pid: int) -> float:
    """CPU time of all the process's threads so far, at nanosecond resolution."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            total += int((task / "schedstat").read_text().split()[0])
        except (FileNotFoundError, ProcessLookupError):  # a thread that just ended
            continue
    return total / 1e9


def idle_cpu(pid: int, seconds: float, windows: int = IDLE_WINDOWS) -> list[float]:
    """Percent of one core the process used in each of ``windows`` equal windows of ``seconds``."""
    shares = []
    for _ in range(windows):
        used, started = cpu_seconds(pid), time.monotonic()
        time.sleep(seconds / windows)
        shares.append(100 * (cpu_seconds(pid) - used) / (time.monotonic() - started))
    return shares


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
    diag_dir: str | None = None, idle_seconds: float = 0.0,
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
        empty_cpu = idle_cpu(worker, idle_seconds / 2) if idle_seconds else []
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
        clients_cpu = idle_cpu(worker, idle_seconds) if idle_seconds else []
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
        "idle_cpu_empty": empty_cpu,
        "idle_cpu": clients_cpu,
    }


def idle_summary(result: dict, count: int) -> str:
    """Idle CPU with the clients, per 10,000 of them (median and spread of the windows), and
    the clients' own share: the median beyond the worker's median with no client."""
    per_10k = sorted(share * 10_000 / count for share in result["idle_cpu"])
    empty = statistics.median(result["idle_cpu_empty"])
    own = (statistics.median(result["idle_cpu"]) - empty) * 10_000 / count
    return (
        f"{statistics.median(per_10k):.3f} % of a core per 10,000 clients "
        f"({per_10k[0]:.3f}–{per_10k[-1]:.3f} over {len(per_10k)} windows); "
        f"{empty:.3f} % with no client, so the clients' own {own:.3f} % per 10,000"
    )


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


def print_types(result: dict, count: int, top: int = 25) -> None:
    """The gc-tracked types that grew most, per client (count and bytes of the objects themselves)."""
    before, after = ((s["report"] or {}).get("types", {}) for s in result["snapshots"])
    growth = {
        name: (after[name][0] - before.get(name, [0, 0])[0], after[name][1] - before.get(name, [0, 0])[1])
        for name in after
    }
    print(f"  gc-tracked objects by type, top {top} by bytes per client (objects/client, bytes/client):")
    for name, (number, size) in sorted(growth.items(), key=lambda kv: -kv[1][1])[:top]:
        print(f"    {name:60s} {number / count:7.2f} {size / count:9.1f}")


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
    print_types(result, count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=5000)
    parser.add_argument("--registers", type=int, default=2, help="registers per client (default 2)")
    parser.add_argument("--breakdown", action="store_true",
                        help="also break the growth down by mapping kind and allocator")
    parser.add_argument("--only", choices=("floor", "push"), help="measure one side only")
    parser.add_argument("--idle-seconds", type=float, default=20.0,
                        help="measure idle CPU this long with the clients connected (0: skip; default 20)")
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
                args.idle_seconds,
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
                diag_dir, args.idle_seconds,
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
    if args.idle_seconds:
        for name, result in (("floor", floor), ("connection node", push)):
            if result:
                print(f"idle CPU, {name}: {idle_summary(result, args.clients)}")
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
