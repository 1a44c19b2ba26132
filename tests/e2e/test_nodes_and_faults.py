"""Several nodes, and faults with nothing lost (acceptance items 2 and 3).

Real gunicorn masters, real dynalite, browser-like clients reading and
acknowledging in threads while a pusher thread POSTs to their endpoints.
A message is *accepted* only when the endpoint answered 201; every accepted
message must reach its client (deduplicated by ``version``: duplicates of
unacknowledged messages are allowed, loss is not). The one exception the
design documents is a connection worker killed outright, whose sent but
unacknowledged direct notifications may be lost.

Each scenario prints one line with its counts (``pytest -s`` shows them).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from uuid import uuid4

import pytest
import requests

from autopush_flask.db import User
from tests.e2e.faults_support import (
    Pusher,
    StreamClient,
    children,
    pid_listening_on,
    port_of,
    redelivered_on_fresh_connections,
    report,
    settle,
    stored_and_delivered,
    tally,
    wait_port_closed,
    wait_ports,
    wait_until,
    with_reload_room,
)
from tests.support.fake_node import FakeNode
from tests.support.postgres import STORES, LocalPostgres, new_cluster
from tests.support.processes import GunicornNode, LocalDynamoDB, free_port_range
from tests.support.push_client import PushClient
from tests.support.stack import Stack

pytestmark = pytest.mark.timeout(150)

CLIENTS = 6
PUSHES = 300
MOVE_GRACE = 1.0  # seconds for an accepted push to reach the client it was routed to


class Running:
    """Whatever a scenario started, stopped in reverse order whatever happens."""

    def __init__(self) -> None:
        self.clients: list[StreamClient] = []
        self.stoppables: list = []

    def stop(self) -> None:
        for client in self.clients:
            client.stop()
        for item in reversed(self.stoppables):
            try:
                item.stop()
            except Exception:  # noqa: BLE001 - best-effort cleanup
                pass


@pytest.fixture
def running() -> Iterator[Running]:
    started = Running()
    yield started
    started.stop()


def connect_clients(running: Running, url: str, count: int = CLIENTS, **options) -> list[StreamClient]:
    clients = [StreamClient(url, **options).subscribe() for _ in range(count)]
    running.clients.extend(clients)
    for client in clients:
        client.start()
    return clients


def node_ids(stack_storage, clients: list[StreamClient]) -> list[str | None]:
    return [stack_storage.get_user(c.uaid).node_id for c in clients]


def router_urls(base: int, workers: int) -> set[str]:
    return {f"http://127.0.0.1:{base + slot}" for slot in range(workers)}


def assert_pusher_clean(pusher: Pusher) -> None:
    assert pusher.unexpected == [], pusher.unexpected[:5]
    assert len(pusher.accepted) == pusher.total


def assert_clients_clean(clients: list[StreamClient]) -> None:
    for client in clients:
        assert client.problems == [], client.problems


# ---- 2. several nodes ----------------------------------------------------------


def test_two_connection_nodes_client_moves_between_them(dynalite, tmp_path: Path, running: Running) -> None:
    """Two connection masters × 2 workers, one endpoint master × 2 workers, clients moving A → B → A."""
    stack = Stack(dynalite.url, tmp_path)  # tables, keys, endpoint URL; its own nodes stay unused
    base_a = free_port_range(2)
    base_b = next(base for base in iter(lambda: free_port_range(2), None) if abs(base - base_a) >= 2)
    node_a = GunicornNode("wsgi:connection_app", {**stack.environ, "AUTOPUSH_ROUTER_PORT": str(base_a)}, workers=2)
    node_b = GunicornNode("wsgi:connection_app", {**stack.environ, "AUTOPUSH_ROUTER_PORT": str(base_b)}, workers=2)
    endpoint = GunicornNode("wsgi:endpoint_app", stack.environ, workers=2, port=stack.endpoint_port)
    for node, name, base in ((node_a, "a", base_a), (node_b, "b", base_b), (endpoint, "endpoint", None)):
        running.stoppables.append(node)
        node.start(tmp_path / f"{name}.log", wait_ports=(base, base + 1) if base else ())
    assert len(children(endpoint.process.pid)) == 2
    routers_a, routers_b = router_urls(base_a, 2), router_urls(base_b, 2)
    url_a, url_b = f"ws://127.0.0.1:{node_a.port}/", f"ws://127.0.0.1:{node_b.port}/"

    clients = connect_clients(running, url_a)
    assert set(node_ids(stack.storage, clients)) <= routers_a
    pusher = Pusher(clients, PUSHES, interval=0.01, label="nodes").start()
    moved_at: list[list[float]] = [[] for _ in clients]

    for count, url, routers, closes in ((PUSHES // 4, url_b, routers_b, 1), (PUSHES * 5 // 8, url_a, routers_a, 2)):
        pusher.wait_for(count)
        for index, client in enumerate(clients):
            client.move(url)
            moved_at[index].append(time.monotonic())
            # The new node's hello sent DELETE /notif to the old node, which closed the stale session.
            wait_until(lambda: len(client.stale_close_codes) >= closes, 10, what="stale session closed")
            assert client.stale_close_codes == [1000] * closes
            assert stack.storage.get_user(client.uaid).node_id in routers
            time.sleep(0.05)

    pusher.join()
    settle(clients)
    assert_pusher_clean(pusher)
    assert_clients_clean(clients)
    result = tally(pusher, clients)
    assert result.lost == 0, result.lost_versions[:10]
    assert result.wrong_data == [] and result.extras == 0
    # "Found there": pushes started after a move completed arrived on the new connection.
    # A push still in flight (or just accepted) when its client moved again may
    # rightly arrive on the connection after that move: those are not counted.
    found_there = 0
    for push in pusher.accepted.values():
        client = clients[push.client]
        moves = [at for at in moved_at[push.client] if at < push.started]
        in_flight = any(push.started <= at <= push.finished + MOVE_GRACE for at in moved_at[push.client])
        if moves and not in_flight:
            generations = client.by_generation[push.version]
            assert generations[0] == 1 + len(moves), (push.version, generations, len(moves))
            found_there += 1
    assert found_there > 0
    for client in clients:
        assert client.close_codes == []  # the active connection never dropped
        client.stop()
    # Exactly once after the final ack: nothing is left to send again.
    again = redelivered_on_fresh_connections(clients, url_b)
    assert again == 0
    report(result.line("several-nodes", moves=2 * len(clients),
                       stale_closed_1000=sum(len(c.stale_close_codes) for c in clients),
                       found_on_new_node=found_there, redelivered_after_final_ack=again))


# ---- 3. faults -------------------------------------------------------------------


@pytest.mark.parametrize("how", ["HUP", "TERM+start"])
def test_graceful_restart_of_the_connection_node(dynalite, tmp_path: Path, running: Running, how: str) -> None:
    stack = with_reload_room(Stack(dynalite.url, tmp_path, connection_workers=2))
    running.stoppables.append(stack)
    stack.start()
    clients = connect_clients(running, stack.ws_url, count=CLIENTS // 2, reconnect_delay=0.5)
    clients += connect_clients(running, stack.ws_url, count=CLIENTS // 2, ack_delay=0.3, reconnect_delay=0.5)
    pusher = Pusher(clients, PUSHES, interval=0.01, label=how).start()
    old_routers = [stack.router_port, stack.router_port + 1]
    pusher.wait_for(PUSHES // 3)
    if how == "HUP":
        stack.connection.signal(signal.SIGHUP)
        wait_ports([stack.router_port + 2, stack.router_port + 3])  # the new workers' slots
        for port in old_routers:
            wait_port_closed(port, 20)
        expected_nodes = router_urls(stack.router_port + 2, 2)
    else:
        stack.connection.signal(signal.SIGTERM)
        stack.connection.process.wait(timeout=20)
        stack.connection.start(stack.log_dir / "connection.log", wait_ports=tuple(old_routers))
        expected_nodes = router_urls(stack.router_port, 2)
    pusher.join()
    settle(clients)
    assert_pusher_clean(pusher)
    assert_clients_clean(clients)
    for client in clients:
        # A client may land on an old worker that has not yet seen the signal: then 1012 twice.
        assert client.close_codes and set(client.close_codes) == {1012}, client.close_codes
    assert set(node_ids(stack.storage, clients)) <= expected_nodes
    result = tally(pusher, clients)
    assert result.lost == 0, result.lost_versions[:10]
    assert result.wrong_data == [] and result.extras == 0
    stored = stored_and_delivered(stack.storage, clients, stack.log_dir)
    assert stored > 0
    report(result.line(f"graceful-restart({how})", stored=stored, clients_closed_1012=len(clients),
                       closes_1012=sum(len(c.close_codes) for c in clients),
                       reconnect_attempts=sum(c.reconnects for c in clients),
                       push_connection_errors=pusher.connection_errors, push_503=len(pusher.refusals)))


def test_sigkill_of_a_connection_worker(dynalite, tmp_path: Path, running: Running) -> None:
    stack = Stack(dynalite.url, tmp_path, connection_workers=2)
    running.stoppables.append(stack)
    stack.start()
    routers = router_urls(stack.router_port, 2)
    # Clients on both workers; they acknowledge in batches a second late, so some notifications
    # are unacknowledged at any moment; after the drop they back off a second before reconnecting.
    clients: list[StreamClient] = []
    for _ in range(16):
        clients.append(StreamClient(stack.ws_url, ack_delay=1.0, reconnect_delay=1.0).subscribe())
        spread = Counter(node_ids(stack.storage, clients))
        if len(clients) >= CLIENTS and all(spread[node] >= 2 for node in routers):
            break
    running.clients.extend(clients)
    spread = Counter(node_ids(stack.storage, clients))
    assert all(spread[node] >= 2 for node in routers), spread
    for client in clients:
        client.start()
    pusher = Pusher(clients, PUSHES, interval=0.01, label="kill").start()
    pusher.wait_for(PUSHES // 3)

    victim_node = spread.most_common(1)[0][0]
    master = stack.connection.process.pid
    victim_pid = pid_listening_on(port_of(victim_node), children(master))
    victims = {i for i, node in enumerate(node_ids(stack.storage, clients)) if node == victim_node}
    os.kill(victim_pid, signal.SIGKILL)
    killed_at = time.monotonic()

    pusher.join()
    settle(clients)
    assert_pusher_clean(pusher)
    assert_clients_clean(clients)
    # The master replaced the worker in the same slot: same router port, new pid.
    replacement = pid_listening_on(port_of(victim_node), children(master))
    assert replacement != victim_pid
    for index, client in enumerate(clients):
        if index in victims:
            assert client.close_codes == [None], client.close_codes  # TCP dropped, no close frame
        else:
            assert client.close_codes == []

    # Direct notifications that may legitimately be lost: sent to a victim before the kill, not acked then.
    unacked_at_kill = 0
    for version, push in pusher.accepted.items():
        if push.client in victims and push.started < killed_at:
            acked = clients[push.client].acked_at.get(version)
            if acked is None or acked > killed_at:
                unacked_at_kill += 1
    result = tally(pusher, clients)
    others = tally(pusher, clients, only=set(range(len(clients))) - victims)
    assert others.lost == 0, others.lost_versions[:10]
    assert 0 < unacked_at_kill and result.lost <= unacked_at_kill
    assert result.wrong_data == [] and result.extras == 0
    # Every message that was stored (by the endpoint, or re-stored by a worker) was delivered.
    stored = stored_and_delivered(stack.storage, clients, stack.log_dir)
    assert stored > 0
    report(result.line("sigkill-worker", lost_direct=result.lost, unacked_at_kill=unacked_at_kill,
                       victims=len(victims), clients=len(clients), stored=stored,
                       push_connection_errors=pusher.connection_errors))


def own_store(backend: str, tmp_path: Path, running: Running) -> tuple[LocalDynamoDB | LocalPostgres, dict]:
    """A store of this test's own, started, that it can stop and start: (store, Stack arguments)."""
    if backend == "dynamodb":
        database = LocalDynamoDB(path=tmp_path / "dynamodb")
        database.start()
        running.stoppables.append(database)
        return database, {"ddb_url": database.url}
    cluster = new_cluster()
    cluster.start()
    running.stoppables.append(SimpleNamespace(stop=cluster.destroy))
    return cluster, {"ddb_url": "http://127.0.0.1:9", "AUTOPUSH_DB_URL": cluster.url()}


@pytest.mark.parametrize("backend", STORES)
def test_store_stopped_and_restarted_mid_stream(tmp_path: Path, running: Running, backend: str) -> None:
    database, store = own_store(backend, tmp_path, running)
    stack = Stack(log_dir=tmp_path, connection_workers=2, **store)
    running.stoppables.append(stack)
    stack.start()
    clients = connect_clients(running, stack.ws_url)
    away = clients[CLIENTS // 2:]
    pusher = Pusher(clients, PUSHES, interval=0.01, label="ddb").start()

    pusher.wait_for(PUSHES // 5)
    for client in away:  # their messages go to storage before, during and after the outage
        client.go_offline(abrupt=client is away[0])
    pusher.wait_for(PUSHES * 2 // 5)
    accepted_before = pusher.count
    database.stop()
    wait_until(lambda: len(pusher.refusals) >= 10, 15, what="503s during the outage")
    for client in away:  # they try to come back while the database is down
        client.come_back()
    time.sleep(1.5)
    hello_failures = [failure for c in away for failure in c.hello_failures]
    refused_during_outage = len(pusher.refusals)
    database.start()
    pusher.join()
    settle(clients)

    assert_pusher_clean(pusher)  # no 500, no other status
    assert_clients_clean(clients)
    assert refused_during_outage >= 10
    for status, errno, retry_after in pusher.refusals:
        assert (status, retry_after) == (503, "120")
        assert errno in (201, 202)
    assert pusher.connection_errors == 0  # the endpoint stayed up and answered
    # Browsers coming back meanwhile were refused at hello: a 503 reply (then close 1011), never a crash.
    assert hello_failures and all("'status': 503" in failure for failure in hello_failures), hello_failures[:3]
    result = tally(pusher, clients)
    assert result.lost == 0, result.lost_versions[:10]
    assert result.wrong_data == []
    stored = stored_and_delivered(stack.storage, clients, stack.log_dir)
    assert stored > 0
    errnos = Counter(errno for _, errno, _ in pusher.refusals)
    report(result.line(f"{backend}-restart", accepted_before_outage=accepted_before,
                       accepted_after=len(pusher.accepted) - accepted_before,
                       refused_503=len(pusher.refusals),
                       errnos="/".join(f"{k}:{v}" for k, v in sorted(errnos.items())),
                       hellos_refused_503=len(hello_failures), stored=stored, extras=result.extras))


def test_disconnect_with_unacked_direct_notifications(dynalite, tmp_path: Path, running: Running) -> None:
    stack = Stack(dynalite.url, tmp_path, connection_workers=2)
    running.stoppables.append(stack)
    stack.start()
    clients = connect_clients(running, stack.ws_url, ack_delay=3600)  # read, never acknowledge
    pusher = Pusher(clients, PUSHES // 2, interval=0.01, label="unacked").start()
    pusher.wait_for(PUSHES // 4)
    before = {}
    for index, client in enumerate(clients):
        before[index] = client.unique()
        client.go_offline(abrupt=index % 2 == 1)  # half close cleanly, half drop the TCP connection
        time.sleep(0.05)
    assert sum(map(len, before.values())) > 0
    time.sleep(0.5)
    for client in clients:
        client.ack_delay = 0.0
        client.come_back()
    pusher.join()
    settle(clients)
    assert_pusher_clean(pusher)
    assert_clients_clean(clients)
    result = tally(pusher, clients)
    assert result.lost == 0, result.lost_versions[:10]
    assert result.wrong_data == [] and result.extras == 0
    # Every notification read but not acknowledged before the disconnect came again afterwards.
    unacked = redelivered = 0
    for index, client in enumerate(clients):
        for version in before[index]:
            unacked += 1
            redelivered += any(generation > 1 for generation in client.by_generation[version])
    assert redelivered == unacked
    for client in clients:
        client.stop()
    assert redelivered_on_fresh_connections(clients, stack.ws_url) == 0
    report(result.line("disconnect-unacked", unacked_at_disconnect=unacked,
                       redelivered_on_reconnect=redelivered))


def test_endpoint_node_restarted_mid_stream(dynalite, tmp_path: Path, running: Running) -> None:
    stack = Stack(dynalite.url, tmp_path, connection_workers=2)
    running.stoppables.append(stack)
    stack.start()
    clients = connect_clients(running, stack.ws_url)
    pusher = Pusher(clients, PUSHES, interval=0.01, keepalive=True, label="endpoint").start()
    pusher.wait_for(PUSHES // 3)
    stack.endpoint.stop()  # TERM: in-flight requests finish, then the master exits
    stack.endpoint.start(stack.log_dir / "endpoint.log")  # same port
    pusher.join()
    settle(clients)
    assert_pusher_clean(pusher)
    assert_clients_clean(clients)
    assert pusher.connection_errors > 0  # the pusher did hit the gap
    result = tally(pusher, clients)
    assert result.lost == 0, result.lost_versions[:10]
    assert result.wrong_data == []
    report(result.line("endpoint-restart", push_connection_errors=pusher.connection_errors,
                       push_503=len(pusher.refusals), extras=result.extras))


# ---- a loss found while building these scenarios -------------------------------------


def test_push_stored_after_a_later_stamped_one_was_acked_is_still_delivered(
        dynalite, tmp_path: Path, running: Running) -> None:
    """A push held up at a slow node must not fall below the bookmark of a later one.

    Found by this suite: the sort key used to be taken when the request
    arrived, so a message stored after a later one was delivered and acked
    sat below the bookmark and was never read. It is now stamped when stored.
    """
    stack = Stack(dynalite.url, tmp_path)
    running.stoppables.append(stack)
    stack.start()
    slow_node = FakeNode()  # a connection node that answers the first PUT /push slowly
    running.stoppables.append(slow_node)
    first = PushClient(stack.ws_url)
    uaid = first.hello()["uaid"]
    endpoint = first.register(str(uuid4()))["pushEndpoint"]
    first.close()
    time.sleep(0.2)
    connected_at = stack.storage.get_user(uaid).connected_at + 1
    assert stack.storage.claim_user(User(uaid=uaid), slow_node.url, connected_at)[0]
    held, release = threading.Event(), threading.Event()

    def hold_first_push(path: str) -> None:
        if path.startswith("/push") and not held.is_set():
            held.set()
            release.wait(10)

    slow_node.before_answer = hold_first_push
    slow_node.answers["/push"] = 404  # "client not connected": the endpoint stores the message
    # Connection: close, or an idle keep-alive connection holds the endpoint's stop for its graceful timeout.
    headers = {"TTL": "600", "Content-Encoding": "aes128gcm", "Connection": "close"}
    earlier: list[requests.Response] = []
    sender = threading.Thread(target=lambda: earlier.append(
        requests.post(endpoint, data=b"earlier", headers=headers, timeout=20)))
    sender.start()
    assert held.wait(10)  # push A is stamped and waits at the slow node
    later = requests.post(endpoint, data=b"later", headers=headers, timeout=10)  # push B: stamped after A, stored first
    assert later.status_code == 201

    client = PushClient(stack.ws_url)  # the browser comes back, drains B and acks it: bookmark = B's stamp
    assert client.hello(uaid)["uaid"] == uaid
    notification = client.receive()
    assert notification["version"] == later.headers["Location"].rsplit("/m/", 1)[1]
    client.ack(notification)
    client.send({})
    assert client.receive() == "{}"

    release.set()  # A is now stored, with a sort key below the bookmark
    sender.join(20)
    assert earlier and earlier[0].status_code == 201
    version = earlier[0].headers["Location"].rsplit("/m/", 1)[1]
    client.ws.settimeout(3)
    received = []
    try:
        while True:
            message = client.receive()
            if isinstance(message, dict) and message.get("messageType") == "notification":
                received.append(message["version"])
                client.ack(message)
    except Exception:  # noqa: BLE001 - the read timeout ends the wait
        pass
    client.close()
    again = PushClient(stack.ws_url)  # not even a fresh connection gets it
    again.hello(uaid)
    again.ws.settimeout(2)
    try:
        while True:
            message = again.receive()
            if isinstance(message, dict) and message.get("messageType") == "notification":
                received.append(message["version"])
    except Exception:  # noqa: BLE001
        pass
    again.close()
    # The cause, for the failure message: A is in storage, below the bookmark B's drain wrote.
    bookmark, _ = stack.storage.fetch_topic_messages(User(uaid=uaid))
    _, stored = stack.storage.fetch_timestamp_messages(User(uaid=uaid), None, limit=100)
    stamps = {m.version: m.sortkey_timestamp for m in stored}
    assert version in received, (
        f"accepted (201) push never delivered: stored={version in stamps} sortkey={stamps.get(version)} "
        f"bookmark={bookmark} (B's sortkey {stamps.get(notification['version'])})")
