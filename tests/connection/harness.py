"""Drive sessions without sockets: storage effects are performed, the rest recorded.

The same ``drive`` loop the transport uses runs every handler; storage calls
go to the store the test gives (the in-memory one, or dynalite where a test
needs DynamoDB), everything else is recorded for assertions.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from typing import Any

from autopush_flask.connection.broadcast import BroadcastRegistry
from autopush_flask.connection.effects import (
    Close,
    Identify,
    NodeRequest,
    PingFrame,
    Retry,
    Schedule,
    Send,
    Sleep,
    drive,
)
from autopush_flask.connection.registry import ClientRegistry
from autopush_flask.connection.session import NodeContext, Session
from autopush_flask.connection.storage_ops import STORAGE_OPS, run_storage
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Notification, Storage
from autopush_flask.db.models import SortKeyClock
from autopush_flask.metrics import RecordingMetrics

NODE_ID = "http://node-a:8081"


class FakeClock:
    def __init__(self, start: float | None = None) -> None:
        # Today by default: the store skips messages expired by its own (real) clock.
        self.now = float(int(time.time())) if start is None else start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Node:
    """One connection node's shared state, as a worker would hold it."""

    def __init__(
        self, storage: Storage, keys: CryptoKeys, node_id: str = NODE_ID, msg_limit: int = 150,
        auto_ping_interval: float = 300.0, clock: FakeClock | None = None,
        metrics: RecordingMetrics | None = None,
    ) -> None:
        self.clock = clock or FakeClock()
        self.metrics = metrics or RecordingMetrics()
        self.broadcasts = BroadcastRegistry()
        self.registry = ClientRegistry()
        self.ctx = NodeContext(
            node_id=node_id, env="testing", endpoint_url="http://push.test",
            msg_limit=msg_limit, auto_ping_interval=auto_ping_interval, storage=storage,
            crypto_keys=keys, metrics=self.metrics, broadcasts=self.broadcasts,
            clock=self.clock, monotonic=self.clock, sortkeys=SortKeyClock(self.clock),
        )
        self.retries: list[Retry] = []  # the worker's retry queue

    def run_retries(self) -> None:
        """What the worker's retry queue does: try each queued write again (once)."""
        pending, self.retries = self.retries, []
        for retry in pending:
            run_storage(self.ctx.storage, retry.op)

    def client(self) -> Client:
        return Client(self)


class Client:
    """A test client whose outputs are the effects its session yields."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.session = Session(node.ctx, user_agent="test")
        self.sent: list[Any] = []
        self.closed: Close | None = None
        self.requests: list[NodeRequest] = []
        self.sleeps: list[float] = []
        self.scheduled: list[Schedule] = []
        self.pings = 0
        self.db_calls: list[str] = []

    @property
    def connected_at(self) -> int:
        return self.session.connected_at

    def run(self, handler: Generator) -> list[Any]:
        before = len(self.sent)
        drive(handler, self.perform)
        return self.sent[before:]

    def send(self, message: dict | str) -> list[Any]:
        text = message if isinstance(message, str) else json.dumps(message)
        return self.run(self.session.on_text(text))

    def hello(self, uaid: str | None = None, **extra: Any) -> dict:
        message = {"messageType": "hello", "use_webpush": True, **extra}
        if uaid is not None:
            message["uaid"] = uaid
        return self.send(message)[0]

    def register(self, channel_id: str, key: str | None = None) -> dict:
        message = {"messageType": "register", "channelID": channel_id}
        if key is not None:
            message["key"] = key
        return self.send(message)[-1]

    def ack(self, *notifications: dict) -> list[Any]:
        updates = [{"channelID": n["channelID"], "version": n["version"], "code": 100} for n in notifications]
        return self.send({"messageType": "ack", "updates": updates})

    def deliver(self, notification: Notification) -> list[Any]:
        return self.run(self.session.on_notification(notification))

    def disconnect(self, queued: list[Notification] | None = None) -> None:
        self.node.registry.unregister(self.session.uaid or "", self)
        self.run(self.session.on_disconnect(queued or []))

    def fire_scheduled(self) -> list[Any]:
        pending, self.scheduled = self.scheduled, []
        out = []
        for scheduled in pending:
            out += self.run(scheduled.handler())
        return out

    def notifications(self) -> list[dict]:
        return [m for m in self.sent if isinstance(m, dict) and m.get("messageType") == "notification"]

    def perform(self, effect: Any) -> Any:
        if isinstance(effect, STORAGE_OPS):
            self.db_calls.append(effect.name)
            return run_storage(self.node.ctx.storage, effect)
        if isinstance(effect, Retry):
            self.node.retries.append(effect)
        if isinstance(effect, Send):
            payload = effect.payload
            self.sent.append(json.loads(json.dumps(payload)) if isinstance(payload, dict) else payload)
        elif isinstance(effect, Close):
            self.closed = effect
            self.node.registry.unregister(self.session.uaid or "", self)
        elif isinstance(effect, NodeRequest):
            self.requests.append(effect)
        elif isinstance(effect, Sleep):
            self.sleeps.append(effect.seconds)
        elif isinstance(effect, Schedule):
            self.scheduled.append(effect)
        elif isinstance(effect, PingFrame):
            self.pings += 1
        elif isinstance(effect, Identify):
            loser = self.node.registry.register(self.session.uaid, self)
            if loser is not None:
                loser.run(loser.session.on_evict(loser.connected_at))
        return None
