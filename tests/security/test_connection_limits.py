"""One client cannot stall a connection worker: attacks over real sockets on real gunicorn nodes.

Each test mounts one attack against a connection node (and an endpoint node
where a push is needed), with the limit under test set low, and asserts the
protection and a figure: how late a timer ran, how many bytes were queued,
how many notifications went direct, how many half-open sockets were closed,
how much CPU a worker spent, how long a close handshake was waited for.
"""

from __future__ import annotations

import json
import selectors
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
import websocket

from autopush_flask.connection.websocket import SEND_BUFFER_BYTES
from autopush_flask.db import User
from tests.support.push_client import PushClient
from tests.support.stack import Stack
from tests.support.webpush import AppServer, Subscription

SMALL_RECEIVE_BUFFER = ((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),)
# 5,000 unknown broadcast ids: a 60 KB message whose reply (an error per id) is ~150 KB.
BROADCAST_FLOOD = json.dumps({
    "messageType": "broadcast_subscribe",
    "broadcasts": {f"{index:05x}": "" for index in range(5000)},
})

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def start_stack(dynalite, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    """Start a stack with these settings; ``endpoint=False`` starts the connection node only."""
    started: list[Stack] = []

    def start(endpoint: bool = True, **settings: str) -> Stack:
        stack = Stack(dynalite.url, tmp_path, **settings)
        started.append(stack)
        if endpoint:
            return stack.start()
        stack.connection.start(tmp_path / "connection.log", wait_ports=(stack.router_port,))
        return stack

    yield start
    for stack in started:
        stack.stop()


def router_clients(stack: Stack) -> int:
    return requests.get(f"http://127.0.0.1:{stack.router_port}/health", timeout=5).json()["clients"]


def wait_until(condition: Callable[[], bool], timeout: float, step: float = 0.05) -> float | None:
    """Seconds until ``condition()`` held, or ``None`` if it never did within ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(step)
    return None


def flood_until_the_server_stops_reading(client: PushClient, patience: float = 0.5) -> int:
    """Send large-reply requests without reading until our sends block; returns how many went out.

    The client reads nothing, so once its receive window and the server's send
    buffer are full, the server's reply blocks, the server stops reading, and
    then our own send blocks for ``patience`` seconds.
    """
    client.ws.settimeout(patience)
    for sent in range(2000):
        try:
            client.ws.send(BROADCAST_FLOOD)
        except (websocket.WebSocketTimeoutException, OSError):
            return sent
    raise AssertionError("the server kept reading 2,000 large requests")


def worker_pid(stack: Stack) -> int:
    master = stack.connection.process.pid
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    assert len(children) == 1, children
    return int(children[0])


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, from ``/proc/<pid>/stat``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100  # USER_HZ is 100 on Linux


def server_send_queue(server_port: int, client_port: int) -> int:
    """Bytes the server side of one loopback connection has queued and not had acknowledged."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, remote, _, queues = line.split()[1:5]
        if int(local.split(":")[1], 16) == server_port and int(remote.split(":")[1], 16) == client_port:
            return int(queues.split(":")[0], 16)
    raise AssertionError(f"no connection {server_port} <- {client_port}")


# ---- 1. the timer never waits on a client ---------------------------------------------


def test_a_client_stuck_in_a_send_does_not_stop_the_timers(start_stack) -> None:
    """A pinged client stops reading while a large reply is sent; another client's hello
    timeout still fires on time.

    The send deadline is set far away (60 s) so that only the timer's own
    behaviour is measured: it must not wait for the stuck client's lock.
    """
    stack = start_stack(
        endpoint=False, AUTOPUSH_HELLO_TIMEOUT="2", AUTOPUSH_AUTO_PING_INTERVAL="1",
        AUTOPUSH_AUTO_PING_TIMEOUT="1", AUTOPUSH_SEND_TIMEOUT="60",
    )
    stuck = PushClient(stack.ws_url, sockopt=SMALL_RECEIVE_BUFFER)
    stack.clients.append(stuck)
    stuck.hello()
    time.sleep(2.5)  # the node has pinged it; it reads nothing, so the pong never comes
    assert flood_until_the_server_stops_reading(stuck) > 0
    silent = PushClient(stack.ws_url, timeout=10)  # never says hello
    stack.clients.append(silent)
    started = time.monotonic()
    try:
        code = silent.close_code()
    except websocket.WebSocketTimeoutException:
        code = None  # still open 10 s later
    closed_after = time.monotonic() - started
    assert code == 1011, f"not closed {closed_after:.1f} s after connecting (hello timeout 2 s)"
    assert closed_after < 2 + 2, f"hello timeout fired {closed_after:.1f} s after connecting (limit 2 s)"


def test_a_client_sending_without_pause_does_not_starve_the_others(start_stack) -> None:
    """Buffered frames are read and answered without ever blocking, so without a
    yield after each message, one client streaming small messages keeps every
    other greenlet of the worker (accepting, hellos, timers) waiting."""
    stack = start_stack(endpoint=False)
    flooder = PushClient(stack.ws_url)
    stack.clients.append(flooder)
    flooder.hello()
    frame = websocket.ABNF.create_frame('{"messageType":"nack"}', websocket.ABNF.OPCODE_TEXT).format()
    stream = frame * 1_000_000  # 30 MB of messages the node reads and ignores: ~6 s of its CPU
    flooder.ws.sock.settimeout(60)
    sender = threading.Thread(target=flooder.ws.sock.sendall, args=(stream,), daemon=True)
    sender.start()
    time.sleep(0.5)
    started = time.monotonic()
    newcomer = PushClient(stack.ws_url, timeout=30)
    stack.clients.append(newcomer)
    assert newcomer.hello()["status"] == 200
    latency = time.monotonic() - started
    assert latency < 1.0, f"hello answered after {latency:.2f} s while another client streamed"
    assert sender.is_alive(), "the stream ended before the newcomer was answered: nothing measured"
    print(f"\nhello answered in {latency * 1000:.0f} ms while another client streamed 1,000,000 messages")
    sender.join(60)


# ---- 2. every send has a deadline ------------------------------------------------------


def test_a_client_that_stops_reading_is_dropped_and_its_unacked_notification_kept(start_stack) -> None:
    stack = start_stack(AUTOPUSH_SEND_TIMEOUT="2")
    client = PushClient(stack.ws_url, sockopt=SMALL_RECEIVE_BUFFER)
    stack.clients.append(client)
    uaid = client.hello()["uaid"]
    channel_id = str(uuid.uuid4())
    subscription = Subscription(client.register(channel_id)["pushEndpoint"])
    assert AppServer().push(subscription, "never acked").status_code == 201
    notification = client.receive()  # read, never acknowledged
    client_port = client.ws.sock.getsockname()[1]

    flood_until_the_server_stops_reading(client)
    stalled_at = time.monotonic()
    queued = server_send_queue(stack.connection.port, client_port)
    dropped_after = wait_until(lambda: router_clients(stack) == 0, timeout=15)

    assert dropped_after is not None, "the stalled client was never dropped"
    assert dropped_after < 2 + 1.5, f"dropped {dropped_after:.1f} s after it stalled (deadline 2 s)"
    # Linux doubles SO_SNDBUF for its bookkeeping; one frame may be part-written besides.
    assert queued <= 2 * SEND_BUFFER_BYTES + 64 * 1024, f"{queued} bytes queued for a stalled client"
    print(f"\nstalled client dropped {dropped_after:.2f} s after it stopped reading; {queued} bytes were queued")

    back = PushClient(stack.ws_url)
    stack.clients.append(back)
    assert back.hello(uaid)["uaid"] == uaid
    again = back.receive()
    assert (again["channelID"], again["version"]) == (channel_id, notification["version"])
    assert subscription.decrypt(again) == b"never acked"
    assert time.monotonic() - stalled_at < 15
    assert '"disconnect_reason": "send timeout"' in stack.connection.log()


def test_a_push_to_a_client_stuck_in_a_send_is_stored_at_once(start_stack) -> None:
    """``PUT /push`` waits for a busy client for one second, then answers 503: the
    endpoint stores the message well before its own 3 s timeout would make it
    take the whole node for gone (and drop the client's node_id)."""
    stack = start_stack(AUTOPUSH_SEND_TIMEOUT="60")
    client = PushClient(stack.ws_url, sockopt=SMALL_RECEIVE_BUFFER)
    stack.clients.append(client)
    uaid = client.hello()["uaid"]
    subscription = Subscription(client.register(str(uuid.uuid4()))["pushEndpoint"])
    flood_until_the_server_stops_reading(client)
    started = time.monotonic()
    assert AppServer().push(subscription, "while stuck").status_code == 201
    latency = time.monotonic() - started
    assert latency < 2.5, f"push answered after {latency:.2f} s"
    _, stored = stack.storage.fetch_timestamp_messages(User(uaid=uaid), None)
    assert len(stored) == 1
    assert stack.storage.get_user(uaid).node_id, "the endpoint took the node for gone"
    print(f"\npush to a client stuck in a send stored after {latency:.2f} s")


# ---- 3. unacknowledged direct notifications are capped --------------------------------


def test_direct_notifications_beyond_the_unacked_cap_are_stored_not_lost(start_stack) -> None:
    cap, pushes = 3, 10
    stack = start_stack(AUTOPUSH_MAX_UNACKED_DIRECT=str(cap))
    client = PushClient(stack.ws_url)
    stack.clients.append(client)
    uaid = client.hello()["uaid"]
    subscription = Subscription(client.register(str(uuid.uuid4()))["pushEndpoint"])
    app_server = AppServer()
    statuses = [app_server.push(subscription, f"message {n}").status_code for n in range(pushes)]
    assert statuses == [201] * pushes

    _, stored = stack.storage.fetch_timestamp_messages(User(uaid=uaid), None)
    assert len(stored) == pushes - cap, f"{pushes - len(stored)} of {pushes} went direct (cap {cap})"

    received: dict[str, bytes] = {}
    client.ws.settimeout(10)
    while len(received) < pushes:
        notification = client.receive()
        received[notification["version"]] = subscription.decrypt(notification)
        client.ack(notification)
    assert sorted(received.values()) == sorted(f"message {n}".encode() for n in range(pushes))
    print(f"\n{pushes - len(stored)} of {pushes} pushes went direct (cap {cap}), {len(stored)} stored, all delivered")


# ---- 4. channels per UAID and the register rate ---------------------------------------


def test_registers_beyond_the_channel_cap_get_413_and_the_connection_stays(start_stack) -> None:
    stack = start_stack(endpoint=False, AUTOPUSH_MAX_CHANNELS="5")
    client = PushClient(stack.ws_url)
    stack.clients.append(client)
    client.hello()
    channels = [str(uuid.uuid4()) for _ in range(7)]
    statuses = [client.register(channel_id)["status"] for channel_id in channels]
    assert statuses == [200] * 5 + [413] * 2
    assert client.register(channels[6]) == {"messageType": "register", "channelID": channels[6],
                                            "status": 413, "reason": "too many channels"}
    assert client.register(channels[0])["status"] == 200  # an existing channel is no new one
    client.send({"messageType": "unregister", "channelID": channels[0]})
    assert client.receive()["status"] == 200
    assert client.register(channels[5])["status"] == 200  # room again
    client.send({})
    assert client.receive() == "{}"  # still connected


def test_registers_beyond_the_rate_get_429_and_the_connection_stays(start_stack) -> None:
    rate = 20  # per minute, in bursts of 20: one more every 3 s
    stack = start_stack(endpoint=False, AUTOPUSH_REGISTER_RATE=str(rate))
    client = PushClient(stack.ws_url)
    stack.clients.append(client)
    client.hello()
    channel_id = str(uuid.uuid4())
    statuses = [client.register(channel_id)["status"] for _ in range(rate + 5)]
    assert statuses == [200] * rate + [429] * 5
    assert client.register(channel_id)["reason"] == "too many registers"
    time.sleep(60 / rate + 0.2)
    assert client.register(channel_id)["status"] == 200
    client.send({})
    assert client.receive() == "{}"
    print(f"\n{statuses.count(200)} registers accepted in a burst, {statuses.count(429)} refused with 429")


# ---- 5. the upgrade request has a deadline (slowloris) ---------------------------------

HALF_HEAD = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upg"


def test_half_sent_request_heads_are_closed_and_do_not_keep_clients_out(start_stack) -> None:
    deadline, count = 3.0, 1000
    stack = start_stack(endpoint=False, AUTOPUSH_UPGRADE_TIMEOUT=str(deadline))
    selector = selectors.DefaultSelector()
    opened_at = time.monotonic()
    for _ in range(count):
        sock = socket.create_connection(("127.0.0.1", stack.connection.port), timeout=5)
        sock.sendall(HALF_HEAD)
        sock.setblocking(False)
        selector.register(sock, selectors.EVENT_READ)
    try:
        time.sleep(1.0)  # the worker has accepted them all and waits for the rest of each head
        started = time.monotonic()
        newcomer = PushClient(stack.ws_url)
        stack.clients.append(newcomer)
        assert newcomer.hello()["status"] == 200
        hello_latency = time.monotonic() - started
        assert hello_latency < 1.0, f"hello answered after {hello_latency:.2f} s with {count} half-open heads"

        closed = closed_by_server(selector, until=opened_at + deadline + 3)
        assert closed == count, f"{closed} of {count} half-open connections closed"
        print(f"\nhello in {hello_latency * 1000:.0f} ms beside {count} half-open heads; "
              f"{closed} closed within {deadline:.0f} s + 3 s")
    finally:
        for key in list(selector.get_map().values()):
            key.fileobj.close()
        selector.close()


def closed_by_server(selector: selectors.BaseSelector, until: float) -> int:
    """How many of the sockets reached EOF, with nothing sent to them, before ``until``."""
    closed = 0
    while selector.get_map() and time.monotonic() < until:
        for key, _ in selector.select(timeout=max(0.0, until - time.monotonic())):
            try:
                data = key.fileobj.recv(4096)
            except ConnectionResetError:
                data = b""
            assert data == b"", data[:80]
            selector.unregister(key.fileobj)
            key.fileobj.close()
            closed += 1
    return closed


# ---- 6. UTF-8 validation at C speed -----------------------------------------------------


def test_large_text_messages_cost_little_cpu_and_invalid_utf8_still_closes_1007(start_stack) -> None:
    stack = start_stack(endpoint=False)
    worker = worker_pid(stack)
    client = PushClient(stack.ws_url)
    stack.clients.append(client)
    client.hello()
    # 60 KiB of two-byte characters in a message the node reads and ignores (a nack without version).
    message = json.dumps({"messageType": "nack", "padding": "é" * 30_000}, ensure_ascii=False)
    assert 60_000 < len(message.encode()) < 64 * 1024
    before = cpu_seconds(worker)
    for _ in range(200):
        client.send(message)
    client.send({})
    assert client.receive() == "{}"  # every message before it was read
    spent = cpu_seconds(worker) - before
    # Measured: ~0.1 s. With gevent-websocket's pure-Python UTF-8 validator (run on
    # every frame and again on the message) ~3.5 s; with its pure-Python unmasking
    # loop ~1.5 s; with both, the library as it is, ~4.3 s.
    assert spent < 0.5, f"the worker spent {spent:.2f} s of CPU on 200 × 60 KiB messages"
    print(f"\n200 × 60 KiB text messages cost the worker {spent:.2f} s of CPU")

    offender = PushClient(stack.ws_url)
    stack.clients.append(offender)
    offender.hello()
    offender.ws.send(b'{"messageType": "nack", "x": "\xc3\x28"}', opcode=websocket.ABNF.OPCODE_TEXT)
    assert offender.close_code() == 1007


# ---- 7. the close handshake has a deadline ---------------------------------------------


def read_close_frame(sock: socket.socket) -> int:
    """Read raw bytes up to the server's (unmasked, short) close frame; its code."""
    data = b""
    while True:
        chunk = sock.recv(4096)
        assert chunk, "the connection ended before a close frame"
        data += chunk
        while len(data) >= 2 and len(data) >= 2 + (data[1] & 0x7F):
            opcode, length = data[0] & 0x0F, data[1] & 0x7F
            if opcode == 0x8:
                return struct.unpack("!H", data[2:4])[0]
            data = data[2 + length:]


def wait_for_eof(sock: socket.socket, timeout: float) -> float:
    sock.settimeout(timeout)
    started = time.monotonic()
    try:
        while sock.recv(4096):
            pass
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_a_client_that_never_answers_the_close_is_dropped_after_the_handshake_timeout(start_stack) -> None:
    timeout = 2.0
    stack = start_stack(endpoint=False, AUTOPUSH_CLOSE_HANDSHAKE_TIMEOUT=str(timeout))
    silent = PushClient(stack.ws_url)
    stack.clients.append(silent)
    silent.hello()
    silent.ws.send_binary(b"\x00")  # the node closes with 1003
    assert read_close_frame(silent.ws.sock) == 1003
    waited = wait_for_eof(silent.ws.sock, timeout=10)
    assert timeout - 0.5 < waited < timeout + 1.5, f"TCP dropped {waited:.2f} s after the close frame"

    polite = PushClient(stack.ws_url)
    stack.clients.append(polite)
    polite.hello()
    polite.ws.send_binary(b"\x00")
    assert read_close_frame(polite.ws.sock) == 1003
    polite.ws.sock.sendall(websocket.ABNF.create_frame(struct.pack("!H", 1003), websocket.ABNF.OPCODE_CLOSE).format())
    answered = wait_for_eof(polite.ws.sock, timeout=10)
    assert answered < 0.5, f"TCP dropped {answered:.2f} s after the client's close reply"
    print(f"\nsilent client dropped {waited:.2f} s after the close frame (timeout {timeout:.0f} s); "
          f"answering client {answered * 1000:.0f} ms after its reply")
