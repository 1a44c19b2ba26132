"""What a session asks its transport to do (docs/architecture.md#the-session-generators-of-effects).

Session handlers are generators that yield these, and the storage
operations of ``storage_ops.py``; the transport performs each one and sends
back its result (or throws its exception) into the generator. Unit tests
perform them without sockets.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from autopush_flask.connection.storage_ops import StorageOp
from autopush_flask.db.errors import StorageError


@dataclass(frozen=True)
class Send:
    """Write one text frame; a dict is sent as JSON, a str as-is."""

    payload: dict | str


@dataclass(frozen=True)
class Close:
    """Send a close frame and end the session."""

    code: int
    reason: str = ""


@dataclass(frozen=True)
class Retry:
    """Hand a storage write that failed to the worker's retry queue (``retries.py``).

    It is tried again in the background until ``give_up_at`` (wall-clock
    seconds); ``message_ids`` are what is lost if it never lands (logged,
    shortened); with ``notify`` the UAID's node is asked to look at storage
    once it has landed.
    """

    op: StorageOp
    give_up_at: float
    uaid: str
    message_ids: tuple[str, ...] = ()
    notify: bool = False

    @property
    def operation(self) -> str:
        """The write's name in logs and metrics."""
        return self.op.name


@dataclass(frozen=True)
class NodeRequest:
    """Fire-and-forget HTTP call to another node's private API (``node_api.py``)."""

    method: str
    url: str


@dataclass(frozen=True)
class Sleep:
    """Block this session (not the worker) for a while: no input is read."""

    seconds: float


@dataclass(frozen=True)
class Schedule:
    """Call ``handler`` (a session method returning a generator) after ``delay`` seconds."""

    delay: float
    handler: Callable[[], Any]


@dataclass(frozen=True)
class Identify:
    """Enter the session in the node's client table (evicting an older duplicate)."""


@dataclass(frozen=True)
class PingFrame:
    """Send a WebSocket ping frame and expect a pong within the auto-ping timeout."""


Effect = Send | Close | StorageOp | Retry | NodeRequest | Sleep | Schedule | Identify | PingFrame


def drive(handler: Generator[Any, Any, None], perform: Callable[[Any], Any]) -> None:
    """Run a session handler to its end, performing each effect it yields.

    A ``StorageError`` raised while performing a storage operation is thrown back
    into the handler, which decides what the protocol says to do about it; any
    other exception is the transport's business and propagates.
    """
    result: Any = None
    error: StorageError | None = None
    while True:
        try:
            effect = handler.throw(error) if error is not None else handler.send(result)
        except StopIteration:
            return
        result, error = None, None
        try:
            result = perform(effect)
        except StorageError as failure:
            error = failure
