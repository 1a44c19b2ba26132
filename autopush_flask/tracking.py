"""Delivery tracking (docs/operations.md#delivery-tracking): the milestones a message passes, as metrics.

Every accepted message passes some of: ``accepted`` (the 201), then
``delivered_direct`` or ``stored`` (by the endpoint, or by a node whose
client left before acking), ``transmitted`` (sent to the client from
storage), ``acked`` (with the client's code), or it ends ``expired``,
``dropped_msg_limit`` (the UAID was reset with it unsent) or ``given_up``
(a node could not store it). Each is one increment of ``delivery.milestone``;
the time from acceptance to the ack is ``delivery.latency``.

With ``AUTOPUSH_SENDER_TAGS`` above 0 each also carries ``sender``: the
domain of the VAPID ``sub`` claim, so an operator can tell which application
server's messages go missing. A ``sub`` is whatever the sender writes, so
the tag's values are bounded (``SenderTags``): at most that many domains per
process, the first to reach ``SENDER_ADMIT_AFTER`` messages; the rest are
``other``, and messages without one ``none``.
"""

from __future__ import annotations

import re
from typing import Any

from autopush_flask.db.models import Notification

MILESTONE = "delivery.milestone"
LATENCY = "delivery.latency"

ACCEPTED = "accepted"
DELIVERED_DIRECT = "delivered_direct"
STORED = "stored"
TRANSMITTED = "transmitted"
ACKED = "acked"
EXPIRED = "expired"
DROPPED_MSG_LIMIT = "dropped_msg_limit"
GIVEN_UP = "given_up"
MILESTONES = (ACCEPTED, DELIVERED_DIRECT, STORED, TRANSMITTED, ACKED, EXPIRED, DROPPED_MSG_LIMIT, GIVEN_UP)

OTHER_SENDER = "other"
NO_SENDER = "none"
# A DNS name: at most 253 characters of letters, digits, hyphens and dots.
SENDER_MAX_LENGTH = 253
DOMAIN = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$")
# Messages a domain must send before it gets a tag value of its own: a
# handful of forged ``sub`` claims cannot take the places of real senders.
SENDER_ADMIT_AFTER = 20
# Candidates counted at once, per admitted place (and at least 64).
CANDIDATES_PER_PLACE = 4


def sender_domain(sub: Any) -> str | None:
    """The domain of a VAPID ``sub`` (``mailto:ops@example.com``, ``https://example.com/…``), lower-cased.

    ``None`` for anything else: no ``sub``, another scheme, no valid domain.
    """
    if not isinstance(sub, str):
        return None
    lowered = sub.strip().lower()
    if lowered.startswith("mailto:"):
        domain = lowered[len("mailto:") :].rpartition("@")[2]
    elif lowered.startswith("https://"):
        domain = lowered[len("https://") :].split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
        domain = domain.rsplit(":", 1)[0] if domain.count(":") == 1 else domain
    else:
        return None
    domain = domain.rstrip(".")
    if not domain or len(domain) > SENDER_MAX_LENGTH or not DOMAIN.match(domain):
        return None
    return domain


class SenderTags:
    """Which sender domains become tag values: at most ``limit`` per process.

    A domain is counted each time it is seen (Space-Saving: a bounded table
    of candidates whose smallest count an unseen domain inherits, so a heavy
    sender is never starved by many light ones) and admitted once it was
    surely seen ``admit_after`` times (its count less what it inherited: a
    flood of one-off domains admits none of them); admission is for the life
    of the process, so the set of tag values only grows, to ``limit`` at most.
    """

    def __init__(self, limit: int, admit_after: int = SENDER_ADMIT_AFTER) -> None:
        self.limit = limit
        self._admit_after = admit_after
        self._capacity = max(64, limit * CANDIDATES_PER_PLACE)
        self.admitted: set[str] = set()
        # domain → [count, inherited]: Space-Saving's estimate and its error bound.
        self._counts: dict[str, list[int]] = {}

    def tag(self, domain: str | None) -> str:
        if domain is None:
            return NO_SENDER
        if domain in self.admitted:
            return domain
        if len(self.admitted) >= self.limit:
            return OTHER_SENDER
        count = self._count(domain)
        if count < self._admit_after:
            return OTHER_SENDER
        self.admitted.add(domain)
        del self._counts[domain]
        return domain

    def _count(self, domain: str) -> int:
        """How often ``domain`` was surely seen: its count less what it inherited."""
        counts = self._counts
        if domain not in counts and len(counts) >= self._capacity:
            smallest = min(counts, key=lambda name: counts[name][0])
            inherited, _ = counts.pop(smallest)
            counts[domain] = [inherited, inherited]
        entry = counts.setdefault(domain, [0, 0])
        entry[0] += 1
        return entry[0] - entry[1]


class DeliveryTracker:
    """Counts milestones on a node's metrics sink; one per worker."""

    def __init__(self, metrics: Any, sender_tags: int = 0) -> None:
        self._metrics = metrics
        self._senders = SenderTags(sender_tags) if sender_tags > 0 else None

    @property
    def tracks_senders(self) -> bool:
        """Whether messages should carry their sender's domain (only then is it stored)."""
        return self._senders is not None

    def milestone(self, milestone: str, sender: str | None = None, count: int = 1, code: str | None = None) -> None:
        """``code``: the ack's bounded code tag (``acked`` only); ``None`` tags are left out."""
        tags = {"milestone": milestone, "code": code, "sender": self._sender_tag(sender)}
        self._metrics.increment(MILESTONE, count, tags=_present(tags))

    def acked(self, notification: Notification, code: str, source: str, now: float) -> None:
        """The ack milestone and the time from acceptance to it (``source``: Direct or Stored)."""
        self.milestone(ACKED, notification.sender, code=code)
        latency_ms = max(0.0, now - accepted_at(notification)) * 1000.0
        tags = {"source": source, "sender": self._sender_tag(notification.sender)}
        self._metrics.timing(LATENCY, latency_ms, tags=_present(tags))

    def _sender_tag(self, sender: str | None) -> str | None:
        return self._senders.tag(sender) if self._senders is not None else None


def _present(tags: dict[str, str | None]) -> dict[str, str]:
    """The tags that apply: a milestone names every tag it can carry, ``None`` for those it has not."""
    return {key: value for key, value in tags.items() if value is not None}


def accepted_at(notification: Notification) -> float:
    """When the endpoint accepted a message, in seconds.

    A timestamp message's sort key holds its stamp in microseconds; a topic
    message carries only its whole-second ``timestamp``.
    """
    if notification.sortkey_timestamp is not None and not notification.topic:
        return notification.sortkey_timestamp / 1_000_000
    return float(notification.timestamp)
