"""Broadcast versions and what each session is told (docs/protocol.md#broadcast).

One ``BroadcastRegistry`` per worker holds the versions every session compares
against, so its read paths run on every hello, ``broadcast_subscribe`` and
auto-ping tick and must stay cheap. Pure data, no I/O: ``megaphone.py``'s
poller is its only writer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

NOT_FOUND = "Broadcast not found"


@dataclass(frozen=True)
class BroadcastCheck:
    """Outcome of comparing a client's requested broadcasts with the node's.

    Kept separate from the reply so a session can store ``subscribed`` and
    merge ``changed`` with its own pending changes before answering.
    """

    changed: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    subscribed: dict[str, str] = field(default_factory=dict)


class BroadcastRegistry:
    """Node-wide broadcast versions plus a change counter.

    The counter lets a session skip comparing its subscriptions on a tick
    when nothing changed since it last looked, which is nearly every tick.
    """

    def __init__(self) -> None:
        self._versions: dict[str, str] = {}
        self._change_count = 0

    @property
    def versions(self) -> dict[str, str]:
        """A copy, so callers cannot alter what every session compares against."""
        return dict(self._versions)

    @property
    def change_count(self) -> int:
        return self._change_count

    def update(self, versions: Mapping[str, str]) -> bool:
        """Merge Megaphone's answer; returns whether anything changed.

        Ids missing from the answer are kept: a partial or flapping Megaphone
        should not make clients see "Broadcast not found" for live ids.
        """
        changes = {bid: ver for bid, ver in versions.items() if self._versions.get(bid) != ver}
        if not changes:
            return False
        # Swap in a new dict rather than mutate, so a reader part-way through
        # iterating the old one never sees it change underneath it.
        self._versions = {**self._versions, **changes}
        self._change_count += 1
        return True

    def subscribe(self, requested: Mapping[Any, Any]) -> BroadcastCheck:
        """Compare a client's ``broadcasts`` object with the node's versions.

        ``requested`` is untrusted client JSON, so nothing here may raise:
        anything but a mapping subscribes to nothing; non-string ids are
        skipped (JSON object keys are always strings, so only a non-JSON
        caller can produce them); a known id whose version is
        not a string counts as differing, so the client is sent the real
        version and subscribed; an unknown id is an error whatever its value.
        """
        if not isinstance(requested, Mapping):
            return BroadcastCheck()
        versions = self._versions
        changed: dict[str, str] = {}
        errors: dict[str, str] = {}
        subscribed: dict[str, str] = {}
        for bid, client_version in requested.items():
            if type(bid) is not str:
                continue
            server_version = versions.get(bid)
            if server_version is None:
                errors[bid] = NOT_FOUND
                continue
            subscribed[bid] = server_version
            if type(client_version) is not str or client_version != server_version:
                changed[bid] = server_version
        return BroadcastCheck(changed, errors, subscribed)

    @staticmethod
    def reply_payload(check: BroadcastCheck) -> dict[str, Any]:
        """The hello reply's ``broadcasts`` object: changed ids at top level,
        ``errors`` only when there are some, ``{}`` when nothing to report."""
        payload: dict[str, Any] = dict(check.changed)
        if check.errors:
            payload["errors"] = dict(check.errors)
        return payload

    def pending_changes(self, subscribed: Mapping[str, str]) -> dict[str, str]:
        """Ids whose server version differs from what the session last saw."""
        versions = self._versions
        changes: dict[str, str] = {}
        for bid, seen in subscribed.items():
            current = versions.get(bid)
            if current is not None and current != seen:
                changes[bid] = current
        return changes
