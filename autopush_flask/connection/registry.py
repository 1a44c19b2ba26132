"""The worker's table of identified clients, keyed by UAID.

docs/protocol.md#session-states, docs/protocol.md#duplicate-connections
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol


class Client(Protocol):
    """Anything the table holds: a connected client with its session."""

    @property
    def connected_at(self) -> int: ...

    def evict(self, connected_at: int) -> None: ...


class ClientRegistry:
    def __init__(self) -> None:
        self._clients: dict[str, Client] = {}

    def __len__(self) -> int:
        return len(self._clients)

    def __iter__(self) -> Iterator[Client]:
        return iter(list(self._clients.values()))

    def get(self, uaid: str) -> Client | None:
        return self._clients.get(uaid)

    def register(self, uaid: str, client: Client) -> Client | None:
        """Enter ``client``; returns the duplicate that must now be closed, if any.

        The connection with the larger ``connected_at`` wins; normally that is
        the newcomer.
        """
        current = self._clients.get(uaid)
        if current is None or current is client:
            self._clients[uaid] = client
            return None
        if client.connected_at >= current.connected_at:
            self._clients[uaid] = client
            return current
        return client

    def unregister(self, uaid: str, client: Client) -> None:
        """Remove ``client`` only if the table still points at it."""
        if self._clients.get(uaid) is client:
            del self._clients[uaid]
