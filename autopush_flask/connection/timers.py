"""The worker's timer wheel: clients filed by the second of their next timer duty
(docs/architecture.md#connection-node).

The node's tick (once a second) visits only the clients whose duty (hello
deadline, auto-ping, pong deadline) has fallen due, so an idle worker's
timer work follows the deadlines that fall due, not the number of clients.
Each client is filed in one slot (a set, keyed by the whole second of its
next duty), so rescheduling or leaving removes it at once: no stale entries,
nothing that keeps a closed client alive. That costs 75–100 bytes per
client (a set entry, two slots on the client; its due time is one of its
deadlines), about what a heap of ``(due, seq, client)`` entries costs, which
would also keep stale entries until they came up
(docs/performance.md#connection-memory).

A due duty is done at the first tick at or after its time, as when every
client was looked at on every tick: the slot of the current second is the
only one looked into entry by entry (its later entries wait for the next
tick), every earlier slot is due whole.
"""

from __future__ import annotations

import logging
import math
from typing import Protocol

log = logging.getLogger("autopush.connection")

TICK_SECONDS = 1.0


class Timed(Protocol):
    """A client with timer duties (``transport.ClientConnection``)."""

    # Its next duty (monotonic seconds) and the slot it is filed in; only the wheel writes them.
    timer_due: float | None
    timer_slot: int | None

    def tick(self, now: float) -> float | None:
        """Do what is due at ``now``; when it next needs a visit (``None``: never)."""
        ...


class TimerWheel:
    """Clients by the whole second of their next timer duty (see the module doc)."""

    __slots__ = ("_slots", "_next", "_count")

    def __init__(self, now: float) -> None:
        self._slots: dict[int, set[Timed]] = {}
        self._next = math.floor(now)  # the first slot not yet visited whole
        self._count = 0

    def __len__(self) -> int:
        """Clients filed."""
        return self._count

    def schedule(self, item: Timed, due: float | None) -> None:
        """File ``item`` for a visit at the first tick at or after ``due`` (``None`` cancels)."""
        slot = item.timer_slot
        if due is None:
            if slot is not None:
                self._remove(item, slot)
            item.timer_due = item.timer_slot = None
            return
        key = max(math.floor(due), self._next)  # a past due time: the next tick
        item.timer_due = due
        if slot == key:
            return
        if slot is not None:
            self._remove(item, slot)
        members = self._slots.get(key)
        if members is None:
            members = self._slots[key] = set()
        members.add(item)
        item.timer_slot = key
        self._count += 1

    def cancel(self, item: Timed) -> None:
        self.schedule(item, None)

    def _remove(self, item: Timed, slot: int) -> None:
        members = self._slots.get(slot)
        if members is not None and item in members:
            members.discard(item)
            self._count -= 1
            if not members:
                del self._slots[slot]

    def pop_due(self, now: float) -> list[Timed]:
        """Take out every item due at ``now`` (its ``timer_due`` at or before it)."""
        current = math.floor(now)
        due: list[Timed] = []
        slots = self._slots
        if len(slots) < current - self._next:  # after a long pause: fewer slots than seconds
            keys = sorted(key for key in slots if key < current)
        else:
            keys = [key for key in range(self._next, current) if key in slots]
        for key in keys:
            due.extend(slots.pop(key))
        if current > self._next:
            self._next = current
        members = slots.get(current)
        if members:
            ready = [item for item in members if _due_time(item) <= now]
            if ready:
                members.difference_update(ready)
                if not members:
                    del slots[current]
                due.extend(ready)
        self._count -= len(due)
        for item in due:
            item.timer_slot = None
        return due

    def run(self, now: float) -> int:
        """Visit the items due at ``now`` and file them again for their next duty; how many were visited.

        An item that returns ``now`` (or any past time) is visited again on
        the next tick. One item's failure is logged and does not stop the
        others; that item too is visited again on the next tick.
        """
        due = self.pop_due(now)
        for item in due:
            try:
                following = item.tick(now)
            except Exception:  # one client must not stop the timers
                log.exception("timer failed")
                following = now
            self.schedule(item, following)
        return len(due)


def _due_time(item: Timed) -> float:
    """The due time of a filed item (always set while it is filed)."""
    due = item.timer_due
    return math.inf if due is None else due
