"""Which message tables exist: one fixed table, or one per month
(docs/architecture.md#dynamodb, docs/architecture.md#monthly-rotation).

In rotation mode every node keeps a list of known monthly tables and a
"current" table, refreshed every 60 seconds; a router record's
``current_month`` names the table holding that user's data.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
from collections.abc import Callable

from autopush_flask.db.dynamodb.tables import TableAdmin

REFRESH_SECONDS = 60.0
LAST_CONNECT_RANDOM_MAX = 10


def month_shift(year: int, month: int, delta: int) -> tuple[int, int]:
    index = year * 12 + (month - 1) + delta
    return index // 12, index % 12 + 1


def monthly_table_name(prefix: str, year: int, month: int) -> str:
    return f"{prefix}_{year:04d}_{month:02d}"


def table_month(prefix: str, name: str) -> tuple[int, int] | None:
    """The (year, month) of a monthly table name, ``None`` for other names."""
    head = f"{prefix}_"
    if not name.startswith(head):
        return None
    year, _, month = name[len(head) :].partition("_")
    if len(year) != 4 or len(month) != 2 or not (year.isdigit() and month.isdigit()):
        return None
    return int(year), int(month)


def last_connect_value(now: dt.datetime, draw: Callable[[int, int], int] = random.randint) -> int:
    """``YYYYMMHHRRRR``: month, local hour and a random 0–10 (docs/architecture.md#records-and-messages)."""
    return int(f"{now.year:04d}{now.month:02d}{now.hour:02d}{draw(0, LAST_CONNECT_RANDOM_MAX):04d}")


def connected_this_month(last_connect: int | None, now: dt.datetime) -> bool:
    return last_connect is not None and str(last_connect).startswith(f"{now.year:04d}{now.month:02d}")


class MessageTables:
    """The known message tables and the current one."""

    def __init__(
        self,
        admin: TableAdmin,
        prefix: str,
        rotation: bool,
        create: bool,
        capacity: tuple[int, int],
        clock: Callable[[], dt.datetime] = dt.datetime.now,
    ) -> None:
        self._admin = admin
        self.prefix = prefix
        self.rotation = rotation
        self._create = create
        self._capacity = capacity
        self._clock = clock
        self._lock = threading.Lock()
        self._last_refresh = float("-inf")
        self.current = prefix
        self.known: list[str] = [prefix]

    def name_for(self, year: int, month: int) -> str:
        return monthly_table_name(self.prefix, year, month) if self.rotation else self.prefix

    def is_known(self, name: str | None) -> bool:
        return name is not None and name in self.known

    def start(self) -> list[str]:
        """Create (when configured) and list the tables a node starts with.

        Returns the names of tables created.
        """
        if not self.rotation:
            return [self.prefix] if self._ensure(self.prefix) else []
        now = self._clock()
        months = [month_shift(now.year, now.month, -1), (now.year, now.month)]
        if self._tomorrow_is_next_month(now):
            months.append(month_shift(now.year, now.month, 1))
        created = [self.name_for(*m) for m in months if self._ensure(self.name_for(*m))]
        self.known = [self.name_for(*m) for m in months if self._exists(self.name_for(*m))]
        self.current = self.name_for(now.year, now.month)
        self._last_refresh = time.monotonic()
        return created

    def refresh(self) -> None:
        """Every-60-seconds duty: add next month's table, switch at the month's turn."""
        if not self.rotation:
            return
        now = self._clock()
        if self._tomorrow_is_next_month(now):
            self._add(self.name_for(*month_shift(now.year, now.month, 1)))
        this_month = self.name_for(now.year, now.month)
        if this_month != self.current:
            self._add(this_month)
            self.current = this_month

    def maybe_refresh(self) -> bool:
        """Refresh when 60 seconds passed since the last time; cheap to call often."""
        with self._lock:
            if time.monotonic() - self._last_refresh < REFRESH_SECONDS:
                return False
            self._last_refresh = time.monotonic()
        self.refresh()
        return True

    def _add(self, name: str) -> None:
        self._ensure(name)
        if name not in self.known and self._exists(name):
            self.known = [*self.known, name]

    def _ensure(self, name: str) -> bool:
        return self._create and self._admin.ensure_message_table(name, *self._capacity)

    def _exists(self, name: str) -> bool:
        return self._admin.describe(name) is not None

    @staticmethod
    def _tomorrow_is_next_month(now: dt.datetime) -> bool:
        return (now + dt.timedelta(days=1)).month != now.month
