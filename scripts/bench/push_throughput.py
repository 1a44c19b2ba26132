#!/usr/bin/env python3
"""Push throughput, latency, storage calls and CPU per notification, per store, against a Flask floor.

For each store asked for (``--store dynamodb|postgres|both``, default both)
a run starts the store, a connection node (1 worker) and an endpoint node
(1 gevent worker) under gunicorn on it, and K push clients holding one
VAPID-bound (v2) subscription each. Then, in one run:

- direct: N VAPID-signed pushes to the connected clients; notifications/s,
  POST->receive latency p50/p99, storage calls per notification and CPU per
  notification of each worker;
- durable: the same N pushes through a second endpoint node (same store)
  with ``AUTOPUSH_DURABLE_DIRECT=true``: each message is stored before the
  connection node gets it and deleted when the client acks; the same figures,
  and the difference to direct;
- floor: the same N requests to a bare Flask view (scripts/bench/flask_floor.py)
  under the same gevent worker; its CPU per request and the endpoint's ratio
  to it (target <= 4). These three run in two halves each, in a palindrome:
  floor, direct, durable, durable, direct, floor, so a drift in the
  machine's load over the run weighs on all three alike;
- stored: the clients go away, M pushes are stored, the clients come back and
  drain (acking every message); accepted and drained messages/s, storage calls
  and CPU per message.

The stores:

- dynamodb: dynalite behind a counting proxy in this process, which counts
  calls by X-Amz-Target (and adds a hop production does not have);
- postgres: a throw-away PostgreSQL cluster in a temporary directory (as the
  tests start it: fsync off, as root run by the ``postgres`` user), created
  and deleted by each run; statements are counted by pg_stat_statements in
  the server, by verb and tables (``UPDATE router``), with no proxy. Its CPU
  is the postmaster's and all its children's (one backend per connection).

    .venv/bin/python scripts/bench/push_throughput.py [--store both] [--runs 5]
        [--clients 50] [--pushes 2000] [--stored 500] [--concurrency 8] [--pg-bin DIR]
        [--check] [--chart DIR]

A quick look: ``--store dynamodb --pushes 300 --stored 100 --runs 1`` (under a
minute). Each store runs R times (``--runs``, default 5), the stores
alternating (A B, B A, ...); every run's own figures are printed, then each
figure's median over its store's runs with the range. Every run measures its
own floor, so each ratio is against a floor measured under the same load and
the ratio printed is the median of the runs' ratios. Then PASS or FAIL for
each target (endpoint ratio <= 4, connection node <= 0.5 ms CPU per direct
notification); the exit code is 0 either way unless ``--check`` is given.
``--chart DIR`` writes the POST->receive latency distribution to
``DIR/push_latency.png`` (matplotlib, a dev dependency). PostgreSQL not
installed: ``--store postgres`` says so and exits 2; ``both`` measures
DynamoDB and reports postgres as skipped.

Clients and the load generator run in separate processes. The direct,
durable and floor phases start with an unmeasured warm-up of one push per
client. The generator signs one VAPID JWT per subscription up front (valid
for an hour) and reuses it. The store's processes (dynalite and the counting
proxy, or PostgreSQL) share the two cores; their CPU is printed for context.
"""

from __future__ import annotations

import argparse
import base64
import collections
import contextlib
import dataclasses
import functools
import http.client
import itertools
import json
import os
import pwd
import re
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from tests.support.postgres import LocalPostgres
    from tests.support.webpush import AppServer

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# DynamoDB targets and SQL verbs, to tell reads from writes among storage calls.
READS = frozenset({"GetItem", "Query", "BatchGetItem", "Scan", "SELECT"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem", "INSERT", "UPDATE", "DELETE"})
VERBS = frozenset({"SELECT", "INSERT", "UPDATE", "DELETE"})
TOKEN = re.compile(r"[()]|[A-Za-z_]\w*")
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 0.5
MSG_LIMIT = 150  # the connection node's default msg_limit per drain
# The targets (docs/performance.md#push-throughput): the endpoint's CPU per direct
# VAPID notification against the floor's per request, measured in the same run
# (a ratio, meant to travel between machines); the connection node's CPU per
# direct notification (an absolute figure, of this machine).
ENDPOINT_RATIO_TARGET = 4.0
CONNECTION_MS_TARGET = 0.5
STORES = ["dynamodb", "postgres"]
BENCH_SCHEMA = "bench"
# The nodes need a DynamoDB endpoint setting; with AUTOPUSH_DB_URL set nothing calls it.
UNUSED_DDB_URL = "http://127.0.0.1:9"
EXIT_MISSING = 2  # a store asked for is not installed
EXIT_MISSED = 1  # --check, and a target was missed


class BenchError(Exception):
    """Something in the run went wrong; the message says what."""


# ---------------------------------------------------------------------------
# Client side (own process): K push clients, read and ack, time every receipt


def run_clients(url: str, count: int, key: str) -> int:
    """Speak JSON lines: one reply on stdout per command read from stdin."""
    import selectors
    import socket

    import websocket

    from tests.support.push_client import PushClient

    received: dict[str, float] = {}
    errors: list[str] = []
    condition = threading.Condition()
    pending: collections.deque = collections.deque()
    wake_read, wake_write = socket.socketpair()
    stop = threading.Event()

    def receive_loop() -> None:
        selector = selectors.DefaultSelector()
        selector.register(wake_read, selectors.EVENT_READ, None)
        while not stop.is_set():
            for key_, _ in selector.select(0.2):
                client = key_.data
                if client is None:
                    wake_read.recv(4096)
                    while pending:
                        new = pending.popleft()
                        selector.register(new.ws.sock, selectors.EVENT_READ, new)
                    continue
                try:
                    message = client.receive()
                except websocket.WebSocketTimeoutException:
                    continue  # a ping frame answered, no data frame behind it
                except Exception as error:  # noqa: BLE001 - reported to the parent
                    with condition:
                        errors.append(f"{client.uaid}: {type(error).__name__}: {error}")
                    selector.unregister(key_.fileobj)
                    continue
                if isinstance(message, dict) and message.get("messageType") == "notification":
                    now = time.time()
                    client.ack(message)
                    with condition:
                        received[message["version"]] = now
                        condition.notify_all()
        selector.close()

    def start_loop() -> threading.Thread:
        stop.clear()
        thread = threading.Thread(target=receive_loop, daemon=True)
        thread.start()
        return thread

    def reply(message: dict) -> None:
        print(json.dumps(message), flush=True)

    clients: list[PushClient] = []
    try:
        subscriptions = []
        for _ in range(count):
            client = PushClient(url, timeout=10)
            hello = client.hello()
            if hello.get("status") != 200:
                raise BenchError(f"hello failed: {hello}")
            channel_id = str(uuid.uuid4())
            registered = client.register(channel_id, key=key)
            if registered.get("status") != 200:
                raise BenchError(f"register failed: {registered}")
            clients.append(client)
            subscriptions.append({"uaid": client.uaid, "endpoint": registered["pushEndpoint"]})
        for client in clients:
            pending.append(client)
        thread = start_loop()
        wake_write.send(b"x")
        reply({"subscriptions": subscriptions})

        for line in sys.stdin:
            command = json.loads(line)
            action = command["cmd"]
            if action == "wait":
                with condition:
                    condition.wait_for(lambda: len(received) >= command["count"] or errors,
                                       command["seconds"])
                    reply({"received": dict(received), "errors": list(errors)})
                    received.clear()
            elif action == "disconnect":
                stop.set()
                thread.join(10)
                for client in clients:
                    client.close()
                reply({"ok": True})
            elif action == "reconnect":
                thread = start_loop()
                started = time.time()
                uaids = [client.uaid for client in clients]
                clients = []
                for uaid in uaids:
                    client = PushClient(url, timeout=10)
                    hello = client.hello(uaid)
                    if hello.get("status") != 200 or hello.get("uaid") != uaid:
                        raise BenchError(f"reconnect hello for {uaid} answered {hello}")
                    clients.append(client)
                    pending.append(client)
                    wake_write.send(b"x")
                reply({"started": started, "connected": time.time()})
            elif action == "quit":
                break
        return 0
    except Exception as error:  # noqa: BLE001 - reported to the parent
        reply({"error": f"{type(error).__name__}: {error}"})
        return 1
    finally:
        stop.set()
        for client in clients:
            client.close()


# ---------------------------------------------------------------------------
# Load generator (own process): concurrent keep-alive POSTs, send time per message id


def run_generator(job_path: str) -> int:
    job = json.loads(Path(job_path).read_text())
    host, port, count, concurrency = job["host"], job["port"], job["count"], job["concurrency"]
    targets = [(path, headers) for path, headers in job["targets"]]
    body = base64.b64decode(job["body"])
    counter = itertools.count()
    results: list[list] = [[] for _ in range(concurrency)]
    barrier = threading.Barrier(concurrency + 1)

    def worker(slot: int) -> None:
        out = results[slot]
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.connect()
        barrier.wait()
        while (index := next(counter)) < count:
            path, headers = targets[index % len(targets)]
            sent = time.time()
            try:
                connection.request("POST", path, body=body, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as error:
                out.append([sent, 0, f"{type(error).__name__}: {error}"])
                connection.close()
                connection = http.client.HTTPConnection(host, port, timeout=30)
                continue
            location = response.getheader("Location") or ""
            out.append([sent, response.status, location.rpartition("/m/")[2]])
        connection.close()

    threads = [threading.Thread(target=worker, args=(slot,), daemon=True) for slot in range(concurrency)]
    for thread in threads:
        thread.start()
    barrier.wait(30)
    started = time.time()
    for thread in threads:
        thread.join()
    finished = time.time()
    sends = [entry for out in results for entry in out]
    print(json.dumps({"started": started, "finished": finished, "sends": sends}))
    return 0


# ---------------------------------------------------------------------------
# Stores: started for one run each, with the processes serving them and a call counter


@dataclasses.dataclass
class Store:
    """A started store as a run sees it: how the nodes reach it, which processes
    serve it (their CPU is printed for context) and how its calls are counted."""

    name: str
    description: str
    ddb_url: str
    settings: dict[str, str]
    context_cpu: dict[str, Callable[[], float]]
    calls: Callable[[], collections.Counter]


def start_dynamodb(args: argparse.Namespace, started: list) -> Store:
    """dynalite behind the counting proxy (one more hop than production has)."""
    from tests.support.processes import LocalDynamoDB

    database = LocalDynamoDB()
    started.append(database.stop)
    database.start()
    proxy = make_counting_proxy(database.port).start()
    started.append(proxy.stop)
    return Store(
        name="dynamodb", description="dynalite, calls counted by a proxy in front of it",
        ddb_url=proxy.url, settings={},
        context_cpu={"dynalite": functools.partial(cpu_seconds, database.process.pid),
                     "counting proxy": functools.partial(cpu_seconds, os.getpid())},
        calls=proxy.snapshot,
    )


def start_postgres(args: argparse.Namespace, started: list) -> Store:
    """A throw-away cluster as the tests start it (temporary directory, fsync off),
    with pg_stat_statements loaded so statements are counted in the server."""
    from tests.support.postgres import LocalPostgres

    cluster = LocalPostgres(args.pg_bin)
    started.append(cluster.destroy)
    cluster.start()
    cluster.execute("ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'")
    cluster.restart()
    cluster.execute("CREATE EXTENSION pg_stat_statements")
    counter = StatementCounter(cluster.url(), BENCH_SCHEMA)
    started.append(counter.close)
    return Store(
        name="postgres",
        description=f"PostgreSQL {counter.version}, throw-away local cluster (fsync off), "
                    "statements counted by pg_stat_statements (no proxy)",
        ddb_url=UNUSED_DDB_URL, settings={"AUTOPUSH_DB_URL": cluster.schema_url(BENCH_SCHEMA)},
        context_cpu={"postgres": functools.partial(tree_cpu_seconds, postmaster_pid(cluster))},
        calls=counter.snapshot,
    )


STARTERS: dict[str, Callable[[argparse.Namespace, list], Store]] = {
    "dynamodb": start_dynamodb, "postgres": start_postgres,
}


def postgres_binaries(option: str | None) -> Path:
    """The server binaries to run; ``PostgresMissing`` says why there are none.

    Checked before any run, so ``--store postgres`` fails at once and ``both``
    reports postgres as skipped instead of failing after the DynamoDB run.
    """
    from tests.support.postgres import SYSTEM_USER, PostgresMissing, find_binaries

    binaries = Path(option) if option else find_binaries()
    missing = [name for name in ("initdb", "pg_ctl", "postgres") if not (binaries / name).exists()]
    if missing:
        raise PostgresMissing(f"no {', '.join(missing)} in {binaries}")
    if not (binaries.parent / "lib" / "pg_stat_statements.so").exists():
        raise PostgresMissing(f"no pg_stat_statements module beside {binaries} (it counts the statements)")
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SYSTEM_USER)
        except KeyError:
            raise PostgresMissing(f"as root the server runs as the {SYSTEM_USER!r} user, "
                                  "which does not exist") from None
    return binaries


def postmaster_pid(cluster: LocalPostgres) -> int:
    return int((cluster.data / "postmaster.pid").read_text().split()[0])


class StatementCounter:
    """The nodes' statements by verb and tables (``SELECT channel_lists+router``),
    the counterpart of DynamoDB's targets, read from pg_stat_statements.

    Its own queries carry ``MARK`` and are left out. pg_stat_statements
    updates its counts as each statement ends, so a snapshot right after the
    last ack sees every statement.
    """

    MARK = "/* push-bench */"

    def __init__(self, url: str, schema: str) -> None:
        import psycopg

        self._connection = psycopg.connect(url, autocommit=True)
        self._schema = schema
        self.version = self._query("SHOW server_version")[0][0]

    def _query(self, statement: str, *params: object) -> list[tuple]:
        return self._connection.execute(f"{self.MARK} {statement}", params or None).fetchall()

    def snapshot(self) -> collections.Counter:
        tables = {name for name, in self._query("SELECT tablename FROM pg_tables WHERE schemaname = %s",
                                                 self._schema)}
        rows = self._query("SELECT query, calls FROM pg_stat_statements WHERE query NOT LIKE %s",
                           f"%{self.MARK}%")
        counts: collections.Counter = collections.Counter()
        for query, calls in rows:
            counts[statement_label(query, tables)] += calls
        return counts

    def close(self) -> None:
        self._connection.close()


def statement_label(query: str, tables: set[str]) -> str:
    """The statement's verb (a WITH's main one: the first at parenthesis depth 0
    after it) and the tables it names; ``BEGIN`` etc. as they are."""
    depth, verb = 0, None
    for token in TOKEN.findall(query):
        depth += {"(": 1, ")": -1}.get(token, 0)
        if depth == 0 and token.upper() in VERBS:
            verb = token.upper()
            break
    verb = verb or (query.split(None, 1) or ["?"])[0].upper()
    named = sorted({word for word in TOKEN.findall(query) if word in tables})
    if not named:
        return f"{verb} (no table)" if verb in VERBS else verb
    return f"{verb} {'+'.join(named)}"


# ---------------------------------------------------------------------------
# Measuring


def make_counting_proxy(upstream_port: int):
    """The test suite's DynamoDB proxy (throttling off), counting calls by X-Amz-Target."""
    from tests.support.throttle_proxy import ThrottleProxy

    class CountingProxy(ThrottleProxy):
        def __init__(self, port: int) -> None:
            self.by_target: collections.Counter = collections.Counter()
            self._count_lock = threading.Lock()
            super().__init__(port)

        def snapshot(self) -> collections.Counter:
            with self._count_lock:
                return collections.Counter(self.by_target)

        def _handler_class(self):
            base = super()._handler_class()
            proxy = self

            class CountingHandler(base):
                def setup(self) -> None:
                    super().setup()
                    # The handler writes headers and body separately: without
                    # this, Nagle + delayed ACK add ~40 ms to every call.
                    self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

                def do_POST(self) -> None:  # noqa: N802 - http.server naming
                    target = self.headers.get("X-Amz-Target", "").rpartition(".")[2] or "?"
                    with proxy._count_lock:
                        proxy.by_target[target] += 1
                    super().do_POST()

            return CountingHandler

    return CountingProxy(upstream_port)


class ClientProcess:
    def __init__(self, url: str, count: int, key: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--client-process", url, "--clients", str(count), "--key", key],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT,
        )

    def read(self, timeout: float) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        line = self.process.stdout.readline() if ready else ""
        if not line:
            code = self.process.poll()
            raise BenchError(f"client process gave no answer within {timeout:.0f} s (exit code {code})")
        answer = json.loads(line)
        if "error" in answer:
            raise BenchError(f"client process: {answer['error']}")
        return answer

    def command(self, timeout: float, **command) -> dict:
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return self.read(timeout)

    def wait_for(self, count: int, timeout: float) -> dict[str, float]:
        answer = self.command(timeout + 30, cmd="wait", count=count, seconds=timeout)
        if answer["errors"]:
            raise BenchError(f"clients failed: {answer['errors'][:3]}")
        if len(answer["received"]) < count:
            raise BenchError(f"clients received {len(answer['received'])} of {count} notifications "
                             f"within {timeout:.0f} s")
        return answer["received"]

    def stop(self) -> None:
        from tests.support.processes import stop_process

        if self.process.poll() is None:
            try:
                self.process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
                self.process.stdin.flush()
                self.process.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass
        stop_process(self.process)


def worker_pid(master_pid: int) -> int:
    children = Path(f"/proc/{master_pid}/task/{master_pid}/children").read_text().split()
    if len(children) != 1:
        raise BenchError(f"gunicorn master {master_pid} has {len(children)} workers, expected 1")
    return int(children[0])


def cpu_seconds(pid: int, reaped_children: bool = False) -> float:
    """utime + stime (fields 14, 15); with ``reaped_children`` also those of its
    exited children (cutime, cstime: fields 16, 17)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = int(fields[11]) + int(fields[12])
    if reaped_children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLK_TCK


def tree_cpu_seconds(pid: int) -> float:
    """A process and its children, exited or running: PostgreSQL serves every
    connection, and writes its WAL, from children of the postmaster."""
    total = cpu_seconds(pid, reaped_children=True)
    for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += cpu_seconds(int(child))
    return total


class Meter:
    """CPU of some processes and storage calls between ``start()`` and ``stop()``.

    Calls are snapshotted outside the CPU window: on PostgreSQL a snapshot is
    a query, whose server time is not the nodes' work.
    """

    def __init__(self, cpu: dict[str, Callable[[], float]],
                 calls: Callable[[], collections.Counter] | None) -> None:
        self.cpu = cpu
        self.calls = calls

    def start(self) -> None:
        self._calls = self.calls() if self.calls else collections.Counter()
        self._cpu = {name: read() for name, read in self.cpu.items()}

    def stop(self) -> dict:
        cpu = {name: read() - self._cpu[name] for name, read in self.cpu.items()}
        calls = self.calls() - self._calls if self.calls else collections.Counter()
        return {"cpu": cpu, "calls": calls}


def generate(job: dict, workdir: Path, timeout: float) -> dict:
    job_path = workdir / f"job-{uuid.uuid4().hex[:8]}.json"
    job_path.write_text(json.dumps(job))
    try:
        done = subprocess.run(
            [sys.executable, __file__, "--generator", str(job_path)],
            capture_output=True, text=True, timeout=timeout, cwd=ROOT,
        )
    except subprocess.TimeoutExpired as error:
        raise BenchError(f"load generator did not finish within {timeout:.0f} s") from error
    if done.returncode != 0:
        raise BenchError(f"load generator failed ({done.returncode}): {done.stderr[-2000:]}")
    result = json.loads(done.stdout)
    statuses = collections.Counter(status for _, status, _ in result["sends"])
    if set(statuses) != {201} or len(result["sends"]) != job["count"]:
        failures = [detail for _, status, detail in result["sends"] if status != 201][:3]
        raise BenchError(f"load generator got statuses {dict(statuses)} for {job['count']} pushes; "
                         f"first failures: {failures}")
    return result


def push_job(targets: list, host: str, port: int, count: int, concurrency: int, body: bytes) -> dict:
    return {"host": host, "port": port, "targets": targets, "count": count,
            "concurrency": concurrency, "body": base64.b64encode(body).decode()}


def fake_aes128gcm_body(size: int = 64) -> bytes:
    """Looks like RFC 8188: salt, record size 4096, 65-byte keyid, ciphertext."""
    keyid = b"\x04" + os.urandom(64)
    return os.urandom(16) + (4096).to_bytes(4, "big") + bytes([len(keyid)]) + keyid + os.urandom(size)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(fraction * (len(ordered) - 1))))]


def combine_rounds(rounds: list[dict]) -> dict:
    """One mode's figures from its rounds: rates over the summed windows, percentiles
    over every latency, CPU and storage calls summed."""
    latencies = [latency for part in rounds for latency in part["latencies"]]
    cpu: collections.Counter = collections.Counter()
    calls: collections.Counter = collections.Counter()
    for part in rounds:
        cpu.update(part["cpu"])
        calls.update(part["calls"])
    return {
        "rate": len(latencies) / sum(part["delivered_seconds"] for part in rounds),
        "accepted_rate": len(latencies) / sum(part["accepted_seconds"] for part in rounds),
        "p50": percentile(latencies, 0.50), "p99": percentile(latencies, 0.99),
        "cpu": dict(cpu), "calls": calls, "latencies": latencies,
    }


def combine_floor_rounds(rounds: list[dict]) -> dict:
    """The floor's halves as one: their windows and CPU summed."""
    cpu: collections.Counter = collections.Counter()
    for part in rounds:
        cpu.update(part["cpu"])
    return {"seconds": sum(part["seconds"] for part in rounds), "cpu": dict(cpu)}


def timeout_for(count: int) -> float:
    return 60 + count / 20


def signed_targets(app_server: AppServer, endpoint_url: str, subscriptions: list[dict]) -> list[list]:
    """``[path, headers]`` per subscription: one VAPID JWT each, valid for the hour,
    signed up front so the generator spends nothing on signing."""
    endpoint = urlsplit(endpoint_url)
    origin = f"{endpoint.scheme}://{endpoint.netloc}"
    targets = []
    for subscription in subscriptions:
        claims = {"sub": "mailto:bench@example.com", "aud": origin, "exp": int(time.time()) + 3600}
        headers = {
            "Authorization": app_server.vapid.sign(claims)["Authorization"],
            "Content-Encoding": "aes128gcm",
            "Content-Type": "application/octet-stream",
            "TTL": "60",
        }
        targets.append([urlsplit(subscription["endpoint"]).path, headers])
    return targets


class PushBench:
    """One run on one started store: a stack, its clients and the pushes they get.

    Everything started is added to ``started``, which the caller stops.
    """

    def __init__(self, args: argparse.Namespace, workdir: Path, started: list, store: Store) -> None:
        from tests.support.stack import Stack
        from tests.support.webpush import AppServer

        self.args, self.workdir, self.started, self.store = args, workdir, started, store
        self.stack = Stack(store.ddb_url, workdir, **store.settings)
        started.append(self.stack.stop)
        self.stack.start()
        self.connection_pid = worker_pid(self.stack.connection.process.pid)
        app_server = AppServer()
        self.clients = ClientProcess(self.stack.ws_url, args.clients, app_server.application_server_key)
        started.append(self.clients.stop)
        subscriptions = self.clients.read(timeout=60 + args.clients * 0.5)["subscriptions"]
        self.targets = signed_targets(app_server, self.stack.endpoint_url, subscriptions)
        self.body = fake_aes128gcm_body()

    def run(self) -> dict:
        results = self.floor_direct_and_durable()
        results.update(self.stored_and_drained())
        return {**results, "store": self.store.description}

    def job(self, count: int, port: int) -> dict:
        return push_job(self.targets, "127.0.0.1", port, count, self.args.concurrency, self.body)

    def meter(self, endpoint_worker: int) -> Meter:
        return Meter({"endpoint": functools.partial(cpu_seconds, endpoint_worker),
                      "connection": functools.partial(cpu_seconds, self.connection_pid),
                      **self.store.context_cpu}, self.store.calls)

    def warm_up(self, port: int) -> None:
        count = self.args.clients
        generate(self.job(count, port), self.workdir, timeout_for(count))
        self.clients.wait_for(count, timeout_for(count))
        time.sleep(SETTLE_SECONDS)

    def push_round(self, port: int, measured: Meter, count: int) -> dict:
        """``count`` pushes to the connected clients through the endpoint on ``port``."""
        measured.start()
        sent = generate(self.job(count, port), self.workdir, timeout_for(count))
        received = self.clients.wait_for(count, timeout_for(count))
        time.sleep(SETTLE_SECONDS)  # let the last acks reach the connection worker (and their deletes)
        figures = measured.stop()
        missing = [version for _, _, version in sent["sends"] if version not in received]
        if missing:
            raise BenchError(f"{len(missing)} pushed message ids never reached a client, e.g. {missing[0]}")
        return {
            "latencies": [received[version] - when for when, _, version in sent["sends"]],
            "delivered_seconds": max(received.values()) - sent["started"],
            "accepted_seconds": sent["finished"] - sent["started"],
            **figures,
        }

    def floor_direct_and_durable(self) -> dict:
        """Each mode's N requests in two halves, in a palindrome: floor, direct,
        durable, durable, direct, floor. A drift in the machine's load that is
        linear over those minutes then weighs on the three alike, and the
        endpoint's ratio compares CPU measured around the same moments. (With
        the floor in one piece before or after the service, a run could catch
        the floor and the service in different states of a shared machine:
        ratios of 3.5 and 4.9 in one invocation for the same endpoint CPU.)"""
        from tests.support.processes import GunicornNode

        durable = self.stack.another_endpoint("endpoint-durable", AUTOPUSH_DURABLE_DIRECT="true")
        floor = GunicornNode("scripts.bench.flask_floor:app", {**os.environ, "PYTHONPATH": str(ROOT)})
        self.started.append(floor.stop)
        floor.start(self.workdir / "floor.log")
        endpoint = self.stack.endpoint
        self.direct_meter = self.meter(worker_pid(endpoint.process.pid))
        modes = {"direct": (endpoint.port, self.direct_meter),
                 "durable": (durable.port, self.meter(worker_pid(durable.process.pid)))}
        floor_meter = Meter({"floor": functools.partial(cpu_seconds, worker_pid(floor.process.pid))}, None)
        for port, _ in modes.values():
            self.warm_up(port)
        generate(self.job(self.args.clients, floor.port), self.workdir, timeout_for(self.args.clients))
        time.sleep(SETTLE_SECONDS)
        half = self.args.pushes // 2
        rest = self.args.pushes - half
        rounds: dict[str, list[dict]] = {"floor": [], **{mode: [] for mode in modes}}
        for mode, count in (("floor", half), ("direct", half), ("durable", half),
                            ("durable", rest), ("direct", rest), ("floor", rest)):
            if mode == "floor":
                rounds[mode].append(self.floor_round(floor.port, floor_meter, count))
            else:
                port, measured = modes[mode]
                rounds[mode].append(self.push_round(port, measured, count))
        durable.stop()
        floor.stop()
        results = {mode: combine_rounds(rounds[mode]) for mode in modes}
        return {**results, "floor": combine_floor_rounds(rounds["floor"])}

    def floor_round(self, port: int, measured: Meter, count: int) -> dict:
        """The same requests to a bare Flask view under the same gevent worker."""
        measured.start()
        sent = generate(self.job(count, port), self.workdir, timeout_for(count))
        return {"seconds": sent["finished"] - sent["started"], **measured.stop()}

    def stored_and_drained(self) -> dict:
        """Clients away, M pushes stored, clients back and draining (acking each)."""
        stored_count, both = self.args.stored, self.direct_meter
        self.clients.command(30, cmd="disconnect")
        time.sleep(1.0)  # the connection worker notices the closed sockets
        both.start()
        sent = generate(self.job(stored_count, self.stack.endpoint.port), self.workdir, timeout_for(stored_count))
        stored = both.stop()
        both.start()
        reconnected = self.clients.command(60 + self.args.clients * 0.5, cmd="reconnect")
        drained = self.clients.wait_for(stored_count, timeout_for(stored_count))
        time.sleep(SETTLE_SECONDS)  # the last acks delete their messages
        drain = both.stop()
        missing = [version for _, _, version in sent["sends"] if version not in drained]
        if missing:
            raise BenchError(f"{len(missing)} stored message ids were never drained, e.g. {missing[0]}")
        return {
            "stored": {"rate": stored_count / (sent["finished"] - sent["started"]), **stored},
            "drain": {"rate": stored_count / (max(drained.values()) - reconnected["started"]),
                      "reconnect_seconds": reconnected["connected"] - reconnected["started"], **drain},
        }


# ---------------------------------------------------------------------------
# Figures: per run, then median and spread over a store's runs


def prefixed(prefix: str, figures: dict[str, float]) -> dict[str, float]:
    return {f"{prefix} {key}": value for key, value in figures.items()}


def cpu_ms(cpu: dict[str, float], count: int) -> dict[str, float]:
    return {f"cpu {name}": seconds / count * 1000 for name, seconds in cpu.items()}


def run_figures(args: argparse.Namespace, result: dict) -> dict[str, float]:
    """Every printed figure of one run. Ratios are taken within the run, so each
    is against the floor (and direct mode) measured under the same load."""
    n, m = args.pushes, args.stored
    figures: dict[str, float] = {}
    for mode in ("direct", "durable"):
        part = result[mode]
        figures.update(prefixed(mode, {"rate": part["rate"], "accepted": part["accepted_rate"],
                                       "p50": part["p50"] * 1000, "p99": part["p99"] * 1000,
                                       **cpu_ms(part["cpu"], n)}))
    floor = result["floor"]
    figures.update(prefixed("floor", {"rate": n / floor["seconds"], **cpu_ms(floor["cpu"], n)}))
    floor_ms = figures["floor cpu floor"]
    figures["ratio"] = figures["direct cpu endpoint"] / floor_ms
    figures["direct calls"] = sum(result["direct"]["calls"].values()) / n
    for node in ("endpoint", "connection"):
        figures[f"durable vs direct {node}"] = (figures[f"durable cpu {node}"] / figures[f"direct cpu {node}"] - 1) * 100
    figures.update(prefixed("stored", {"rate": result["stored"]["rate"], **cpu_ms(result["stored"]["cpu"], m)}))
    drain = result["drain"]
    figures.update(prefixed("drain", {"rate": drain["rate"], "reconnect": drain["reconnect_seconds"],
                                      **cpu_ms(drain["cpu"], m)}))
    figures["stored vs floor"] = figures["stored cpu endpoint"] / floor_ms
    figures["drain vs floor"] = figures["drain cpu connection"] / floor_ms
    return figures


Summary = dict[str, tuple[float, float, float]]


def summarize(runs: list[dict[str, float]]) -> Summary:
    """``{figure: (median, min, max)}`` over the runs."""
    return {key: (statistics.median(values), min(values), max(values))
            for key in runs[0] for values in [[run[key] for run in runs]]}


def show(figure: tuple[float, float, float], spec: str) -> str:
    """``147 [139–152]``: the median and, over several runs, the range."""
    median, low, high = figure
    text = format(median, spec)
    return text if low == high else f"{text} [{format(low, spec)}–{format(high, spec)}]"


def summed_calls(runs: list[dict], phase: str) -> collections.Counter:
    total: collections.Counter = collections.Counter()
    for run in runs:
        total.update(run[phase]["calls"])
    return total


def share(value: float) -> str:
    """Calls per message; a rare call (the hourly purge landing in a window) shows as <0.01, not 0.00."""
    return f"{value:.2f}" if value >= 0.005 else "<0.01"


def per(calls: collections.Counter, count: int) -> str:
    """Calls per message, reads and writes told apart by the target's or statement's verb."""
    reads = sum(n for label, n in calls.items() if label.split()[0] in READS)
    writes = sum(n for label, n in calls.items() if label.split()[0] in WRITES)
    detail = ", ".join(f"{label} {share(n / count)}" for label, n in sorted(calls.items()))
    return (f"{sum(calls.values()) / count:.2f} (reads {reads / count:.2f}, writes {writes / count:.2f})"
            + (f" [{detail}]" if detail else ""))


def print_mode(mode: str, figures: Summary, runs: list[dict], count: int, context: list[str]) -> None:
    def fig(key: str, spec: str = ".2f") -> str:
        return show(figures[f"{mode} {key}"], spec)

    print(f"{mode}: {fig('rate', '.0f')} notifications/s (accepted {fig('accepted', '.0f')}/s), "
          f"latency p50 {fig('p50')} ms p99 {fig('p99')} ms")
    print(f"storage calls per {mode} notification: {per(summed_calls(runs, mode), count * len(runs))}")
    line = f"cpu per {mode} notification: endpoint {fig('cpu endpoint')} ms, connection {fig('cpu connection')} ms"
    if mode == "durable":
        line += (f" (vs direct: endpoint {show(figures['durable vs direct endpoint'], '+.0f')}%, "
                 f"connection {show(figures['durable vs direct connection'], '+.0f')}%)")
    print(line)
    print("  (same window: " + ", ".join(f"{name} {fig(f'cpu {name}')} ms" for name in context)
          + " cpu per notification)")


PER_RUN = [  # (label, figure, format) of the per-run table
    ("endpoint cpu per direct notification, ms", "direct cpu endpoint", ".3f"),
    ("floor cpu per request, ms", "floor cpu floor", ".3f"),
    ("endpoint / floor", "ratio", ".2f"),
    ("connection cpu per direct notification, ms", "direct cpu connection", ".3f"),
    ("endpoint cpu per stored push, ms", "stored cpu endpoint", ".3f"),
    ("connection cpu per drained message, ms", "drain cpu connection", ".3f"),
    ("direct POST->receive p50, ms", "direct p50", ".1f"),
    ("direct POST->receive p99, ms", "direct p99", ".1f"),
    ("storage calls per direct notification", "direct calls", ".2f"),
]


def print_runs(per_run: list[dict[str, float]]) -> None:
    """Every run's own figures, in the order they ran."""
    width = max(len(label) for label, _, _ in PER_RUN)
    print("run".ljust(width) + "".join(f"{index:>9}" for index in range(1, len(per_run) + 1)))
    for label, key, spec in PER_RUN:
        print(label.ljust(width) + "".join(f"{format(run[key], spec):>9}" for run in per_run))


def verdicts(figures: Summary) -> list[tuple[str, str, bool]]:
    """(figure, its median and range against the target, met) for each target."""
    ratio, connection = figures["ratio"], figures["direct cpu connection"]
    return [
        ("endpoint CPU per direct VAPID notification / floor",
         f"{show(ratio, '.2f')} (target <= {ENDPOINT_RATIO_TARGET:g})", ratio[0] <= ENDPOINT_RATIO_TARGET),
        ("connection node CPU per direct notification",
         f"{show(connection, '.3f')} ms (target <= {CONNECTION_MS_TARGET:g} ms)",
         connection[0] <= CONNECTION_MS_TARGET),
    ]


def report_store(args: argparse.Namespace, name: str, runs: list[dict]) -> list[str]:
    """Print one store's figures; returns the targets it missed."""
    per_run = [run_figures(args, run) for run in runs]
    figures = summarize(per_run)
    runs_m = args.stored * len(runs)
    context = [key for key in runs[0]["direct"]["cpu"] if key not in ("endpoint", "connection")]
    print(f"\n== {name}: {runs[0]['store']}; {len(runs)} run{'s' * (len(runs) > 1)}")
    print_runs(per_run)
    for mode in ("direct", "durable"):
        print_mode(mode, figures, runs, args.pushes, context)
    print(f"floor: {show(figures['floor cpu floor'], '.2f')} ms cpu per request "
          f"({show(figures['floor rate'], '.0f')} requests/s); ratio {show(figures['ratio'], '.2f')} "
          f"(median of the runs' own ratios)")
    print(f"stored: {show(figures['stored rate'], '.0f')} pushes/s accepted; "
          f"storage calls per push: {per(summed_calls(runs, 'stored'), runs_m)}")
    print(f"cpu per stored push: endpoint {show(figures['stored cpu endpoint'], '.2f')} ms, "
          f"connection {show(figures['stored cpu connection'], '.2f')} ms")
    print(f"drain: {show(figures['drain rate'], '.0f')} messages/s (reconnect of {args.clients} clients "
          f"{show(figures['drain reconnect'], '.2f')} s); storage calls per message: "
          f"{per(summed_calls(runs, 'drain'), runs_m)}")
    print(f"cpu per drained message: connection {show(figures['drain cpu connection'], '.2f')} ms, "
          f"endpoint {show(figures['drain cpu endpoint'], '.2f')} ms")
    print(f"against the floor (no target): stored push, endpoint {show(figures['stored vs floor'], '.1f')}x; "
          f"drained message, connection {show(figures['drain vs floor'], '.1f')}x")
    missed = []
    for label, text, met in verdicts(figures):
        print(f"{'PASS' if met else 'FAIL'}: {label}: {text}")
        if not met:
            missed.append(f"{name}: {label}: {text}")
    return missed


def report(args: argparse.Namespace, results: dict[str, list[dict]], skipped: dict[str, str],
           elapsed: float, loads: tuple[float, float]) -> list[str]:
    """Print every store's figures; returns the targets missed."""
    print()
    print(f"clients: {args.clients}, direct pushes: {args.pushes}, stored pushes: {args.stored}, "
          f"concurrency: {args.concurrency}, run time {elapsed:.0f} s, "
          f"load average {loads[0]:.1f} at the start, {loads[1]:.1f} at the end")
    print(f"machine: {os.cpu_count()} cores, {cpu_model()}")
    print("figures: median [min–max] over a store's runs; storage calls: mean; "
          "each run measures its own floor, its halves around the service's (floor, direct, durable, "
          "durable, direct, floor)")
    missed = []
    for name, runs in results.items():
        missed += report_store(args, name, runs)
    for name, reason in skipped.items():
        print(f"\n== {name}: skipped: {reason}")
    return missed


def cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.partition(":")[2].strip()
    return "unknown CPU"


def write_chart(directory: Path, results: dict[str, list[dict]], args: argparse.Namespace) -> Path:
    """The POST->receive latency distribution (CDF, log scale) of every store and
    mode, all runs pooled: direct, and durable (stored, then delivered)."""
    from scripts.bench.charts import new_chart, save_chart

    figure, axes = new_chart()
    styles = {"direct": "-", "durable": "--"}
    for color, (name, runs) in enumerate(results.items()):
        for mode, style in styles.items():
            latencies = sorted(value * 1000 for run in runs for value in run[mode]["latencies"])
            if not latencies:
                continue
            fractions = [(index + 1) / len(latencies) for index in range(len(latencies))]
            label = f"{name}, {mode if mode == 'direct' else 'durable (stored first)'}"
            axes.plot(latencies, fractions, style, color=f"C{color}", linewidth=1.4, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("POST → received by the client, ms (log scale)")
    axes.set_ylabel("fraction of notifications")
    axes.set_ylim(0, 1.0)
    axes.grid(True, which="both", linewidth=0.3)
    runs_count = max(len(runs) for runs in results.values())
    axes.set_title(f"Push latency: {args.clients} clients, {args.pushes} pushes per mode, "
                   f"{runs_count} run{'s' * (runs_count > 1)}", fontsize=10)
    axes.legend(fontsize=8, loc="lower right")
    return save_chart(figure, directory, "push_latency.png")


# ---------------------------------------------------------------------------
# Runs


def schedule(stores: list[str], runs: int) -> list[str]:
    """The stores' runs alternated (A B, B A, A B, ...): a drift in the machine's
    load then weighs on every store alike."""
    return [name for index in range(runs) for name in (stores if index % 2 == 0 else stores[::-1])]


def stop_all(started: list) -> None:
    for stop in reversed(started):
        try:
            stop()
        except Exception as error:  # noqa: BLE001 - keep stopping the rest
            print(f"push_throughput: cleanup: {type(error).__name__}: {error}", file=sys.stderr)


def measure_once(args: argparse.Namespace, store_name: str, workdir: Path) -> dict:
    """One run on a store started for it, and stopped after it whatever happens."""
    started: list = []
    try:
        store = STARTERS[store_name](args, started)
        return PushBench(args, workdir, started, store).run()
    finally:
        stop_all(started)


def print_log_tails(workdir: Path) -> None:
    for log in sorted(workdir.glob("*.log")):
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
        if tail.strip():
            print(f"--- {log.name} (last lines) ---\n{tail}", file=sys.stderr)


def run_all(args: argparse.Namespace, stores: list[str], tmp: Path) -> dict[str, list[dict]]:
    results: dict[str, list[dict]] = {name: [] for name in stores}
    plan = schedule(stores, args.runs)
    for index, name in enumerate(plan, 1):
        workdir = tmp / f"{index}-{name}"
        workdir.mkdir()
        print(f"push_throughput: run {index} of {len(plan)}: {name}", file=sys.stderr, flush=True)
        try:
            results[name].append(measure_once(args, name, workdir))
        except Exception:
            print_log_tails(workdir)
            raise
    return results


def choose_stores(args: argparse.Namespace) -> tuple[list[str], dict[str, str]]:
    """The stores to run, and those skipped with the reason. Raises ``PostgresMissing``
    when PostgreSQL was the only store asked for."""
    from tests.support.postgres import PostgresMissing

    wanted = list(STORES) if args.store == "both" else [args.store]
    if "postgres" not in wanted:
        return wanted, {}
    try:
        args.pg_bin = postgres_binaries(args.pg_bin)
    except PostgresMissing as error:
        if args.store == "postgres":
            raise
        return ["dynamodb"], {"postgres": f"PostgreSQL is not installed: {error}"}
    return wanted, {}


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", choices=(*STORES, "both"), default="both",
                        help="storage backend(s) to measure (default both)")
    parser.add_argument("--runs", type=int, default=5,
                        help="runs per store, alternating stores; figures are medians (default 5; "
                             "--pushes 300 --runs 1 for a quick look)")
    parser.add_argument("--clients", type=int, default=50, help="connected push clients (default 50)")
    parser.add_argument("--pushes", type=int, default=2000, help="direct pushes (default 2000)")
    parser.add_argument("--stored", type=int, default=500, help="pushes stored while offline (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="generator connections (default 8)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 when a target is missed (default: report PASS/FAIL, exit 0)")
    parser.add_argument("--chart", metavar="DIR", type=Path,
                        help="write the POST->receive latency distribution to DIR/push_latency.png")
    parser.add_argument("--pg-bin", metavar="DIR",
                        help="PostgreSQL server binaries (default: newest /usr/lib/postgresql/*/bin)")
    parser.add_argument("--client-process", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--generator", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process or args.generator:
        return args
    if min(args.clients, args.pushes, args.stored, args.concurrency, args.runs) < 1:
        parser.error("--clients, --pushes, --stored, --concurrency and --runs must be positive")
    if args.stored > args.clients * MSG_LIMIT:
        parser.error(f"--stored may be at most {MSG_LIMIT} per client (the drain limit)")
    return args


def main() -> int:
    args = parse_args()
    if args.client_process:
        return run_clients(args.client_process, args.clients, args.key)
    if args.generator:
        return run_generator(args.generator)
    from tests.support.postgres import PostgresMissing

    try:
        stores, skipped = choose_stores(args)
    except PostgresMissing as error:
        print(f"push_throughput: --store postgres, but PostgreSQL is not installed: {error}", file=sys.stderr)
        return EXIT_MISSING
    for name, reason in skipped.items():
        print(f"push_throughput: {name} skipped: {reason}", file=sys.stderr)

    # SIGTERM unwinds like Ctrl-C, so every started process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    began, load_before = time.monotonic(), os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp:
        try:
            results = run_all(args, stores, Path(tmp))
        except (Exception, KeyboardInterrupt) as error:
            print(f"push_throughput: failed: {type(error).__name__}: {error}", file=sys.stderr)
            return 1
    missed = report(args, results, skipped, time.monotonic() - began, (load_before, os.getloadavg()[0]))
    if args.chart:
        print(f"\nchart: {write_chart(args.chart, results, args)}")
    if missed and args.check:
        print(f"push_throughput: {len(missed)} target(s) missed", file=sys.stderr)
        return EXIT_MISSED
    return 0


if __name__ == "__main__":
    sys.exit(main())
