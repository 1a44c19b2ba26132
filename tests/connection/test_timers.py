"""The timer wheel: a tick visits the clients with a duty due, and only those,
at the same ticks as a walk over every client each second would.

docs/architecture.md#connection-node
"""

from __future__ import annotations

import logging
import random
import time

import pytest

from autopush_flask.config import CONNECTION, load_settings
from autopush_flask.connection.broadcast import BroadcastRegistry
from autopush_flask.connection.effects import Identify, PingFrame
from autopush_flask.connection.retries import RetryQueue
from autopush_flask.connection.session import NodeContext
from autopush_flask.connection.timers import TimerWheel
from autopush_flask.connection.transport import ClientConnection
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db.memory import MemoryStorage
from autopush_flask.metrics import NullMetrics

KEY = CryptoKeys.generate_key()


class Item:
    """A client that only counts its visits and says when it is next due."""

    def __init__(self, due: float | None) -> None:
        self.timer_due: float | None = None
        self.timer_slot: int | None = None
        self.due = due
        self.visits: list[float] = []

    def tick(self, now: float) -> float | None:
        self.visits.append(now)
        return self.due if self.due is not None and self.due > now else None


def ticks(start: float, count: int, rng: random.Random) -> list[float]:
    """Tick times as the node's loop makes them: a little over a second apart."""
    times, now = [], start
    for _ in range(count):
        now += 1.0 + rng.random() * 0.05
        times.append(now)
    return times


def test_idle_items_are_not_visited() -> None:
    wheel = TimerWheel(1000.0)
    items = [Item(1300.0 + i % 7) for i in range(10_000)]
    for item in items:
        wheel.schedule(item, item.due)
    assert len(wheel) == 10_000
    visits = [wheel.run(1000.0 + second) for second in range(1, 300)]
    assert sum(visits) == 0
    assert wheel.run(1300.5) == sum(1 for item in items if item.due <= 1300.5)
    assert sum(wheel.run(1300.0 + s) for s in range(1, 8)) == 10_000 - visits_at(items, 1300.5)


def visits_at(items: list[Item], now: float) -> int:
    return sum(1 for item in items if item.due is not None and item.due <= now)


@pytest.mark.parametrize("seed", range(5))
def test_each_due_time_is_met_at_the_first_tick_at_or_after_it(seed: int) -> None:
    """The same tick as the old walk over every client: the first with ``now >= due``."""
    rng = random.Random(seed)
    start = 5000.0 + rng.random()
    wheel = TimerWheel(start)
    items = [Item(start + rng.random() * 40) for _ in range(500)]
    items += [Item(start - rng.random() * 3) for _ in range(20)]  # already due when filed
    for item in items:
        wheel.schedule(item, item.due)
    times = ticks(start, 45, rng)
    for now in times:
        wheel.run(now)
    for item in items:
        assert item.visits == [next(now for now in times if now >= item.due)]
    assert len(wheel) == 0


def test_rescheduling_and_cancelling_leave_no_stale_entries() -> None:
    wheel = TimerWheel(0.0)
    moved, cancelled, kept = Item(None), Item(None), Item(None)
    wheel.schedule(moved, 50.0)
    wheel.schedule(cancelled, 10.2)
    wheel.schedule(kept, 10.7)
    wheel.schedule(moved, 10.1)  # earlier, then later again: filed once
    wheel.schedule(moved, 20.0)
    wheel.cancel(cancelled)
    assert len(wheel) == 2
    for second in range(1, 60):
        wheel.run(float(second))
    assert moved.visits == [20.0] and kept.visits == [11.0] and cancelled.visits == []
    assert len(wheel) == 0 and wheel._slots == {}


def test_an_item_returning_now_is_visited_on_the_next_tick_and_a_failure_too(caplog) -> None:
    class Again(Item):
        def tick(self, now: float) -> float | None:
            self.visits.append(now)
            if len(self.visits) == 2:
                raise RuntimeError("boom")
            return now if len(self.visits) < 4 else None

    wheel = TimerWheel(0.0)
    item = Again(None)
    wheel.schedule(item, 0.5)
    caplog.set_level(logging.ERROR, logger="autopush")
    logger = logging.getLogger("autopush")
    attach = not logger.propagate  # once logging is set up, ``autopush`` does not propagate
    if attach:
        logger.addHandler(caplog.handler)
    try:
        for now in (0.4, 1.01, 1.02, 2.5, 3.6, 4.7):
            wheel.run(now)
    finally:
        if attach:
            logger.removeHandler(caplog.handler)
    assert item.visits == [1.01, 1.02, 2.5, 3.6]
    assert [r.message for r in caplog.records] == ["timer failed"]


def test_a_long_pause_visits_what_fell_due_meanwhile() -> None:
    wheel = TimerWheel(0.0)
    items = [Item(float(due)) for due in (3, 10_000, 2_000_000)]
    for item in items:
        wheel.schedule(item, item.due)
    assert wheel.run(5_000_000.0) == 3


# ---- real clients: what they file, and idle clients cost no visits ----------------------------


class FakeSocket:
    def __init__(self) -> None:
        self.last_pong = 0.0
        self.pings = 0

    def ping(self) -> None:
        self.pings += 1


class Host:
    """What a ``ClientConnection`` asks of its node, with a real wheel."""

    def __init__(self, **variables: str) -> None:
        self.settings = load_settings(CONNECTION, {"AUTOPUSH_CRYPTO_KEYS": KEY, **variables})
        storage = MemoryStorage(self.settings, NullMetrics())
        self.ctx = NodeContext(
            node_id="http://node-a:8081",
            env="testing",
            endpoint_url="http://push.test",
            msg_limit=150,
            auto_ping_interval=self.settings.auto_ping_interval,
            storage=storage,
            crypto_keys=CryptoKeys([KEY]),
            metrics=NullMetrics(),
            broadcasts=BroadcastRegistry(),
        )
        self.retries = RetryQueue(lambda op: None, lambda uaid: None, NullMetrics(), 10)
        self.timers = TimerWheel(time.monotonic())

    def encode(self, payload: dict) -> str:
        raise AssertionError("nothing is sent")

    def call_storage(self, op: object) -> None:
        raise AssertionError("no storage")

    def node_request(self, method: str, url: str) -> None:
        raise AssertionError("no node requests")

    def add(self, client: ClientConnection) -> None:
        self.timers.schedule(client, client.next_duty())

    def identify(self, client: ClientConnection) -> None:
        pass

    def unregister(self, client: ClientConnection) -> None:
        self.timers.cancel(client)


def connect(host: Host) -> ClientConnection:
    client = ClientConnection(host, FakeSocket(), "test")  # type: ignore[arg-type]
    host.add(client)
    return client


def identify(client: ClientConnection) -> None:
    """As hello does it: ``Identify``, then the state."""
    client.perform(Identify())
    client.session.state = "identified"


def test_10000_idle_identified_clients_cost_no_visits_until_their_ping_is_due() -> None:
    host = Host(AUTOPUSH_HELLO_TIMEOUT="5", AUTOPUSH_AUTO_PING_INTERVAL="300")
    start = time.monotonic()
    clients = [connect(host) for _ in range(10_000)]
    for client in clients:
        identify(client)
    assert {client.timer_due for client in clients} == {client.next_ping_at for client in clients}
    visits = [host.timers.run(start + second + 0.5) for second in range(1, 298)]
    assert sum(visits) == 0
    for client in clients[:10]:
        host.unregister(client)
    assert len(host.timers) == 9_990
    due = sum(host.timers.run(start + second + 0.5) for second in range(298, 303))
    assert due == 9_990


def test_hello_deadline_then_auto_ping_then_pong_deadline() -> None:
    host = Host(AUTOPUSH_HELLO_TIMEOUT="5", AUTOPUSH_AUTO_PING_INTERVAL="60", AUTOPUSH_AUTO_PING_TIMEOUT="4")
    silent, answering = connect(host), connect(host)
    assert silent.timer_due == silent.hello_deadline
    identify(answering)
    assert answering.timer_due == answering.next_ping_at
    hello_due = host.timers.pop_due(silent.hello_deadline)  # type: ignore[arg-type]
    assert hello_due == [silent]
    now = silent.hello_deadline
    assert silent.tick(now) == now  # the timeout handler runs; looked at again on the next tick
    # A ping sent: filed for its pong's deadline, and for the next ping once the pong came.
    answering.perform(PingFrame())
    pong_due = answering.ping_sent_at + 4  # type: ignore[operator]
    assert answering.timer_due == pong_due
    answering.ws.last_pong = answering.ping_sent_at + 0.1  # type: ignore[attr-defined, operator]
    assert answering.tick(pong_due) == answering.next_ping_at
    # No pong: the timeout handler is started once due, then looked at each tick.
    answering.ws.last_pong = 0.0  # type: ignore[attr-defined]
    assert answering.tick(pong_due - 0.5) == pong_due
    assert answering.tick(pong_due + 0.1) == pong_due + 0.1
