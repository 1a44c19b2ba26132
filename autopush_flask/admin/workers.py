"""Every worker's part of the admin view, gathered over the signed router API.

Each connection worker answers ``GET /admin/worker`` on its router port
(``node_api.py``, signed like every router request) with ``worker_report``:
its slot, pid, ``node_id``, client counts, Megaphone versions and recent
errors, never a UAID or a payload. The worker serving the admin view asks
every router port of its master (``AUTOPUSH_ROUTER_PORT`` + 0 … 2 × workers − 1:
during a reload the new workers take the slots after the old ones,
docs/architecture.md#connection-node) at once, with short timeouts, and
answers for itself without a request. A port that refuses the connection has
no worker; one that fails otherwise is shown as unreachable.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import gevent
import requests

from autopush_flask.config import WORKER_COUNT_VARIABLE
from autopush_flask.node_auth import RouterRequestKeys

WORKER_PATH = "/admin/worker"
# Seconds a sibling has to answer once connected; the whole tour ends then too.
ANSWER_SECONDS = 2.0
# A worker's report is a few KiB (50 errors at most): anything far larger is not one.
MAX_REPORT_BYTES = 1024 * 1024
PROCESS_STARTED = time.time()


def worker_count(environ: Mapping[str, str] | None = None) -> int:
    """The workers the master keeps (``AUTOPUSH_WORKER_COUNT``, set by gunicorn.conf.py), else 1."""
    value = (os.environ if environ is None else environ).get(WORKER_COUNT_VARIABLE, "")
    return int(value) if value.isdigit() and int(value) > 0 else 1


def worker_report(
    slot: int,
    node_id: str,
    clients: int,
    connections: int,
    stopping: bool,
    broadcasts: Mapping[str, str],
    recent_errors: Any,
) -> dict[str, Any]:
    """One worker's state as ``GET /admin/worker`` answers it."""
    return {
        "slot": slot,
        "pid": os.getpid(),
        "node_id": node_id,
        "clients": clients,
        "connections": connections,
        "stopping": stopping,
        "uptime_seconds": int(time.time() - PROCESS_STARTED),
        "broadcasts": dict(sorted(broadcasts.items())),
        "errors_total": recent_errors.total,
        "recent_errors": recent_errors.entries(),
    }


@dataclass
class WorkerTour:
    """Asks every router port of this master for its worker's report."""

    own_slot: int
    workers: int
    node_id_of: Callable[[int], str]
    request_keys: RouterRequestKeys
    http: requests.Session
    verify: str | bool
    connect_timeout: float
    local_report: Callable[[], dict[str, Any]]

    def slots(self) -> range:
        return range(max(2 * self.workers, self.own_slot + 1))

    def run(self) -> dict[str, Any]:
        """``workers`` (answered, by slot), ``unreachable`` (slot, node_id, error) and ``absent_slots``."""
        pending = {slot: gevent.spawn(self._ask, slot) for slot in self.slots() if slot != self.own_slot}
        gevent.joinall(list(pending.values()), timeout=self.connect_timeout + ANSWER_SECONDS + 0.5)
        answers: dict[int, tuple[str, Any]] = {self.own_slot: ("ok", self.local_report())}
        for slot, greenlet in pending.items():
            if greenlet.ready() and greenlet.successful():
                answers[slot] = greenlet.value
            else:
                greenlet.kill(block=False)
                answers[slot] = ("unreachable", "no answer in time")
        workers, unreachable, absent = [], [], []
        for slot in sorted(answers):
            state, value = answers[slot]
            if state == "ok":
                workers.append(value)
            elif state == "absent":
                absent.append(slot)
            else:
                unreachable.append({"slot": slot, "node_id": self.node_id_of(slot), "error": value})
        return {"workers": workers, "unreachable": unreachable, "absent_slots": absent}

    def _ask(self, slot: int) -> tuple[str, Any]:
        url = self.node_id_of(slot) + WORKER_PATH
        headers = dict(self.request_keys.sign("GET", WORKER_PATH))
        try:
            with self.http.get(
                url,
                headers=headers,
                timeout=(self.connect_timeout, ANSWER_SECONDS),
                verify=self.verify,
                stream=True,
                allow_redirects=False,
            ) as response:
                if response.status_code != 200:
                    return "unreachable", f"HTTP {response.status_code}"
                body = response.raw.read(MAX_REPORT_BYTES + 1, decode_content=True)
        except requests.ConnectionError as error:
            if _refused(error):
                return "absent", None
            return "unreachable", type(error).__name__
        except requests.RequestException as error:
            return "unreachable", type(error).__name__
        if len(body) > MAX_REPORT_BYTES:
            return "unreachable", "answer too large"
        try:
            report = json.loads(body)
        except ValueError:
            return "unreachable", "answer not JSON"
        if not isinstance(report, dict) or report.get("slot") != slot:
            return "unreachable", "not a worker report"
        return "ok", report


def _refused(error: requests.ConnectionError) -> bool:
    """Whether nothing listens there.

    requests wraps urllib3's MaxRetryError, whose reason was raised from the OS error.
    """
    retry_error = error.args[0] if error.args else None
    reason = getattr(retry_error, "reason", None)
    return isinstance(getattr(reason, "__cause__", None), ConnectionRefusedError)
