"""A per-worker queue that retries storage writes a session could not make.

Deleting an acknowledged message, moving a bookmark and storing a client's
unacknowledged direct notifications when it leaves are writes nobody waits
for: the client has moved on, or gone. A failure used to be logged and
forgotten, and for direct notifications that meant losing them. Each such
write is now retried in the background until it is pointless: a message's
TTL for anything about messages, a few minutes for a bookmark (a bookmark
left behind only means re-reading messages that are already deleted).

One greenlet works through the queue in order. After a failure the whole
queue waits (1 s, doubling up to 30 s, with jitter) rather than each job
on its own timer: a failure almost always means DynamoDB is down or
throttling, and every job would fail the same way. The queue is bounded by
the notifications it holds (``AUTOPUSH_RETRY_QUEUE_SIZE``; a notification
takes at most ~5.6 KiB, so the default 10,000 bounds it near 55 MiB per
worker); what does not fit, runs out of time, or is refused by DynamoDB is
counted (``storage.retry.given_up``) and logged with its message ids.
"""

from __future__ import annotations

import logging
import random
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import Event

from autopush_flask import tracking
from autopush_flask.connection import greenlets
from autopush_flask.connection.effects import Retry
from autopush_flask.connection.storage_ops import SaveLateMessages, StorageOp
from autopush_flask.db import StorageError
from autopush_flask.logging import log_fields

log = logging.getLogger("autopush.connection")

FIRST_PAUSE_SECONDS = 1.0
LONGEST_PAUSE_SECONDS = 30.0
GIVEN_UP_METRIC = "storage.retry.given_up"
QUEUED_METRIC = "storage.retry.queued"


@dataclass(slots=True)
class RetryJob:
    """A session's ``Retry`` effect as the queue holds it: what to write, and how often it was tried."""

    retry: Retry
    attempts: int = field(default=0)

    @property
    def operation(self) -> str:
        return self.retry.operation

    @property
    def uaid(self) -> str:
        return self.retry.uaid

    @property
    def message_ids(self) -> tuple[str, ...]:
        return self.retry.message_ids

    @property
    def weight(self) -> int:
        return max(1, len(self.message_ids))


def report_given_up(metrics: Any, operation: str, reason: str, uaid: str, message_ids: Sequence[str]) -> None:
    """Count and log a write the node will not make (``message_ids`` are shortened in the log)."""
    count = max(1, len(message_ids))
    metrics.increment(GIVEN_UP_METRIC, count, tags={"operation": operation, "reason": reason})
    log.error(
        "storage write given up",
        extra=log_fields(
            operation=operation, reason=reason, count=count, message_ids=list(message_ids), uaid_hash=uaid
        ),
    )


class RetryQueue:
    """The retry queue of one connection worker (see the module doc)."""

    def __init__(
        self,
        run_storage: Callable[[StorageOp], Any],
        notify_node: Callable[[str], None],
        metrics: Any,
        capacity: int,
        clock: Callable[[], float] = time.time,
        tracker: tracking.DeliveryTracker | None = None,
    ) -> None:
        self._run_storage = run_storage
        self._notify_node = notify_node
        self._metrics = metrics
        self._tracker = tracker or tracking.DeliveryTracker(metrics)
        self.capacity = capacity
        self._clock = clock
        self._jobs: deque[RetryJob] = deque()
        self.weight = 0
        self._wake = Event()
        self._greenlet: gevent.Greenlet | None = None
        self._current: RetryJob | None = None  # the job being tried by the background loop

    def __len__(self) -> int:
        return len(self._jobs)

    def add(self, job: RetryJob) -> bool:
        """Queue ``job``; ``False`` (counted and logged) when the queue is full."""
        if self.weight + job.weight > self.capacity:
            self._give_up(job, "queue_full")
            return False
        self._jobs.append(job)
        self.weight += job.weight
        self._metrics.increment(QUEUED_METRIC, tags={"operation": job.operation})
        self._wake.set()
        return True

    def start(self) -> gevent.Greenlet:
        self._greenlet = gevent.spawn(self._run_forever)
        return self._greenlet

    def _run_forever(self) -> None:
        pause = FIRST_PAUSE_SECONDS
        while True:
            if not self._jobs:
                self._wake.clear()
                self._wake.wait()
                continue
            job = self._current = self._take()
            finished = self._attempt(job)
            self._current = None
            if finished:
                pause = FIRST_PAUSE_SECONDS
                gevent.sleep(0)
            else:
                self._put_back(job)
                gevent.sleep(random.uniform(pause / 2, pause))
                pause = min(pause * 2, LONGEST_PAUSE_SECONDS)

    def _give_up(self, job: RetryJob, reason: str) -> None:
        report_given_up(self._metrics, job.operation, reason, job.uaid, job.message_ids)
        self._track(job, tracking.GIVEN_UP)

    def _track(self, job: RetryJob, milestone: str) -> None:
        """Notifications stored late, or given up, are delivery milestones (docs/operations.md#delivery-tracking)."""
        if isinstance(job.retry.op, SaveLateMessages):
            for notification in job.retry.op.notifications:
                self._tracker.milestone(milestone, notification.sender)

    def _take(self) -> RetryJob:
        job = self._jobs.popleft()
        self.weight -= job.weight
        return job

    def _put_back(self, job: RetryJob) -> None:
        self._jobs.append(job)
        self.weight += job.weight

    def _attempt(self, job: RetryJob) -> bool:
        """One try of ``job``: ``True`` when it is done with (written, or given up), ``False`` to retry."""
        if self._clock() >= job.retry.give_up_at:
            self._give_up(job, "expired")
            return True
        job.attempts += 1
        try:
            self._run_storage(job.retry.op)
        except StorageError as error:
            if error.retryable:
                return False
            log.warning(f"{job.operation} failed", extra=log_fields(error=str(error), uaid_hash=job.uaid))
            self._give_up(job, "refused")
            return True
        except Exception:  # a bug in one job must not stop the queue
            log.exception("background task failed")
            self._give_up(job, "error")
            return True
        self._track(job, tracking.STORED)
        if job.retry.notify:
            greenlets.spawn(self._notify_node, job.uaid)
        return True

    def flush(self, seconds: float) -> None:
        """At shutdown: stop the background loop and try the jobs once more within
        ``seconds``, until one fails (storage is still unwell); report the rest as given up."""
        if self._greenlet is not None:
            self._greenlet.kill(block=True, timeout=1.0)
            self._greenlet = None
        if self._current is not None:  # interrupted mid-try: it is still owed
            self._jobs.appendleft(self._current)
            self.weight += self._current.weight
            self._current = None
        deadline = time.monotonic() + seconds
        while self._jobs:
            job = self._take()
            remaining = deadline - time.monotonic()
            done = False
            if remaining > 0:
                with gevent.Timeout(remaining, False):
                    done = self._attempt(job)
            if not done:
                self._put_back(job)
                break
        while self._jobs:
            job = self._take()
            self._give_up(job, "shutdown")
