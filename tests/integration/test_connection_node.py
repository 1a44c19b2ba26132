"""The connection node under a real gunicorn with two workers and real dynalite.

Checklist 56, 61–65, 158 and the bad-input rules of docs/protocol.md#close-codes over real sockets.
"""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
import websocket

from autopush_flask.config import CONNECTION, load_settings
from autopush_flask.db import Notification, User, create_storage
from autopush_flask.metrics import NullMetrics
from tests.support.connection_nodes import node_environ, router
from tests.support.processes import GunicornNode, free_port_range
from tests.support.push_client import PushClient

WORKERS = 2


class Cluster:
    def __init__(self, node: GunicornNode, router_port: int, storage) -> None:
        self.node = node
        self.router_ports = [router_port + slot for slot in range(node.workers)]
        self.storage = storage
        self.clients: list[PushClient] = []

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.node.port}/"

    def client(self) -> PushClient:
        client = PushClient(self.ws_url)
        self.clients.append(client)
        return client

    def registered(self) -> tuple[PushClient, str, str]:
        client = self.client()
        uaid = client.hello()["uaid"]
        channel_id = str(uuid.uuid4())
        assert client.register(channel_id)["status"] == 200
        return client, uaid, channel_id

    def node_id(self, uaid: str) -> str:
        return self.storage.get_user(uaid).node_id


@pytest.fixture
def cluster(store_variables, tmp_path) -> Iterator[Cluster]:
    router_port = free_port_range(WORKERS)
    environ = node_environ(store_variables, router_port)
    node = GunicornNode("wsgi:connection_app", environ, workers=WORKERS)
    node.start(tmp_path / "gunicorn.log", wait_ports=tuple(router_port + s for s in range(WORKERS)))
    storage = create_storage(load_settings(CONNECTION, environ), NullMetrics())
    running = Cluster(node, router_port, storage)
    yield running
    for client in running.clients:
        client.close()
    node.stop()


def push_body(channel_id: str, version: str, data: str | None = None) -> dict:
    body = {"channelID": channel_id, "version": version, "ttl": 60, "topic": None, "timestamp": int(time.time())}
    if data:
        body.update(data=data, headers={"encoding": "aes128gcm"})
    return body


@pytest.mark.both_stores
def test_hello_register_notification_ack_over_a_real_socket(cluster: Cluster) -> None:
    client, uaid, channel_id = cluster.registered()
    assert client.subprotocol == "push-notification"
    node_id = cluster.node_id(uaid)
    assert node_id in {f"http://127.0.0.1:{port}" for port in cluster.router_ports}
    response = router.put(f"{node_id}/push/{uaid}", json=push_body(channel_id, "v1", "AAEC"), timeout=5)
    assert (response.status_code, response.text) == (200, "Client accepted for delivery")
    notification = client.receive()
    assert notification == {"messageType": "notification", "channelID": channel_id, "version": "v1",
                            "data": "AAEC", "headers": {"encoding": "aes128gcm"}}
    client.ack(notification)
    client.send({})
    assert client.receive() == "{}"


def test_61_push_for_an_unknown_uaid_is_404_on_every_router(cluster: Cluster) -> None:
    for port in cluster.router_ports:
        response = router.put(f"http://127.0.0.1:{port}/push/{uuid.uuid4().hex}",
                                json=push_body(str(uuid.uuid4()), "v"), timeout=5)
        assert response.status_code == 404


def test_62_dashed_uaid_and_bad_bodies(cluster: Cluster) -> None:
    client, uaid, channel_id = cluster.registered()
    node_id = cluster.node_id(uaid)
    dashed = str(uuid.UUID(uaid))
    assert router.put(f"{node_id}/push/{dashed}", json=push_body(channel_id, "v2"), timeout=5).status_code == 200
    assert client.receive()["version"] == "v2"
    for bad in ({"version": "x"}, {"channelID": "nope", "version": "x"}):
        assert router.put(f"{node_id}/push/{uaid}", json=bad, timeout=5).status_code == 400
    assert router.put(f"{node_id}/push/{uaid}", data=b"{not json", timeout=5).status_code == 400
    assert router.put(f"{node_id}/push/not-a-uuid", json=push_body(channel_id, "v"), timeout=5).status_code == 404


@pytest.mark.both_stores
def test_63_notif_statuses(cluster: Cluster) -> None:
    client, uaid, channel_id = cluster.registered()
    node_id = cluster.node_id(uaid)
    other = next(f"http://127.0.0.1:{p}" for p in cluster.router_ports if f"http://127.0.0.1:{p}" != node_id)
    assert router.put(f"{other}/notif/{uaid}", timeout=5).status_code == 404
    message = Notification(channel_id=channel_id, version="stored-1", ttl=60, timestamp=int(time.time()),
                           sortkey_timestamp=int(time.time() * 1e6))
    cluster.storage.save_message(User(uaid=uaid), message)
    response = router.put(f"{node_id}/notif/{uaid}", timeout=5)
    assert (response.status_code, response.text) == (200, "Notification check started")
    notification = client.receive()
    assert notification["version"] == "stored-1"
    response = router.put(f"{node_id}/notif/{uaid}", timeout=5)
    assert (response.status_code, response.text) == (202, "Flagged for Notification check")
    client.ack(notification)
    client.send({})
    assert client.receive() == "{}"
    time.sleep(1.5)  # the flagged re-check runs a second later
    assert router.put(f"{node_id}/notif/{uaid}", timeout=5).status_code == 200


@pytest.mark.both_stores
def test_64_delete_notif_closes_only_the_exact_session(cluster: Cluster) -> None:
    client, uaid, _ = cluster.registered()
    user = cluster.storage.get_user(uaid)
    response = router.delete(f"{user.node_id}/notif/{uaid}/{user.connected_at - 1}", timeout=5)
    assert (response.status_code, response.text) == (200, "")
    client.send({})
    assert client.receive() == "{}"
    response = router.delete(f"{user.node_id}/notif/{uaid}/{user.connected_at}", timeout=5)
    assert (response.status_code, response.text) == (200, "Terminated duplicate")
    assert client.close_code() == 1000
    assert router.delete(f"{user.node_id}/notif/{uaid}/abc", timeout=5).status_code == 404


def test_65_private_routes_are_not_on_the_public_port(cluster: Cluster) -> None:
    _, uaid, channel_id = cluster.registered()
    public = cluster.node.url
    assert requests.put(f"{public}/notif/{uaid}", timeout=5).status_code == 404
    assert requests.put(f"{public}/push/{uaid}", json=push_body(channel_id, "v"), timeout=5).status_code == 404
    assert requests.get(f"{public}/", timeout=5).status_code >= 400
    assert requests.get(f"{public}/status", timeout=5).json()["status"] == "OK"


def test_router_port_serves_health_with_client_count(cluster: Cluster) -> None:
    cluster.registered()
    counts = [requests.get(f"http://127.0.0.1:{p}/health", timeout=5).json()["clients"] for p in cluster.router_ports]
    assert sum(counts) == 1


@pytest.mark.both_stores
def test_56_158_clients_on_both_workers_and_displacement(cluster: Cluster) -> None:
    seen: dict[str, tuple[PushClient, str, str]] = {}
    for _ in range(30):
        client, uaid, channel_id = cluster.registered()
        seen.setdefault(cluster.node_id(uaid), (client, uaid, channel_id))
        if len(seen) == WORKERS:
            break
    assert len(seen) == WORKERS, "connections never reached both workers"
    for node_id, (client, uaid, channel_id) in seen.items():
        assert router.put(f"{node_id}/push/{uaid}", json=push_body(channel_id, node_id), timeout=5).status_code == 200
        assert client.receive()["version"] == node_id
    # Reconnect one UAID until the new session lands on the other worker.
    (first_node, (original, uaid, _)) = next(iter(seen.items()))
    for _ in range(30):
        newer = cluster.client()
        assert newer.hello(uaid)["uaid"] == uaid
        if cluster.node_id(uaid) != first_node:
            break
        assert original.close_code() == 1000  # same-worker duplicate
        original = newer
    assert cluster.node_id(uaid) != first_node
    assert original.close_code() == 1000  # closed by DELETE /notif from the other worker


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        (("binary", b"\x00\x01"), 1003),
        (("text", "}{{bad_json"), 1011),
        (("text", "[]"), 1011),
        (("text", '{"messageType":"wassup"}'), 1011),
        (("bytes-as-text", b"\xc3\x28"), 1007),
        (("text", "x" * (64 * 1024 + 1)), 1009),
    ],
)
def test_bad_frames_get_their_close_code_and_others_are_unaffected(cluster: Cluster, frame, expected) -> None:
    bystander, uaid, channel_id = cluster.registered()
    offender = cluster.client()
    offender.hello()
    kind, payload = frame
    if kind == "binary":
        offender.ws.send_binary(payload)
    elif kind == "bytes-as-text":
        offender.ws.send(payload, opcode=0x1)
    else:
        offender.send(payload)
    assert offender.close_code() == expected
    node_id = cluster.node_id(uaid)
    assert router.put(f"{node_id}/push/{uaid}", json=push_body(channel_id, "still"), timeout=5).status_code == 200
    assert bystander.receive()["version"] == "still"


def test_long_requests_and_messages_and_batched_frames_arrive_whole(cluster: Cluster) -> None:
    """Each connection reads through a small buffer: longer input must still arrive intact."""
    client = PushClient(cluster.ws_url, header={"Cookie": "c=" + "x" * 6000})
    cluster.clients.append(client)
    client.hello()
    channel_id = str(uuid.uuid4())
    padding = " " * (64 * 1024 - 200)
    client.send(f'{{"messageType": "register",{padding}"channelID": "{channel_id}"}}')
    reply = client.receive()
    assert (reply["messageType"], reply["channelID"], reply["status"]) == ("register", channel_id, 200)
    frames = [str(uuid.uuid4()) for _ in range(20)]
    client.ws.sock.sendall(b"".join(
        websocket.ABNF.create_frame(f'{{"messageType":"register","channelID":"{c}"}}', websocket.ABNF.OPCODE_TEXT)
        .format() for c in frames
    ))
    assert [client.receive()["channelID"] for _ in frames] == frames


def test_half_open_socket_does_not_disturb_the_worker(cluster: Cluster) -> None:
    raw = socket.create_connection(("127.0.0.1", cluster.node.port))
    raw.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    raw.recv(1024)
    raw.sendall(b"\x81")  # half a frame header, then silence
    _, uaid, _ = cluster.registered()
    assert cluster.node_id(uaid)
    raw.close()


def test_hello_timeout_closes_silent_clients(store_variables, tmp_path) -> None:
    router_port = free_port_range(1)
    environ = node_environ(store_variables, router_port, AUTOPUSH_HELLO_TIMEOUT="1")
    node = GunicornNode("wsgi:connection_app", environ)
    node.start(tmp_path / "gunicorn.log", wait_ports=(router_port,))
    try:
        client = PushClient(f"ws://127.0.0.1:{node.port}/")
        started = time.monotonic()
        assert client.close_code() == 1011
        assert time.monotonic() - started < 4
    finally:
        node.stop()


def test_max_connections_refuses_upgrades_with_503(store_variables, tmp_path) -> None:
    router_port = free_port_range(1)
    environ = node_environ(store_variables, router_port, AUTOPUSH_MAX_CONNECTIONS="1")
    node = GunicornNode("wsgi:connection_app", environ)
    node.start(tmp_path / "gunicorn.log", wait_ports=(router_port,))
    try:
        first = PushClient(f"ws://127.0.0.1:{node.port}/")
        first.hello()
        with pytest.raises(Exception) as refused:
            PushClient(f"ws://127.0.0.1:{node.port}/")
        assert "503" in str(refused.value)
        first.close()
    finally:
        node.stop()


@pytest.mark.both_stores
def test_graceful_stop_stores_unacked_notifications_and_closes_1012(store_variables, tmp_path) -> None:
    router_port = free_port_range(1)
    environ = node_environ(store_variables, router_port)
    node = GunicornNode("wsgi:connection_app", environ)
    node.start(tmp_path / "gunicorn.log", wait_ports=(router_port,))
    storage = create_storage(load_settings(CONNECTION, environ), NullMetrics())
    try:
        client = PushClient(f"ws://127.0.0.1:{node.port}/")
        uaid = client.hello()["uaid"]
        channel_id = str(uuid.uuid4())
        client.register(channel_id)
        node_id = storage.get_user(uaid).node_id
        assert router.put(f"{node_id}/push/{uaid}", json=push_body(channel_id, "unacked"), timeout=5).status_code == 200
        assert client.receive()["version"] == "unacked"
        node.signal(signal.SIGTERM)
        assert client.close_code() == 1012
        node.process.wait(timeout=20)
        _, stored = storage.fetch_timestamp_messages(User(uaid=uaid), None)
        assert [m.version for m in stored] == ["unacked"]
    finally:
        node.stop()


def raw_close_code(sock: socket.socket) -> int | None:
    """Read server frames straight off the socket (no automatic pongs) up to a close frame.

    Returns as soon as the close frame is in: the server then waits for our
    close reply (the close handshake) before it drops the connection.
    """
    sock.settimeout(5)
    data = b""
    while True:
        chunk = sock.recv(4096)
        if not chunk:
            return _close_code_in(data)
        data += chunk
        code = _close_code_in(data)
        if code is not None:
            return code


def _close_code_in(data: bytes) -> int | None:
    while len(data) >= 2:
        opcode, length = data[0] & 0x0F, data[1] & 0x7F
        if opcode == 0x8 and len(data) >= 4:
            return int.from_bytes(data[2:4], "big")
        data = data[2 + length:]
    return None


def single_worker(store_variables, tmp_path, **settings: str) -> tuple[GunicornNode, str]:
    router_port = free_port_range(1)
    node = GunicornNode("wsgi:connection_app", node_environ(store_variables, router_port, **settings))
    node.start(tmp_path / "gunicorn.log", wait_ports=(router_port,))
    return node, f"ws://127.0.0.1:{node.port}/"


def test_23_client_that_never_answers_pings_is_closed(store_variables, tmp_path) -> None:
    node, url = single_worker(store_variables, tmp_path,
                              AUTOPUSH_AUTO_PING_INTERVAL="1", AUTOPUSH_AUTO_PING_TIMEOUT="1")
    try:
        silent, answering = PushClient(url), PushClient(url)
        assert silent.hello()["ping"] == 1.0
        answering.hello()
        answering.ws.settimeout(1.5)
        deadline = time.monotonic() + 5
        pings = 0
        while time.monotonic() < deadline:  # reading answers the server's pings
            try:
                opcode, _ = answering.ws.recv_data(control_frame=True)
            except websocket.WebSocketTimeoutException:
                continue
            pings += opcode == websocket.ABNF.OPCODE_PING
        assert pings >= 3
        # The silent client's socket holds the pings it never answered, then the close.
        assert raw_close_code(silent.ws.sock) == 1011
        answering.send({})
        answering.ws.settimeout(5)
        assert answering.receive() == "{}"
    finally:
        node.stop()


def test_message_floods_do_not_disturb_the_worker(cluster: Cluster) -> None:
    bystander, uaid, channel_id = cluster.registered()
    flooder = cluster.client()
    flooder.hello()
    for _ in range(2000):
        flooder.send({"messageType": "ack", "updates": []})
    flooder.send({})
    assert flooder.receive() == "{}"
    flooder.send({})
    assert flooder.close_code() == 4774
    node_id = cluster.node_id(uaid)
    assert router.put(f"{node_id}/push/{uaid}", json=push_body(channel_id, "calm"), timeout=5).status_code == 200
    assert bystander.receive()["version"] == "calm"
