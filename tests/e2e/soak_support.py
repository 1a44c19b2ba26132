"""A chaos soak around a real cluster: does every 201 keep its promise?

A 201 from the endpoint promises that the message reaches the browser, or
stays stored for it until its TTL ends. The soak runs a cluster (two
connection masters × two workers, two endpoint masters, dynalite with its
data on disk), a few hundred browser threads with real P-256 keys that
decrypt every payload, an application server sending VAPID-signed pushes at
a steady rate, and a seeded chaos loop that reloads, restarts and kills
processes, takes the database away and cuts TCP connections. At the end
every browser reconnects and drains, and each accepted push is put in
exactly one bucket (see ``account``).

A push is identified by its payload, a number unique in the run, never by
its version: the service may hand the same payload out under two versions
(a duplicate it created), or the same version twice (a redelivery of an
unacknowledged message, which the protocol allows).

Variables (deliberately not ``AUTOPUSH_*``: the nodes refuse unknown ones):
``SOAK_SECONDS`` (default 40; ``make soak`` sets 600), ``SOAK_SEED`` (the
chaos, sender and browser choices; default a fresh one, always printed),
``SOAK_CLIENTS`` (default 120 up to two minutes, else 300).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import select
import signal
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
import websocket
from pywebpush import WebPushException, webpush

from autopush_flask.db import Storage
from tests.e2e.faults_support import close_websocket_quietly, children, listening_inodes, wait_until
from tests.support.processes import GunicornNode, LocalDynamoDB, free_port_range
from tests.support.stack import Stack
from tests.support.webpush import AppServer, Subscription

SECONDS_VARIABLE = "SOAK_SECONDS"
SEED_VARIABLE = "SOAK_SEED"
CLIENTS_VARIABLE = "SOAK_CLIENTS"
DEFAULT_SECONDS = 40.0
# Browsers: 120 keep the short run near one core of the 2-core CI machine (all
# nodes, dynalite and 120 reader threads); the long run takes a few hundred.
SHORT_RUN_CLIENTS = 120
LONG_RUN_CLIENTS = 300
SHORT_RUN_LIMIT = 120.0
PUSHES_PER_SECOND = 20.0
# Each browser gets about rate × seconds / clients messages (about 7 in the 40-s run,
# 40 in the 10-minute one): well under the 150 one drain may deliver before the
# node resets the UAID (``AUTOPUSH_MSG_LIMIT``), which would void the promises.

LONG_TTL = 86_400  # outlives any run: such a message can only be delivered, stored or replaced
SHORT_TTL = (5, 20)
TOPICS = ("weather", "score")
SENDER_TIMEOUT = 10.0
DOCUMENTED_503_ERRNOS = frozenset({201, 202})  # "slow down" and "retry later"

CONNECTION_WORKERS = 2
ROUTER_SLOTS = 6  # two workers, two more while a HUP reloads, and room for a replacement
SELECT_SECONDS = 0.1
SETTLE_QUIET = 3.0
SETTLE_TIMEOUT = 90.0
# A push started this long before a SIGKILL may still have been on its way to the
# killed worker (the endpoint's node request timeout is 3 s).
IN_FLIGHT_WINDOW = 10.0
PROCESS_TIMEOUT = 40.0


# ---- the plan ----------------------------------------------------------------------


@dataclass(frozen=True)
class SoakPlan:
    mode: str
    seconds: float
    clients: int
    seed: int
    rate: float = PUSHES_PER_SECOND

    @classmethod
    def from_environment(cls, mode: str) -> SoakPlan:
        seconds = soak_seconds()
        default_clients = SHORT_RUN_CLIENTS if seconds <= SHORT_RUN_LIMIT else LONG_RUN_CLIENTS
        clients = int(os.environ.get(CLIENTS_VARIABLE) or default_clients)
        seed_text = os.environ.get(SEED_VARIABLE, "").strip()
        seed = int(seed_text) if seed_text else random.SystemRandom().randrange(2**32)
        return cls(mode, seconds, clients, seed)

    def rng(self, purpose: str) -> random.Random:
        """One generator per purpose, so a replayed seed replays each part's choices."""
        return random.Random(f"{self.seed}:{purpose}")

    def header(self) -> str:
        return (f"soak({self.mode}): seed={self.seed} seconds={self.seconds:g} clients={self.clients} "
                f"rate={self.rate:g}/s  replay: {SEED_VARIABLE}={self.seed} {SECONDS_VARIABLE}={self.seconds:g} "
                f".venv/bin/python -m pytest 'tests/e2e/test_soak.py' -k {self.mode} -s")


def soak_seconds() -> float:
    return float(os.environ.get(SECONDS_VARIABLE) or DEFAULT_SECONDS)


# ---- ports ---------------------------------------------------------------------------


def quiet_ports(count: int) -> list[int]:
    """``count`` consecutive free ports no outgoing connection can take (restarts re-bind them)."""
    base = free_port_range(count)
    return list(range(base, base + count))


# ---- the cluster -----------------------------------------------------------------------


@dataclass
class ConnectionMaster:
    node: GunicornNode
    router_base: int
    log: Path

    @property
    def pid(self) -> int:
        return self.node.process.pid

    def workers(self) -> list[int]:
        return children(self.pid)

    def listening_routers(self) -> list[int]:
        return [p for p in range(self.router_base, self.router_base + ROUTER_SLOTS) if listening_inodes(p)]

    def wait_workers(self, gone: set[int] = frozenset()) -> None:
        """Two workers serving their routers, none of ``gone`` left (a reload's old ones)."""
        def ready() -> bool:
            pids = set(self.workers())
            return len(pids) == CONNECTION_WORKERS and not pids & gone and len(self.listening_routers()) == 2

        wait_until(ready, PROCESS_TIMEOUT, interval=0.2, what=f"workers of {self.log.name}")


class Cluster:
    """Two connection masters, two endpoint masters and dynalite, on quiet ports."""

    def __init__(self, log_dir: Path, settings: dict[str, str]) -> None:
        ports = quiet_ports(5 + 2 * ROUTER_SLOTS)
        self.log_dir = log_dir
        self.database = LocalDynamoDB(path=log_dir / "dynamodb")
        self.database.port = ports[0]  # a quiet port, so the restarts can always bind it again
        endpoint_ports, public_ports = ports[1:3], ports[3:5]
        self.audience = f"http://127.0.0.1:{endpoint_ports[0]}"
        self.stack = Stack(self.database.url, log_dir, AUTOPUSH_ENDPOINT_URL=self.audience, **settings)
        environ = self.stack.environ
        self.endpoints = [GunicornNode("wsgi:endpoint_app", environ, port=port) for port in endpoint_ports]
        self.masters = []
        for index, port in enumerate(public_ports):
            base = ports[5 + index * ROUTER_SLOTS]
            node = GunicornNode("wsgi:connection_app", {**environ, "AUTOPUSH_ROUTER_PORT": str(base)},
                                workers=CONNECTION_WORKERS, port=port)
            self.masters.append(ConnectionMaster(node, base, log_dir / f"connection-{'ab'[index]}.log"))

    @property
    def storage(self) -> Storage:
        return self.stack.storage

    @property
    def ws_urls(self) -> list[str]:
        return [f"ws://127.0.0.1:{m.node.port}/" for m in self.masters]

    @property
    def endpoint_urls(self) -> list[str]:
        return [node.url for node in self.endpoints]

    def endpoint_log(self, index: int) -> Path:
        return self.log_dir / f"endpoint-{index + 1}.log"

    def start(self) -> None:
        self.database.start()
        for master in self.masters:  # the first one creates the tables
            self.start_master(master)
        for index, node in enumerate(self.endpoints):
            node.start(self.endpoint_log(index))

    def stop(self) -> None:
        for node in [*self.endpoints, *(m.node for m in self.masters)]:
            try:
                node.stop()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass
        self.database.stop()

    # -- faults

    def reload(self, master: ConnectionMaster) -> None:
        """HUP: new workers start, the old ones store unacked messages and close 1012."""
        old = set(master.workers())
        master.node.signal(signal.SIGHUP)
        master.wait_workers(gone=old)

    def terminate(self, master: ConnectionMaster) -> None:
        """TERM: graceful, the workers store unacked notifications and close clients with 1012."""
        master.node.signal(signal.SIGTERM)
        master.node.process.wait(timeout=PROCESS_TIMEOUT)

    def start_master(self, master: ConnectionMaster) -> None:
        master.node.start(master.log, wait_ports=(master.router_base, master.router_base + 1))

    def restart_endpoint(self, index: int) -> None:
        node = self.endpoints[index]
        node.stop()  # TERM: requests in progress are answered, then the master exits
        node.start(self.endpoint_log(index))

    def ensure_running(self) -> None:
        """After the chaos: everything up again (a fault's restart may have failed)."""
        if self.database.process is None or self.database.process.poll() is not None:
            self.database.start()
        for master in self.masters:
            if master.node.process.poll() is not None:
                self.start_master(master)
            master.wait_workers()
        for index, node in enumerate(self.endpoints):
            if node.process is None or node.process.poll() is not None:
                node.start(self.endpoint_log(index))


def client_ports_on(worker_pid: int, public_port: int) -> set[int]:
    """Local ports of the browsers whose WebSocket the worker ``worker_pid`` holds.

    Its established sockets on the public port, matched through their inodes
    in ``/proc/net/tcp``: the remote end of each is a browser's local port.
    """
    owned = set()
    try:
        for fd in os.listdir(f"/proc/{worker_pid}/fd"):
            try:
                target = os.readlink(f"/proc/{worker_pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                owned.add(target[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            local, remote, state, inode = parts[1], parts[2], parts[3], parts[9]
            if state == "01" and inode in owned and int(local.rsplit(":", 1)[1], 16) == public_port:
                ports.add(int(remote.rsplit(":", 1)[1], 16))
    return ports


# ---- browsers --------------------------------------------------------------------------

ACK_PROMPT, ACK_BATCHED, ACK_NEVER = "prompt", "batched", "never"


@dataclass
class Link:
    """One WebSocket connection of a browser."""

    ws: websocket.WebSocket
    generation: int
    local_port: int
    opened_at: float


class Browser:
    """One subscription in a thread: reads, decrypts and acks, and reconnects with its UAID.

    The test's threads only raise flags (``cut``, ``leave``, ``finish``); the
    browser's own thread acts on them, so no socket is closed under a reader.
    """

    def __init__(self, index: int, urls: list[str], app_server_key: str, rng: random.Random,
                 ack_style: str) -> None:
        self.index = index
        self.urls = urls
        self.app_server_key = app_server_key
        self.rng = rng
        self.ack_style = ack_style
        self.batch_delay = rng.uniform(0.3, 1.5)
        self.reconnect_delay = rng.uniform(0.2, 1.0)
        self.channel_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        self.uaid: str | None = None
        self.subscription: Subscription | None = None
        self.lock = threading.Lock()
        self.link: Link | None = None
        self.generation = 0
        self.connects = 0
        self.version_receipts: Counter[str] = Counter()
        self.payload_versions: dict[int, list[str]] = {}  # distinct versions, in arrival order
        self.first_seen: dict[int, float] = {}
        self.version_seen_at: dict[str, float] = {}
        self.unacked: dict[str, int] = {}  # version -> generation it came on
        self.pending: list[dict] = []
        self.pending_since = 0.0
        self.last_message_at = time.monotonic()
        self.offline_until = 0.0
        self.finish_at: float | None = None
        self.hello_failures: Counter[str] = Counter()
        self.problems: list[str] = []
        self._cut = self._reconnect = False
        self._leave_for = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the test's side

    def subscribe(self) -> Browser:
        link = None
        for _ in range(20):
            link = self._open()
            if link is not None:
                break
            time.sleep(0.2)
        assert link is not None, f"browser {self.index} could not connect: {dict(self.hello_failures)}"
        link.ws.send(json.dumps({"messageType": "register", "channelID": self.channel_id,
                                 "key": self.app_server_key}))
        reply = json.loads(link.ws.recv())
        assert reply.get("status") == 200, reply
        self.subscription = Subscription(reply["pushEndpoint"])
        return self

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"browser-{self.index}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self.lock:
            link, self.link = self.link, None
        if link is not None:
            close_websocket_quietly(link.ws)

    def cut(self) -> None:
        """Drop TCP with a reset, no close frame (a phone losing its network)."""
        with self.lock:
            self._cut = True

    def leave(self, seconds: float) -> None:
        """Close normally and stay away (a browser quit and started later)."""
        with self.lock:
            self._leave_for = seconds

    def finish(self) -> None:
        """The end of the run: ack everything from now on and reconnect at once to drain."""
        with self.lock:
            self.ack_style = ACK_PROMPT
            self.offline_until = 0.0
            self._reconnect = True
            self.finish_at = time.monotonic()

    @property
    def online(self) -> bool:
        return self.link is not None

    def unacked_on(self, ports: set[int]) -> tuple[int, int] | None:
        """(link generation, notifications read and not acked on it) if the link uses one of ``ports``."""
        with self.lock:
            link = self.link
            if link is None or link.local_port not in ports:
                return None
            return link.generation, sum(1 for g in self.unacked.values() if g == link.generation)

    def settled(self, now: float, quiet: float) -> bool:
        """Reconnected since ``finish``, every ack sent, nothing new for ``quiet`` seconds."""
        with self.lock:
            link = self.link
            return (link is not None and self.finish_at is not None and link.opened_at > self.finish_at
                    and not self.pending and now - self.last_message_at >= quiet
                    and now - link.opened_at >= quiet)

    # -- the browser's thread

    def _run(self) -> None:
        while not self._stop.is_set():
            immediate = self._obey()
            link = self.link
            if link is None:
                if not immediate:
                    self._stop.wait(self.reconnect_delay)
                if not self._stop.is_set() and time.monotonic() >= self.offline_until:
                    self._open()
                continue
            self._flush_acks()
            try:
                readable = select.select([link.ws.sock], [], [], SELECT_SECONDS)[0]
            except (OSError, ValueError, TypeError):
                readable = [True]  # the socket is gone: the read below notices
            if readable:
                self._read(link)

    def _obey(self) -> bool:
        """Act on the flags the test raised; ``True`` to reconnect without the back-off."""
        with self.lock:
            cut, reconnect, leave_for = self._cut, self._reconnect, self._leave_for
            self._cut = self._reconnect = False
            self._leave_for = 0.0
            link = self.link
        if link is not None and (cut or reconnect or leave_for):
            (_reset if cut else close_websocket_quietly)(link.ws)
            self._forget(link)
        if leave_for:
            self.offline_until = time.monotonic() + leave_for
        return reconnect

    def _open(self) -> Link | None:
        url = self.rng.choice(self.urls)
        try:
            ws = websocket.create_connection(url, timeout=5, subprotocols=["push-notification"])
        except (OSError, websocket.WebSocketException):
            self.hello_failures["connect"] += 1
            return None
        hello: dict[str, Any] = {"messageType": "hello", "use_webpush": True, "broadcasts": {}}
        if self.uaid:
            hello["uaid"] = self.uaid
        try:
            ws.send(json.dumps(hello))
            reply = json.loads(ws.recv())
        except (OSError, ValueError, websocket.WebSocketException):
            self.hello_failures["hello unanswered"] += 1
            ws.shutdown()
            return None
        if reply.get("status") != 200:
            self.hello_failures[f"hello {reply.get('status')} {reply.get('reason', '')}".strip()] += 1
            ws.shutdown()  # the node closes it (1011) anyway
            return None
        if self.uaid is None:
            self.uaid = reply["uaid"]
        elif reply["uaid"] != self.uaid:
            self.problems.append(f"hello gave a new uaid {reply['uaid']} for {self.uaid}")
        self.generation += 1
        link = Link(ws, self.generation, ws.sock.getsockname()[1], time.monotonic())
        with self.lock:
            self.link = link
            self.connects += 1
        return link

    def _read(self, link: Link) -> None:
        try:
            opcode, data = link.ws.recv_data(control_frame=True)
        except (OSError, AttributeError, websocket.WebSocketException):
            self._forget(link)
            link.ws.shutdown()
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:  # websocket-client has answered it already
            self._forget(link)
            link.ws.shutdown()
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(data)
            if message.get("messageType") == "notification":
                self._notified(link, message)

    def _notified(self, link: Link, message: dict) -> None:
        version, now = message["version"], time.monotonic()
        number = self._payload_number(message)
        with self.lock:
            self.version_receipts[version] += 1
            self.version_seen_at.setdefault(version, now)
            if number is not None:
                versions = self.payload_versions.setdefault(number, [])
                if version not in versions:
                    versions.append(version)
                self.first_seen.setdefault(number, now)
            self.unacked[version] = link.generation
            self.last_message_at = now
            if not self.pending:
                self.pending_since = now
            self.pending.append({"channelID": message["channelID"], "version": version, "code": 100})

    def _payload_number(self, message: dict) -> int | None:
        try:
            return json.loads(self.subscription.decrypt(message))["n"]
        except Exception as error:  # noqa: BLE001 - any failure to decrypt is a finding
            self.problems.append(f"undecryptable notification {message.get('version', '')[:12]}: {error!r}")
            return None

    def _flush_acks(self) -> None:
        with self.lock:
            style, link = self.ack_style, self.link
            due = style == ACK_PROMPT or (
                style == ACK_BATCHED and time.monotonic() - self.pending_since >= self.batch_delay)
            if not self.pending or not due or link is None:
                return
            updates, self.pending = self.pending, []
        try:
            link.ws.send(json.dumps({"messageType": "ack", "updates": updates}))
        except (OSError, AttributeError, websocket.WebSocketException):
            return  # the reader notices; the node redelivers what it did not see acked
        with self.lock:
            for update in updates:
                self.unacked.pop(update["version"], None)

    def _forget(self, link: Link) -> None:
        """The link is gone: what it left unacked can only come back on a new one."""
        with self.lock:
            if self.link is link:
                self.link = None
                self.pending = []
                self.unacked = {}


def _reset(ws: websocket.WebSocket) -> None:
    """Close with SO_LINGER 0: the kernel sends RST, and drops what we had not read yet."""
    try:
        ws.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        ws.sock.close()
    except (OSError, AttributeError):
        pass


def make_browsers(plan: SoakPlan, cluster: Cluster, app_server: AppServer) -> list[Browser]:
    """Subscribed browsers: 70 % ack at once, 15 % in batches, 15 % never (until the end)."""
    rng = plan.rng("browsers")
    styles = rng.choices((ACK_PROMPT, ACK_BATCHED, ACK_NEVER), weights=(70, 15, 15), k=plan.clients)
    browsers = [Browser(i, cluster.ws_urls, app_server.application_server_key,
                        random.Random(rng.getrandbits(64)), style) for i, style in enumerate(styles)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(Browser.subscribe, browsers))
    return browsers


# ---- the application server ------------------------------------------------------------


@dataclass
class Push:
    number: int
    browser: int
    ttl: int
    topic: str | None
    started: float  # monotonic
    finished: float  # monotonic
    accepted_at: float  # wall clock, for TTL expiry
    version: str
    link: int | None  # the browser's connection (generation) when it was sent; None: away


class Sender:
    """POSTs VAPID-signed, aes128gcm pushes at a steady rate to either endpoint master.

    Two lanes (threads) send at once, as several application servers do, so
    two pushes to one browser can be stored concurrently. Only a 201 makes a
    push *accepted*. Every attempt carries a new number, so a POST whose
    answer was lost (an endpoint restarting) can never make an accepted
    number arrive twice; such a number arriving is counted apart.
    """

    LANES = 2

    def __init__(self, browsers: list[Browser], cluster: Cluster, app_server: AppServer, plan: SoakPlan) -> None:
        self.browsers = browsers
        self.endpoint_urls = cluster.endpoint_urls
        self.audience = cluster.audience
        self.app_server = app_server
        self.rate = plan.rate
        self.lock = threading.Lock()
        self.accepted: list[Push] = []
        self.unanswered: set[int] = set()  # numbers sent without a 201
        self.sent = self.sent_offline = self.connection_errors = 0
        self.statuses: Counter[str] = Counter()  # every non-201 answer, e.g. "503 errno=202"
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._lane, args=(lane, plan.rng(f"sender-{lane}")),
                                          name=f"sender-{lane}", daemon=True) for lane in range(self.LANES)]

    def start(self) -> Sender:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=SENDER_TIMEOUT + 5)

    @property
    def five_xx(self) -> int:
        return sum(n for status, n in self.statuses.items() if status.startswith("5"))

    def _lane(self, lane: int, rng: random.Random) -> None:
        """Numbers lane, lane + LANES, …: unique without a shared counter."""
        started = time.monotonic()
        for step in itertools.count():
            wait = started + step * self.LANES / self.rate - time.monotonic()
            if self._stop.wait(max(0.0, wait)):
                break
            self._send(lane + step * self.LANES, rng)

    def _send(self, number: int, rng: random.Random) -> None:
        browser = self._target(rng)
        ttl, topic = self._kind(rng)
        link = browser.link
        info = browser.subscription.info()
        info["endpoint"] = rng.choice(self.endpoint_urls) + urlsplit(info["endpoint"]).path
        headers = {"Connection": "close"}  # an idle keep-alive would hold a stopping endpoint
        if topic:
            headers["Topic"] = topic
        payload = json.dumps({"n": number, "pad": "x" * rng.randrange(64)})
        started = time.monotonic()
        try:
            response = webpush(info, data=payload, vapid_private_key=self.app_server.vapid,
                               vapid_claims={"sub": "mailto:soak@example.com", "aud": self.audience},
                               ttl=ttl, headers=headers, timeout=SENDER_TIMEOUT)
        except WebPushException as error:
            response = error.response
        except requests.RequestException:
            response = None
        with self.lock:
            self.sent += 1
            self.sent_offline += link is None
            if response is not None and response.status_code == 201:
                version = response.headers["Location"].rsplit("/m/", 1)[1]
                self.accepted.append(Push(number, browser.index, ttl, topic, started, time.monotonic(),
                                          time.time(), version, link.generation if link else None))
                return
            self.unanswered.add(number)
            self._refused(response)

    def _refused(self, response: requests.Response | None) -> None:
        if response is None:
            self.connection_errors += 1
            return
        errno = None
        try:
            errno = response.json().get("errno")
        except ValueError:
            pass
        label = f"{response.status_code} errno={errno}"
        self.statuses[label] += 1
        documented = (response.status_code == 503 and errno in DOCUMENTED_503_ERRNOS
                      and response.headers.get("Retry-After"))
        if not documented:
            self.failures.append(f"{label}: {response.text[:200]}")

    def _target(self, rng: random.Random) -> Browser:
        """Mostly anyone; one push in five to a browser that is away, when one is."""
        if rng.random() < 0.2:
            away = [b for b in self.browsers if not b.online]
            if away:
                return rng.choice(away)
        return rng.choice(self.browsers)

    @staticmethod
    def _kind(rng: random.Random) -> tuple[int, str | None]:
        """(TTL, Topic): 10 % TTL 0, 15 % with a Topic, 5 % a short TTL, the rest long-lived."""
        draw = rng.random()
        if draw < 0.10:
            return 0, None
        if draw < 0.25:
            return LONG_TTL, rng.choice(TOPICS)
        if draw < 0.30:
            return rng.randint(*SHORT_TTL), None
        return LONG_TTL, None


# ---- chaos ---------------------------------------------------------------------------------


@dataclass
class Kill:
    """One SIGKILL of a connection worker, as the browsers saw it at that moment."""

    at: float
    pid: int
    victims: dict[int, int]  # browser index -> generation of its link to the worker
    unacked: int  # notifications they had read from it and not acked


class Chaos:
    """Faults at seeded random moments, each kind once per shuffled round, until the deadline.

    At least one full round runs even past the deadline, so a short run
    still sees every kind of fault. A database outage runs in the
    background and the next fault follows quickly, so faults overlap: a
    TERM's shutdown must store unacked notifications into a dead database,
    browsers cut meanwhile cannot have theirs stored. Faults that boot a
    process (HUP, SIGKILL, endpoint restart, the start after a TERM) wait
    for the database first: a worker that cannot reach it at boot exits
    with gunicorn's boot-error status, which stops its whole master.
    """

    KINDS = ("hup", "term", "kill", "kill", "pause", "endpoint", "database", "cut", "leave")

    def __init__(self, cluster: Cluster, browsers: list[Browser], plan: SoakPlan) -> None:
        self.cluster = cluster
        self.browsers = browsers
        self.rng = plan.rng("chaos")
        self.seconds = plan.seconds
        self.kills: list[Kill] = []
        self.done: Counter[str] = Counter()
        self.log: list[str] = []
        self.errors: list[str] = []
        self.started = 0.0
        self._outage: threading.Thread | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="chaos", daemon=True)

    def start(self) -> Chaos:
        self.started = time.monotonic()
        self._thread.start()
        return self

    def join(self) -> None:
        self._thread.join()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        try:
            first_round = True
            while not self._over(first_round):
                deck = list(self.KINDS)
                self.rng.shuffle(deck)
                for kind in deck:
                    gap = self.rng.uniform(0.2, 1.0) if self._outage else self.rng.uniform(1.0, 3.5)
                    if self._stop.wait(gap) or self._over(first_round):
                        return
                    self._inject(kind)
                first_round = False
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.errors.append(repr(error))
        finally:
            self._database_back()

    def _over(self, first_round: bool) -> bool:
        late = time.monotonic() - self.started >= self.seconds
        return self._stop.is_set() or bool(self.errors) or (late and not first_round)

    def _inject(self, kind: str) -> None:
        began = time.monotonic() - self.started
        try:
            detail = getattr(self, f"_{kind}")()
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.errors.append(f"{kind}: {error!r}")
            return
        self.done[kind] += 1
        self.log.append(f"{began:5.1f}-{time.monotonic() - self.started:5.1f}s {kind} {detail}")

    def _master(self) -> ConnectionMaster:
        return self.rng.choice(self.cluster.masters)

    def _busiest_worker(self, master: ConnectionMaster) -> tuple[int, set[int]]:
        """The master's worker holding the most browsers, and their local ports.

        gunicorn's workers race for each accept, so one of them often holds
        nearly all of a master's browsers; a fault on the other one would
        touch almost nobody.
        """
        held = {pid: client_ports_on(pid, master.node.port) for pid in master.workers()}
        pid = max(held, key=lambda p: (len(held[p]), self.rng.random()))
        return pid, held[pid]

    def _hup(self) -> str:
        master = self._master()
        self._database_back()
        self.cluster.reload(master)
        return master.log.stem

    def _term(self) -> str:
        master = self._master()
        during_outage = self._outage is not None
        self.cluster.terminate(master)
        self._database_back()
        self.cluster.start_master(master)
        return master.log.stem + (" (during the outage)" if during_outage else "")

    def _kill(self) -> str:
        master = self._master()
        self._database_back()
        pid, ports = self._busiest_worker(master)
        links = {b.index: b.unacked_on(ports) for b in self.browsers}
        at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        victims = {index: link[0] for index, link in links.items() if link is not None}
        unacked = sum(link[1] for link in links.values() if link is not None)
        self.kills.append(Kill(at, pid, victims, unacked))
        master.wait_workers(gone={pid})
        return f"{master.log.stem} pid={pid} browsers={len(victims)} unacked={unacked}"

    def _pause(self) -> str:
        """SIGSTOP a worker for longer than the endpoint waits for ``PUT /push`` (a long GC
        pause, a frozen VM): the endpoint gives up on requests the worker then handles."""
        master = self._master()
        self._database_back()  # during an outage no push reaches a worker anyway
        pid, ports = self._busiest_worker(master)
        seconds = self.rng.uniform(3.5, 5.0)
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(seconds)
        finally:
            os.kill(pid, signal.SIGCONT)
        return f"{master.log.stem} pid={pid} browsers={len(ports)} {seconds:.1f}s"

    def _endpoint(self) -> str:
        index = self.rng.randrange(len(self.cluster.endpoints))
        self._database_back()
        self.cluster.restart_endpoint(index)
        return f"endpoint-{index + 1}"

    def _database(self) -> str:
        seconds = self.rng.uniform(2.0, 4.0)
        self.cluster.database.stop()
        self._outage = threading.Thread(target=self._restore_database, args=(seconds,), daemon=True)
        self._outage.start()
        return f"{seconds:.1f}s"

    def _restore_database(self, seconds: float) -> None:
        time.sleep(seconds)
        try:
            self.cluster.database.start()
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.errors.append(f"database start: {error!r}")

    def _database_back(self) -> None:
        if self._outage is not None:
            self._outage.join()
            self._outage = None

    def _cut(self) -> str:
        online = [b for b in self.browsers if b.online]
        chosen = self.rng.sample(online, max(1, len(online) // 10)) if online else []
        for browser in chosen:
            browser.cut()
        return f"{len(chosen)} browsers" + (" (during the outage)" if self._outage else "")

    def _leave(self) -> str:
        chosen = self.rng.sample(self.browsers, max(1, len(self.browsers) // 20))
        for browser in chosen:
            browser.leave(self.rng.uniform(2.0, 8.0))
        return f"{len(chosen)} browsers"


# ---- accounting ----------------------------------------------------------------------------


@dataclass
class StoredPayloads:
    """What the message table holds for one browser, by payload number."""

    deliverable: set[int] = field(default_factory=set)  # topic messages, or after the bookmark
    below_bookmark: set[int] = field(default_factory=set)  # a drain will never read these
    unreadable: int = 0


def stored_payloads(storage: Storage, browser: Browser) -> StoredPayloads:
    """Read the browser's messages straight from the table and decrypt them with its keys."""
    store = storage.messages()
    bookmark, topic_messages = store.fetch_topic_messages(browser.uaid)
    found = StoredPayloads()
    for message in topic_messages:
        _file(found, found.deliverable, browser, message)
    after = None
    for _ in range(100):
        high, messages = store.fetch_timestamp_messages(browser.uaid, after, limit=500)
        if not messages:
            break
        for message in messages:
            above = bookmark is None or message.sortkey_timestamp > bookmark
            _file(found, found.deliverable if above else found.below_bookmark, browser, message)
        after = high
    return found


def _file(found: StoredPayloads, bucket: set[int], browser: Browser, message: Any) -> None:
    try:
        plaintext = browser.subscription.decrypt({"data": message.data, "headers": message.headers})
        bucket.add(json.loads(plaintext)["n"])
    except Exception:  # noqa: BLE001 - counted
        found.unreadable += 1


@dataclass
class Account:
    accepted: int = 0
    delivered: int = 0
    stored: int = 0
    expired: int = 0
    replaced: int = 0
    lost: int = 0
    duplicated: int = 0
    redelivered: int = 0
    five_xx: int = 0
    sigkill_allowance: int = 0
    lost_pushes: list[tuple[Push, str]] = field(default_factory=list)  # (push, why)
    duplicates: list[str] = field(default_factory=list)  # one description per duplicated payload
    in_flight_at_kills: int = 0
    unacked_at_kills: int = 0
    unaccepted_arrived: int = 0
    stored_unreadable: int = 0  # stored items its browser's keys cannot decrypt

    def line(self, mode: str) -> str:
        return (f"soak({mode}): accepted={self.accepted} delivered={self.delivered} stored={self.stored} "
                f"expired={self.expired} replaced={self.replaced} lost={self.lost} "
                f"duplicated={self.duplicated} redelivered={self.redelivered} 5xx={self.five_xx} "
                f"sigkill_allowance={self.sigkill_allowance}")

    @property
    def unexplained(self) -> list[tuple[Push, str]]:
        """Lost pushes that no SIGKILL can excuse."""
        return [(push, why) for push, why in self.lost_pushes if why != "in flight at a SIGKILL"]


def account(sender: Sender, browsers: list[Browser], kills: list[Kill], storage: Storage,
            origin: float) -> Account:
    """Put each accepted push in one bucket, in this order of precedence:

    delivered (its browser decrypted it), expired (TTL 0 and not delivered, or
    its TTL has passed), stored (still in the table where a drain reads it),
    replaced (an accepted push of the same Topic to the same browser, not
    finished before this one started),
    else lost, with the reason: below the bookmark, in flight to a worker
    killed with SIGKILL, or unexplained.
    """
    result = Account(accepted=len(sender.accepted), five_xx=sender.five_xx)
    accepted = {push.number: push for push in sender.accepted}
    stored = {b.index: stored_payloads(storage, b) for b in browsers}
    result.stored_unreadable = sum(held.unreadable for held in stored.values())
    in_flight, result.unacked_at_kills = in_flight_at_kills(sender.accepted, browsers, kills)
    result.in_flight_at_kills = len(in_flight)
    result.sigkill_allowance = result.unacked_at_kills + len(in_flight)
    same_topic: dict[tuple[int, str], list[Push]] = {}
    for push in sender.accepted:
        if push.topic:
            same_topic.setdefault((push.browser, push.topic), []).append(push)
    now = time.time()
    for push in sender.accepted:
        browser, held = browsers[push.browser], stored[push.browser]
        if push.number in browser.payload_versions:
            result.delivered += 1
        elif push.ttl == 0 or push.accepted_at + push.ttl <= now:
            result.expired += 1
        elif push.number in held.deliverable:
            result.stored += 1
        elif push.topic and _superseded(push, same_topic[(push.browser, push.topic)]):
            result.replaced += 1
        else:
            result.lost += 1
            why = ("below the bookmark" if push.number in held.below_bookmark
                   else "in flight at a SIGKILL" if push.number in in_flight else "unexplained")
            result.lost_pushes.append((push, why))
    for browser in browsers:
        result.redelivered += sum(count - 1 for count in browser.version_receipts.values())
        for number, versions in browser.payload_versions.items():
            if len(versions) > 1:
                result.duplicates.append(_describe_duplicate(number, versions, browser, accepted, origin))
            if number in sender.unanswered:
                result.unaccepted_arrived += 1
    result.duplicated = len(result.duplicates)
    return result


def _describe_duplicate(number: int, versions: list[str], browser: Browser, accepted: dict[int, Push],
                        origin: float) -> str:
    """When it was sent and each version arrived (seconds into the chaos), and which version the
    201 named: the endpoint's ``Location`` is the stored copy's id when it stored the message
    after trying the connection node."""
    push = accepted.get(number)
    arrivals = ", ".join(f"{browser.version_seen_at[v] - origin:.1f}s" for v in versions)
    if push is None:
        return f"#{number} browser={browser.index}: not accepted; arrivals at {arrivals}"
    named = (f"201 named arrival #{versions.index(push.version) + 1}" if push.version in versions
             else "201 named none of them")
    return (f"#{number} browser={browser.index}: sent {push.started - origin:.1f}s-{push.finished - origin:.1f}s, "
            f"{len(versions)} versions arrived at {arrivals}; {named}")


def _superseded(push: Push, same_topic: list[Push]) -> bool:
    """Another push of the Topic that was not over before this one began could have replaced it
    (two lanes may store them in either order)."""
    return any(other is not push and other.finished > push.started for other in same_topic)


def in_flight_at_kills(accepted: list[Push], browsers: list[Browser], kills: list[Kill]) -> tuple[set[int], int]:
    """Pushes a SIGKILL may take with it, and the kills' unacked count.

    In flight: sent shortly before the kill while the browser was on the
    very connection the killed worker held, and not yet read by that browser
    when the kill came. (Read but unacked ones were counted at the kill; they
    reached the browser, so they are never lost, but they are part of the
    allowance as the design states it.)
    """
    numbers: set[int] = set()
    for kill in kills:
        for push in accepted:
            on_victim = push.link is not None and kill.victims.get(push.browser) == push.link
            if on_victim and kill.at - IN_FLIGHT_WINDOW <= push.started < kill.at:
                seen = browsers[push.browser].first_seen.get(push.number)
                if seen is None or seen > kill.at:
                    numbers.add(push.number)
    return numbers, sum(k.unacked for k in kills)


# ---- what the logs say ------------------------------------------------------------------


def log_findings(log_dir: Path, limit: int = 12) -> list[str]:
    """Warnings and errors the nodes logged, by message and count (for the report)."""
    counts: Counter[str] = Counter()
    for path in sorted(log_dir.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                if "Traceback" in line or "ERROR" in line:
                    counts[f"{path.stem}: {line.strip()[:90]}"] += 1
                continue
            if not isinstance(entry, dict) or entry.get("Severity", 7) > 4:
                continue
            fields_ = entry.get("Fields") or {}
            message = fields_.get("msg") or fields_.get("message") or "?"
            error = str(fields_.get("error", ""))[:60]
            counts[f"{path.stem}: {message}" + (f" ({error})" if error else "")] += 1
    return [f"{count}× {what}" for what, count in counts.most_common(limit)]


def notifications_dropped_by_nodes(log_dir: Path) -> int:
    """Unacked direct notifications the connection nodes logged as lost (their store failed).

    Their browsers had usually read them already, so the ledger counts them
    as delivered; this figure shows how often the node side gave up.
    """
    dropped = 0
    for path in log_dir.glob("connection-*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if '"direct notifications lost"' in line:
                dropped += int(json.loads(line).get("Fields", {}).get("count", 0))
    return dropped


# ---- the run ------------------------------------------------------------------------------


@dataclass
class SoakRun:
    plan: SoakPlan
    account: Account
    sender: Sender
    chaos: Chaos
    browsers: list[Browser]
    settled: bool
    findings: list[str]
    wall_seconds: float
    log_dir: Path

    def details(self) -> str:
        hello = Counter()
        for browser in self.browsers:
            hello.update(browser.hello_failures)
        lost = Counter(why for _, why in self.account.lost_pushes)
        return "\n".join([
            f"  faults: {dict(self.chaos.done)}; kills: {len(self.chaos.kills)} "
            f"(victim browsers {sum(len(k.victims) for k in self.chaos.kills)}, "
            f"unacked at kill {self.account.unacked_at_kills}, in flight {self.account.in_flight_at_kills})",
            f"  sender: sent={self.sender.sent} to_offline={self.sender.sent_offline} "
            f"connection_errors={self.sender.connection_errors} refusals={dict(self.sender.statuses)} "
            f"unaccepted_but_arrived={self.account.unaccepted_arrived} "
            f"stored_unreadable={self.account.stored_unreadable}",
            f"  browsers: {len(self.browsers)} connects={sum(b.connects for b in self.browsers)} "
            f"hello_failures={dict(hello)} settled={self.settled}",
            f"  lost by reason: {dict(lost)}",
            *(f"  duplicate {line}" for line in self.account.duplicates[:10]),
            f"  nodes logged {notifications_dropped_by_nodes(self.log_dir)} unacked direct notifications lost; "
            f"wall clock: {self.wall_seconds:.0f} s",
            *(f"  lost #{p.number} browser={p.browser} ttl={p.ttl} topic={p.topic} online_at_send={p.link is not None}"
              f" version={p.version[:16]}… at={p.started - self.chaos.started:.1f}s: {why}"
              for p, why in self.account.lost_pushes[:15]),
            *(f"  chaos {entry}" for entry in self.chaos.log),
            *(f"  log {finding}" for finding in self.findings),
        ])


def run_soak(plan: SoakPlan, log_dir: Path, settings: dict[str, str]) -> SoakRun:
    began = time.monotonic()
    cluster = Cluster(log_dir, settings)
    browsers: list[Browser] = []
    try:
        cluster.start()
        app_server = AppServer()
        browsers = make_browsers(plan, cluster, app_server)
        for browser in browsers:
            browser.start()
        sender = Sender(browsers, cluster, app_server, plan).start()
        chaos = Chaos(cluster, browsers, plan).start()
        chaos.join()
        sender.stop()
        cluster.ensure_running()
        for browser in browsers:
            browser.finish()
        settled = _settle(browsers)
        for browser in browsers:
            browser.stop()
        result = account(sender, browsers, chaos.kills, cluster.storage, chaos.started)
        return SoakRun(plan, result, sender, chaos, browsers, settled, log_findings(log_dir),
                       time.monotonic() - began, log_dir)
    finally:
        for browser in browsers:
            browser.stop()
        cluster.stop()


def _settle(browsers: list[Browser]) -> bool:
    """Every browser online, its acks sent and nothing new for a few seconds."""
    try:
        wait_until(lambda: all(b.settled(time.monotonic(), SETTLE_QUIET) for b in browsers),
                   SETTLE_TIMEOUT, interval=0.2, what="browsers drained")
    except TimeoutError:
        return False
    return True
