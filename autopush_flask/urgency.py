"""Web Push urgency levels (docs/protocol.md#urgency).

A sender marks each message ``very-low``, ``low``, ``normal`` (the default)
or ``high``; a browser on a metered or sleeping device asks for nothing
below a minimum it chooses. The levels are ordered, and everything that
compares them goes through ``is_below`` so no caller orders strings.
"""

from __future__ import annotations

VERY_LOW = "very-low"
LOW = "low"
NORMAL = "normal"
HIGH = "high"
LEVELS = (VERY_LOW, LOW, NORMAL, HIGH)
_RANK = {level: rank for rank, level in enumerate(LEVELS)}
# A message without the header is "normal"; a user who never chose a minimum
# accepts every level.
DEFAULT = NORMAL
NO_MINIMUM = VERY_LOW


def parse(text: str) -> str | None:
    """The level named by ``text`` (case-insensitive, spaces trimmed); ``None`` if it names none."""
    level = text.strip().lower()
    return level if level in _RANK else None


def is_below(urgency: str | None, minimum: str | None) -> bool:
    """Whether a message of ``urgency`` is held back from a user asking for ``minimum``.

    ``None`` reads as the default on either side, so records and messages
    written before urgency existed keep being delivered.
    """
    return _RANK.get(urgency or DEFAULT, _RANK[DEFAULT]) < _RANK.get(minimum or NO_MINIMUM, 0)


def is_low(urgency: str | None) -> bool:
    """``very-low`` and ``low``: what the bridges send at their power-saving priority."""
    return _RANK.get(urgency or DEFAULT, _RANK[DEFAULT]) < _RANK[NORMAL]
