"""A real UDP statsd receiver for tests that count what nodes report.

Point ``AUTOPUSH_STATSD_HOST``/``_PORT`` at it with ``AUTOPUSH_STATSD_TAGS=true``
(``settings()``); every datagram is kept, so a test can ask how often a
counter was sent with given tags.
"""

from __future__ import annotations

import socket
import threading
import time


class StatsdSink:
    def __init__(self) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self._lines: list[str] = []
        self._lock = threading.Lock()
        self._running = True
        self._thread = threading.Thread(target=self._receive, daemon=True)
        self._thread.start()

    def settings(self) -> dict[str, str]:
        port = str(self._sock.getsockname()[1])
        return {"AUTOPUSH_STATSD_HOST": "127.0.0.1", "AUTOPUSH_STATSD_PORT": port, "AUTOPUSH_STATSD_TAGS": "true"}

    def count(self, name: str, **tags: str) -> int:
        """The sum of counter ``name`` (with its prefix) sent with at least these tags."""
        return sum(int(value) for value in self._values(name, "c", tags))

    def timings(self, name: str, **tags: str) -> list[float]:
        """The values of timer ``name`` (``|ms``) sent with at least these tags, in arrival order."""
        return [float(value) for value in self._values(name, "ms", tags)]

    def _values(self, name: str, kind: str, tags: dict[str, str]) -> list[str]:
        """The value fields of ``name:<value>|<kind>[|#tags]`` lines carrying at least ``tags``."""
        wanted = {f"{key}:{value}" for key, value in tags.items()}
        with self._lock:
            lines = list(self._lines)
        found = []
        for line in lines:
            metric, _, rest = line.partition(":")
            value, _, tail = rest.partition(f"|{kind}")
            if metric != name or rest == value or (tail and not tail.startswith("|")):
                continue
            sent_tags = set(tail.partition("|#")[2].split(",")) if "|#" in tail else set()
            if wanted <= sent_tags:
                found.append(value)
        return found

    def tag_values(self, name: str, key: str) -> set[str]:
        """Every value tag ``key`` had on metric ``name``."""
        with self._lock:
            lines = list(self._lines)
        values = set()
        for line in lines:
            if line.partition(":")[0] != name or "|#" not in line:
                continue
            for tag in line.partition("|#")[2].split(","):
                tag_key, _, value = tag.partition(":")
                if tag_key == key:
                    values.add(value)
        return values

    def wait_count(self, name: str, at_least: int, timeout: float = 5.0, **tags: str) -> int:
        """``count`` once it reaches ``at_least`` (UDP arrives a moment later), or at the deadline."""
        deadline = time.monotonic() + timeout
        while (found := self.count(name, **tags)) < at_least and time.monotonic() < deadline:
            time.sleep(0.05)
        return found

    def close(self) -> None:
        self._running = False
        self._thread.join(timeout=2)
        self._sock.close()

    def _receive(self) -> None:
        while self._running:
            try:
                data = self._sock.recv(65536)
            except OSError:
                continue
            with self._lock:
                self._lines.extend(data.decode("ascii", "replace").splitlines())
