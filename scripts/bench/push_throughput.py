#!/usr/bin/env python3
"""Push throughput, latency, storage calls and CPU per notification, against a Flask floor.

Starts dynalite behind a counting proxy, a connection node (1 worker) and an
endpoint node (1 gevent worker) under gunicorn, and K push clients holding one
VAPID-bound (v2) subscription each. Then, in one run:

- direct: N VAPID-signed pushes to the connected clients; notifications/s,
  POST->receive latency p50/p99, DynamoDB calls per notification (counted at
  the proxy, by X-Amz-Target) and CPU per notification of each worker;
- durable: the same N pushes through a second endpoint node (same tables)
  with ``AUTOPUSH_DURABLE_DIRECT=true``: each message is stored before the
  connection node gets it and deleted when the client acks; the same figures,
  and the difference to direct. Each mode's pushes run in two halves, in the
  order direct, durable, durable, direct, so a drift in the machine's load
  does not favour either;
- floor: the same N requests to a bare Flask view (scripts/bench/flask_floor.py)
  under the same gevent worker; its CPU per request and the endpoint's ratio
  to it (target <= 5);
- stored: the clients go away, M pushes are stored, the clients come back and
  drain (acking every message); accepted and drained messages/s, storage calls
  and CPU per message.

    .venv/bin/python scripts/bench/push_throughput.py [--clients 50] [--pushes 2000]
        [--stored 500] [--concurrency 8]

Clients and the load generator run in separate processes. The direct,
durable and floor phases start with an unmeasured warm-up of one push per
client. The
generator signs one VAPID JWT per subscription up front (valid for an hour)
and reuses it. The counting proxy runs in this process; its CPU and
dynalite's are printed for context.
"""

from __future__ import annotations

import argparse
import base64
import collections
import http.client
import itertools
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

READS = frozenset({"GetItem", "Query", "BatchGetItem", "Scan"})
WRITES = frozenset({"PutItem", "UpdateItem", "DeleteItem", "BatchWriteItem"})
CLK_TCK = os.sysconf("SC_CLK_TCK")
SETTLE_SECONDS = 0.5
MSG_LIMIT = 150  # the connection node's default msg_limit per drain


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
# Parent side


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


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)


class Meter:
    """CPU of some workers and DynamoDB calls between ``start()`` and ``stop()``."""

    def __init__(self, pids: dict[str, int], proxy) -> None:
        self.pids = pids
        self.proxy = proxy

    def start(self) -> None:
        self._cpu = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        self._calls = self.proxy.snapshot() if self.proxy else collections.Counter()

    def stop(self) -> dict:
        cpu = {name: cpu_seconds(pid) - self._cpu[name] for name, pid in self.pids.items()}
        calls = self.proxy.snapshot() - self._calls if self.proxy else collections.Counter()
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


def per(calls: collections.Counter, count: int) -> str:
    reads = sum(n for target, n in calls.items() if target in READS)
    writes = sum(n for target, n in calls.items() if target in WRITES)
    detail = ", ".join(f"{target} {n / count:.2f}" for target, n in sorted(calls.items()))
    return (f"{sum(calls.values()) / count:.2f} (reads {reads / count:.2f}, writes {writes / count:.2f})"
            + (f" [{detail}]" if detail else ""))


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
        "cpu": dict(cpu), "calls": calls,
    }


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def run(args: argparse.Namespace, workdir: Path, started: list) -> dict:
    """The whole benchmark; ``started`` collects what must be stopped."""
    from tests.support.processes import GunicornNode, LocalDynamoDB, free_port
    from tests.support.stack import Stack
    from tests.support.webpush import AppServer

    database = LocalDynamoDB()
    started.append(database.stop)
    database.start()
    proxy = make_counting_proxy(database.port).start()
    started.append(proxy.stop)

    stack = Stack(proxy.url, workdir)
    started.append(stack.stop)
    stack.start()
    endpoint_pid = worker_pid(stack.endpoint.process.pid)
    connection_pid = worker_pid(stack.connection.process.pid)

    app_server = AppServer()
    clients = ClientProcess(stack.ws_url, args.clients, app_server.application_server_key)
    started.append(clients.stop)
    subscriptions = clients.read(timeout=60 + args.clients * 0.5)["subscriptions"]

    endpoint = urlsplit(stack.endpoint_url)
    origin = f"{endpoint.scheme}://{endpoint.netloc}"
    body = fake_aes128gcm_body()
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

    def job(count: int, port: int) -> dict:
        return push_job(targets, "127.0.0.1", port, count, args.concurrency, body)

    def timeout_for(count: int) -> float:
        return 60 + count / 20

    def meter(endpoint_worker: int) -> Meter:
        return Meter({"endpoint": endpoint_worker, "connection": connection_pid,
                      "dynalite": database.process.pid, "proxy": os.getpid()}, proxy)

    def warm_up(port: int) -> None:
        generate(job(args.clients, port), workdir, timeout_for(args.clients))
        clients.wait_for(args.clients, timeout_for(args.clients))
        time.sleep(SETTLE_SECONDS)

    def push_round(port: int, measured: Meter, count: int) -> dict:
        """``count`` pushes to the connected clients through the endpoint on ``port``."""
        measured.start()
        sent = generate(job(count, port), workdir, timeout_for(count))
        received = clients.wait_for(count, timeout_for(count))
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

    durable = stack.another_endpoint("endpoint-durable", AUTOPUSH_DURABLE_DIRECT="true")
    modes = {"direct": (endpoint.port, meter(endpoint_pid)),
             "durable": (durable.port, meter(worker_pid(durable.process.pid)))}
    for port, _ in modes.values():
        warm_up(port)
    # Each mode's N pushes in two halves, in the order direct, durable, durable,
    # direct: a drift in the machine's load weighs on both modes alike.
    half = args.pushes // 2
    rounds: dict[str, list[dict]] = {mode: [] for mode in modes}
    for mode, count in (("direct", half), ("durable", half), ("durable", args.pushes - half),
                        ("direct", args.pushes - half)):
        port, measured = modes[mode]
        rounds[mode].append(push_round(port, measured, count))
    results: dict = {mode: combine_rounds(parts) for mode, parts in rounds.items()}
    durable.stop()
    both = modes["direct"][1]

    # Floor: the same requests to a bare Flask view under the same gevent worker.
    floor_port = free_port()
    floor = GunicornNode("scripts.bench.flask_floor:app", {**os.environ, "PYTHONPATH": str(ROOT)},
                         port=floor_port)
    started.append(floor.stop)
    floor.start(workdir / "floor.log")
    floor_meter = Meter({"floor": worker_pid(floor.process.pid)}, None)
    generate(job(args.clients, floor_port), workdir, timeout_for(args.clients))
    time.sleep(SETTLE_SECONDS)
    floor_meter.start()
    floor_sent = generate(job(args.pushes, floor_port), workdir, timeout_for(args.pushes))
    results["floor"] = {
        "rate": args.pushes / (floor_sent["finished"] - floor_sent["started"]),
        **floor_meter.stop(),
    }
    floor.stop()

    # Stored: clients away, M pushes stored, clients back and draining.
    clients.command(30, cmd="disconnect")
    time.sleep(1.0)  # the connection worker notices the closed sockets
    both.start()
    stored_sent = generate(job(args.stored, endpoint.port), workdir, timeout_for(args.stored))
    stored = both.stop()
    both.start()
    reconnected = clients.command(60 + args.clients * 0.5, cmd="reconnect")
    drained = clients.wait_for(args.stored, timeout_for(args.stored))
    time.sleep(SETTLE_SECONDS)  # the last acks delete their messages
    drain = both.stop()
    missing = [version for _, _, version in stored_sent["sends"] if version not in drained]
    if missing:
        raise BenchError(f"{len(missing)} stored message ids were never drained, e.g. {missing[0]}")
    results["stored"] = {
        "rate": args.stored / (stored_sent["finished"] - stored_sent["started"]), **stored,
    }
    results["drain"] = {
        "rate": args.stored / (max(drained.values()) - reconnected["started"]),
        "reconnect_seconds": reconnected["connected"] - reconnected["started"],
        **drain,
    }
    return results


def report(args: argparse.Namespace, results: dict, elapsed: float) -> None:
    direct, floor, stored, drain = results["direct"], results["floor"], results["stored"], results["drain"]
    n, m = args.pushes, args.stored
    endpoint_cpu = direct["cpu"]["endpoint"] / n
    floor_cpu = floor["cpu"]["floor"] / n
    print()
    print(f"clients: {args.clients}, direct pushes: {n}, stored pushes: {m}, "
          f"concurrency: {args.concurrency}, run time {elapsed:.0f} s")
    print(f"direct: {direct['rate']:.0f} notifications/s (accepted {direct['accepted_rate']:.0f}/s), "
          f"latency p50 {ms(direct['p50'])} p99 {ms(direct['p99'])}")
    print(f"storage calls per direct notification: {per(direct['calls'], n)}")
    print(f"cpu per direct notification: endpoint {ms(endpoint_cpu)}, "
          f"connection {ms(direct['cpu']['connection'] / n)}")
    print(f"  (same window: dynalite {ms(direct['cpu']['dynalite'] / n)}, "
          f"counting proxy {ms(direct['cpu']['proxy'] / n)} cpu per notification)")
    durable = results["durable"]
    print(f"durable: {durable['rate']:.0f} notifications/s (accepted {durable['accepted_rate']:.0f}/s), "
          f"latency p50 {ms(durable['p50'])} p99 {ms(durable['p99'])}")
    print(f"storage calls per durable notification: {per(durable['calls'], n)}")
    print(f"cpu per durable notification: endpoint {ms(durable['cpu']['endpoint'] / n)}, "
          f"connection {ms(durable['cpu']['connection'] / n)} (vs direct: endpoint "
          f"{(durable['cpu']['endpoint'] / direct['cpu']['endpoint'] - 1) * 100:+.0f}%, connection "
          f"{(durable['cpu']['connection'] / direct['cpu']['connection'] - 1) * 100:+.0f}%)")
    print(f"  (same window: dynalite {ms(durable['cpu']['dynalite'] / n)}, "
          f"counting proxy {ms(durable['cpu']['proxy'] / n)} cpu per notification)")
    print(f"floor: {ms(floor_cpu)} cpu per request ({floor['rate']:.0f} requests/s); "
          f"ratio {endpoint_cpu / floor_cpu:.2f} (target <= 5)")
    print(f"stored: {stored['rate']:.0f} pushes/s accepted; storage calls per push: {per(stored['calls'], m)}")
    print(f"cpu per stored push: endpoint {ms(stored['cpu']['endpoint'] / m)}, "
          f"connection {ms(stored['cpu']['connection'] / m)}")
    print(f"drain: {drain['rate']:.0f} messages/s (reconnect of {args.clients} clients "
          f"{drain['reconnect_seconds']:.2f} s); storage calls per message: {per(drain['calls'], m)}")
    print(f"cpu per drained message: connection {ms(drain['cpu']['connection'] / m)}, "
          f"endpoint {ms(drain['cpu']['endpoint'] / m)}")


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=50, help="connected push clients (default 50)")
    parser.add_argument("--pushes", type=int, default=2000, help="direct pushes (default 2000)")
    parser.add_argument("--stored", type=int, default=500, help="pushes stored while offline (default 500)")
    parser.add_argument("--concurrency", type=int, default=8, help="generator connections (default 8)")
    parser.add_argument("--client-process", metavar="URL", help=argparse.SUPPRESS)
    parser.add_argument("--key", help=argparse.SUPPRESS)
    parser.add_argument("--generator", metavar="JOB", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client_process:
        return run_clients(args.client_process, args.clients, args.key)
    if args.generator:
        return run_generator(args.generator)

    if min(args.clients, args.pushes, args.stored, args.concurrency) < 1:
        parser.error("--clients, --pushes, --stored and --concurrency must be positive")
    if args.stored > args.clients * MSG_LIMIT:
        parser.error(f"--stored may be at most {MSG_LIMIT} per client (the drain limit)")

    # SIGTERM unwinds like Ctrl-C, so every started process is stopped.
    signal.signal(signal.SIGTERM, _interrupt)
    began = time.monotonic()
    started: list = []
    with tempfile.TemporaryDirectory(prefix="push-bench-") as tmp:
        workdir = Path(tmp)
        try:
            results = run(args, workdir, started)
        except (Exception, KeyboardInterrupt) as error:
            print(f"push_throughput: failed: {type(error).__name__}: {error}", file=sys.stderr)
            if not isinstance(error, KeyboardInterrupt):
                for log in sorted(workdir.glob("*.log")):
                    tail = "\n".join(log.read_text(errors="replace").splitlines()[-8:])
                    if tail.strip():
                        print(f"--- {log.name} (last lines) ---\n{tail}", file=sys.stderr)
            return 1
        finally:
            for stop in reversed(started):
                try:
                    stop()
                except Exception as error:  # noqa: BLE001 - keep stopping the rest
                    print(f"push_throughput: cleanup: {type(error).__name__}: {error}", file=sys.stderr)
    report(args, results, time.monotonic() - began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
