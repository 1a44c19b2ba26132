"""Streaming push clients, a pusher and a ledger for the node and fault scenarios.

Every client runs in its own thread the way a browser does: it reads
notifications, acknowledges them (at once or in delayed batches), and when
its connection ends it reconnects with its UAID until it is told to stop.
The pusher POSTs to the clients' endpoints from another thread and counts a
message as *accepted* only on 201; connection errors and 503s are retried
(as a new POST) and counted separately. The ledger then compares what was
accepted with what the clients received, deduplicated by ``version``.
"""

from __future__ import annotations

import base64
import gc
import json
import os
import select
import socket
import struct
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

from autopush_flask.db import User
from tests.support.processes import free_port_range, wait_for_port
from tests.support.stack import Stack

PUSH_TTL = "600"
RECONNECT_DELAY = 0.2
SELECT_SECONDS = 0.1


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


# ---- processes ---------------------------------------------------------------


def with_reload_room(stack: Stack) -> Stack:
    """Re-point the router range so a HUP reload's new workers (slots N..2N-1) find free ports."""
    workers = stack.connection.workers
    stack.router_port = free_port_range(2 * workers)
    stack.environ["AUTOPUSH_ROUTER_PORT"] = str(stack.router_port)  # shared with stack.connection
    return stack


def children(pid: int) -> list[int]:
    """The direct child processes of ``pid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # "pid (comm) state ppid ..." — comm may hold spaces or parentheses.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            found.append(int(entry))
    return sorted(found)


def listening_inodes(port: int) -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields_ = line.split()
            local, state, inode = fields_[1], fields_[3], fields_[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(inode)
    return inodes


def pid_listening_on(port: int, candidates: list[int]) -> int:
    """Which of ``candidates`` holds the listening socket of ``port`` (a worker's router port)."""
    inodes = {f"socket:[{inode}]" for inode in listening_inodes(port)}
    for pid in candidates:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}") in inodes:
                    return pid
            except OSError:
                continue
    raise LookupError(f"no process among {candidates} listens on {port}")


def port_of(node_id: str) -> int:
    return int(node_id.rsplit(":", 1)[1])


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"{what} not reached within {timeout} s")


def wait_port_closed(port: int, timeout: float) -> None:
    def closed() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return False
        except OSError:
            return True

    wait_until(closed, timeout, what=f"port {port} closed")


def wait_ports(ports: list[int], timeout: float = 30) -> None:
    for port in ports:
        wait_for_port(port, timeout=timeout)


# ---- a browser-like client ---------------------------------------------------


@dataclass
class Connection:
    ws: websocket.WebSocket
    generation: int
    connected_at: float


@dataclass
class StreamClient:
    """One subscription whose browser reads, acks and reconnects in a thread."""

    url: str
    ack_delay: float = 0.0
    reconnect_delay: float = RECONNECT_DELAY
    uaid: str | None = None
    channel_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    endpoint: str | None = None

    def __post_init__(self) -> None:
        self.lock = threading.RLock()
        self.received: Counter[str] = Counter()
        self.data: dict[str, str | None] = {}
        self.by_generation: dict[str, list[int]] = {}
        self.acked_at: dict[str, float] = {}
        self.pending_acks: list[tuple[Connection, dict]] = []
        self.close_codes: list[int | None] = []  # closes of the active connection
        self.stale_close_codes: list[int | None] = []  # closes of a connection already replaced
        self.hello_failures: list[str] = []
        self.problems: list[str] = []
        self.last_message_at = self.pending_since = time.monotonic()
        self.connections: list[Connection] = []
        self.generation = 0
        self.reconnects = 0
        self.paused = False
        self._stop = threading.Event()
        self._move_to: str | None = None
        self._moved = threading.Event()
        self._thread: threading.Thread | None = None

    # -- setup (caller's thread)

    def subscribe(self) -> StreamClient:
        conn = self._connect(self.url)
        assert conn is not None, f"could not connect to {self.url}: {self.hello_failures}"
        conn.ws.send(json.dumps({"messageType": "register", "channelID": self.channel_id}))
        reply = json.loads(conn.ws.recv())
        assert reply.get("status") == 200, reply
        self.endpoint = reply["pushEndpoint"]
        return self

    def start(self) -> StreamClient:
        self._thread = threading.Thread(target=self._run, name=f"client-{self.uaid}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        with self.lock:
            for conn in self.connections:
                close_websocket_quietly(conn.ws)
            self.connections = []

    # -- commands for the test's thread

    def move(self, url: str, timeout: float = 10) -> None:
        """Open a new connection to ``url`` while the old one stays open (like a browser on a new network)."""
        self._moved.clear()
        self._move_to = url
        assert self._moved.wait(timeout), f"move to {url} did not complete: {self.hello_failures[-3:]}"

    def go_offline(self, abrupt: bool = False) -> None:
        """Drop every connection and stay away until ``come_back``."""
        with self.lock:
            self.paused = True
            for conn in self.connections:
                if abrupt:
                    _abort(conn.ws)
                else:
                    close_websocket_quietly(conn.ws)
            self.connections = []
            self.pending_acks = []

    def come_back(self, url: str | None = None) -> None:
        with self.lock:
            if url:
                self.url = url
            self.paused = False

    @property
    def online(self) -> bool:
        with self.lock:
            return bool(self.connections) and not self.paused

    def unique(self) -> set[str]:
        with self.lock:
            return set(self.received)

    # -- the thread

    def _connect(self, url: str) -> Connection | None:
        try:
            ws = websocket.create_connection(url, timeout=5, subprotocols=["push-notification"])
        except (OSError, websocket.WebSocketException) as error:
            self.hello_failures.append(f"connect: {error!r}")
            return None
        hello: dict[str, Any] = {"messageType": "hello", "use_webpush": True, "broadcasts": {}}
        if self.uaid:
            hello["uaid"] = self.uaid
        try:
            ws.send(json.dumps(hello))
            reply = json.loads(ws.recv())
        except (OSError, ValueError, websocket.WebSocketException) as error:
            self.hello_failures.append(f"hello: {error!r}")
            close_websocket_quietly(ws)
            return None
        if reply.get("status") != 200:
            self.hello_failures.append(f"hello reply: {reply}")
            close_websocket_quietly(ws)
            return None
        if self.uaid is None:
            self.uaid = reply["uaid"]
        elif reply["uaid"] != self.uaid:
            self.problems.append(f"hello gave a new uaid {reply['uaid']} for {self.uaid}")
        self.generation += 1
        conn = Connection(ws, self.generation, time.monotonic())
        with self.lock:
            self.connections.append(conn)
        return conn

    def _run(self) -> None:
        while not self._stop.is_set():
            if self._move_to is not None:
                url, self._move_to = self._move_to, None
                with self.lock:
                    self.url = url
                if self._connect(url) is not None:
                    self._moved.set()
                else:
                    self._move_to = url
                    time.sleep(RECONNECT_DELAY)
                continue
            with self.lock:
                paused = self.paused
                conns = list(self.connections)
            if paused:
                time.sleep(SELECT_SECONDS)
                continue
            if not conns:
                self._stop.wait(self.reconnect_delay)  # a browser backs off before reconnecting
                if not self._stop.is_set():
                    self.reconnects += 1
                    self._connect(self.url)
                continue
            self._flush_acks(force=False)
            try:
                readable, _, _ = select.select([c.ws.sock for c in conns if c.ws.sock], [], [], SELECT_SECONDS)
            except (OSError, ValueError):
                readable = []
            for conn in conns:
                if conn.ws.sock is not None and conn.ws.sock in readable:
                    self._read_one(conn)

    def _read_one(self, conn: Connection) -> None:
        try:
            opcode, data = conn.ws.recv_data(control_frame=True)
        except (OSError, websocket.WebSocketException):
            self._ended(conn, None)
            return
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
            self._ended(conn, code)
        elif opcode == websocket.ABNF.OPCODE_TEXT:
            message = json.loads(data)
            if message.get("messageType") == "notification":
                self._notified(conn, message)

    def _notified(self, conn: Connection, message: dict) -> None:
        version = message["version"]
        with self.lock:
            self.received[version] += 1
            self.data.setdefault(version, message.get("data"))
            self.by_generation.setdefault(version, []).append(conn.generation)
            self.last_message_at = time.monotonic()
            if not self.pending_acks:
                self.pending_since = self.last_message_at
            self.pending_acks.append((conn, message))
        if not self.ack_delay:
            self._flush_acks(force=True)

    def _flush_acks(self, force: bool) -> None:
        with self.lock:
            if not self.pending_acks:
                return
            if not force and time.monotonic() - self.pending_since < self.ack_delay:
                return
            pending, self.pending_acks = self.pending_acks, []
        by_conn: dict[int, tuple[Connection, list[dict]]] = {}
        for conn, message in pending:
            by_conn.setdefault(id(conn), (conn, []))[1].append(message)
        for conn, messages in by_conn.values():
            updates = [{"channelID": m["channelID"], "version": m["version"], "code": 100} for m in messages]
            try:
                conn.ws.send(json.dumps({"messageType": "ack", "updates": updates}))
            except (OSError, websocket.WebSocketException):
                continue  # the reader will notice; a redelivery is allowed
            now = time.monotonic()
            with self.lock:
                for m in messages:
                    self.acked_at.setdefault(m["version"], now)

    def _ended(self, conn: Connection, code: int | None) -> None:
        with self.lock:
            if conn not in self.connections:
                return
            active = conn is self.connections[-1]
            self.connections.remove(conn)
            (self.close_codes if active else self.stale_close_codes).append(code)
        close_websocket_quietly(conn.ws)


def close_websocket_quietly(ws: websocket.WebSocket) -> None:
    try:
        ws.close(timeout=0.5)
    except Exception:  # noqa: BLE001 - closing a dead socket
        pass


def _abort(ws: websocket.WebSocket) -> None:
    """Drop the TCP connection without a close frame."""
    try:
        ws.sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError):
        pass
    try:
        ws.sock.close()
    except (OSError, AttributeError):
        pass


# ---- the pusher --------------------------------------------------------------


@dataclass
class Push:
    client: int
    body: bytes
    started: float
    finished: float
    version: str


class Pusher:
    """POSTs ``total`` messages round-robin to the clients' endpoints from a thread."""

    def __init__(self, clients: list[StreamClient], total: int, interval: float = 0.01,
                 keepalive: bool = False, deadline: float = 90, label: str = "m") -> None:
        self.clients = clients
        self.total = total
        self.interval = interval
        self.keepalive = keepalive
        self.deadline = deadline
        self.label = label
        self.lock = threading.Lock()
        self.accepted: dict[str, Push] = {}
        self.connection_errors = 0
        self.refusals: list[tuple[int, int | None, str | None]] = []  # (status, errno, Retry-After)
        self.unexpected: list[str] = []
        self.done = threading.Event()
        self._thread: threading.Thread | None = None
        self._session = requests.Session() if keepalive else None

    def start(self) -> Pusher:
        self._thread = threading.Thread(target=self._run, name="pusher", daemon=True)
        self._thread.start()
        return self

    def join(self, timeout: float = 90) -> None:
        assert self.done.wait(timeout), f"pusher not done after {timeout} s ({len(self.accepted)} accepted)"

    @property
    def count(self) -> int:
        with self.lock:
            return len(self.accepted)

    def wait_for(self, count: int, timeout: float = 30) -> None:
        wait_until(lambda: self.count >= count or self.done.is_set(), timeout, what=f"{count} accepted pushes")

    def _post(self, url: str, body: bytes) -> tuple[int, str, int | None, str | None]:
        """One POST: (status, message id or text, errno, Retry-After); the response is dropped here.

        Without keep-alive the request says ``Connection: close``: a response
        object that lingers keeps its connection open, and an idle keep-alive
        connection holds a stopping endpoint worker for its graceful timeout.
        """
        headers = {"TTL": PUSH_TTL, "Content-Encoding": "aes128gcm"}
        if self._session is None:
            headers["Connection"] = "close"
        sender = self._session or requests
        with sender.post(url, data=body, headers=headers, timeout=10) as response:
            errno = None
            if response.status_code == 201:
                return 201, response.headers["Location"].rsplit("/m/", 1)[1], None, None
            try:
                errno = response.json().get("errno")
            except ValueError:
                pass
            return response.status_code, response.text[:200], errno, response.headers.get("Retry-After")

    def _run(self) -> None:
        end = time.monotonic() + self.deadline
        try:
            for number in range(self.total):
                index = number % len(self.clients)
                body = f"{self.label}-{number}".encode()
                first_start = time.monotonic()
                while time.monotonic() < end:
                    try:
                        status, text, errno, retry_after = self._post(self.clients[index].endpoint, body)
                    except requests.RequestException:
                        with self.lock:
                            self.connection_errors += 1
                        time.sleep(0.05)
                        continue
                    if status == 201:
                        with self.lock:
                            self.accepted[text] = Push(index, body, first_start, time.monotonic(), text)
                        break
                    if status == 503:
                        with self.lock:
                            self.refusals.append((503, errno, retry_after))
                        time.sleep(0.1)
                        continue
                    with self.lock:
                        self.unexpected.append(f"{status} {text}")
                    if status >= 500:
                        time.sleep(0.1)
                        continue  # still retried, but reported as a failure
                    break
                else:
                    with self.lock:
                        self.unexpected.append(f"message {number} never accepted before the deadline")
                    break
                time.sleep(self.interval)
        finally:
            if self._session is not None:
                self._session.close()
            # A failed request's traceback cycle can keep its socket open until the next
            # collection, and an open keep-alive connection holds a stopping endpoint worker
            # for its whole graceful timeout.
            gc.collect()
            self.done.set()


# ---- waiting and counting ----------------------------------------------------


def settle(clients: list[StreamClient], quiet: float = 2.0, timeout: float = 40) -> None:
    """Every client online, its acks sent and nothing new for ``quiet`` seconds (or the deadline)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = time.monotonic()
        ready = all(
            c.online and not c.pending_acks and now - c.last_message_at >= quiet
            and (not c.connections or now - c.connections[-1].connected_at >= quiet)
            for c in clients
        )
        if ready:
            return
        time.sleep(0.1)


def stored_and_delivered(stack_storage: Any, clients: list[StreamClient], log_dir: Path) -> int:
    """Every message still stored for the clients reached them; how many went through storage.

    Acked messages are deleted, so what went through storage is counted from
    the connection nodes' ``Session`` lines (``stored_retrieved``), which a
    session writes when it ends: call this last, it stops the clients.
    """
    for client in clients:
        missing = listed_versions(stack_storage, client.uaid) - client.unique()
        assert not missing, f"stored but never delivered: {sorted(missing)[:5]}"
    for client in clients:
        client.stop()
    deadline = time.monotonic() + 5
    while not (retrieved := sum(_session_counts(log_dir, "stored_retrieved"))) and time.monotonic() < deadline:
        time.sleep(0.1)
    return retrieved


def _session_counts(log_dir: Path, field_name: str) -> list[int]:
    counts = []
    for path in log_dir.glob("*.log"):
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and '"Session"' in line:
                counts.append(int(json.loads(line)["Fields"].get(field_name, 0)))
    return counts


def listed_versions(stack_storage: Any, uaid: str) -> set[str]:
    """Every timestamp message still stored for ``uaid`` (unacked, or acked but not yet deleted)."""
    versions: set[str] = set()
    bookmark = None
    for _ in range(100):
        high, messages = stack_storage.fetch_timestamp_messages(User(uaid=uaid), bookmark, limit=500)
        if not messages:
            break
        versions.update(m.version for m in messages)
        bookmark = high
    return versions


@dataclass
class Tally:
    accepted: int
    delivered: int
    lost: int
    duplicates: int
    extras: int
    lost_versions: list[str]
    wrong_data: list[str]

    def line(self, name: str, **more: Any) -> str:
        parts = [f"accepted={self.accepted}", f"delivered={self.delivered}", f"lost={self.lost}",
                 f"duplicates={self.duplicates}"]
        parts += [f"{key}={value}" for key, value in more.items()]
        return f"{name}: " + " ".join(parts)


def tally(pusher: Pusher, clients: list[StreamClient], only: set[int] | None = None) -> Tally:
    """Accepted vs received, deduplicated by version (``only``: client indexes to count)."""
    lost, wrong, delivered = [], [], 0
    duplicates = extras = 0
    with pusher.lock:
        accepted = dict(pusher.accepted)
    wanted = {v: p for v, p in accepted.items() if only is None or p.client in only}
    for version, push in wanted.items():
        client = clients[push.client]
        with client.lock:
            count = client.received.get(version, 0)
            data = client.data.get(version)
        if not count:
            lost.append(version)
            continue
        delivered += 1
        duplicates += count - 1
        if data is None or b64url_decode(data) != push.body:
            wrong.append(version)
    for index, client in enumerate(clients):
        if only is not None and index not in only:
            continue
        with client.lock:
            extras += sum(1 for v in client.received if v not in accepted)
    return Tally(len(wanted), delivered, len(lost), duplicates, extras, lost, wrong)


def report(line: str) -> None:
    """The one summary line of a scenario (visible with ``pytest -s`` and in the captured output)."""
    print(line, flush=True)


def redelivered_on_fresh_connections(clients: list[StreamClient], url: str, wait: float = 1.5) -> int:
    """Reconnect every (stopped) client once more and count notifications it is sent again."""
    sockets = []
    for client in clients:
        ws = websocket.create_connection(url, timeout=5, subprotocols=["push-notification"])
        ws.send(json.dumps({"messageType": "hello", "use_webpush": True, "uaid": client.uaid, "broadcasts": {}}))
        reply = json.loads(ws.recv())
        assert (reply.get("status"), reply.get("uaid")) == (200, client.uaid), reply
        sockets.append(ws)
    time.sleep(wait)
    again = 0
    for ws in sockets:
        while select.select([ws.sock], [], [], 0)[0]:
            opcode, data = ws.recv_data(control_frame=True)
            if opcode == websocket.ABNF.OPCODE_TEXT and json.loads(data).get("messageType") == "notification":
                again += 1
            elif opcode == websocket.ABNF.OPCODE_CLOSE:
                break
        close_websocket_quietly(ws)
    return again
