"""How the service writes its ids, and the one place each conversion lives.

Inside the service a UAID is 32 lower-case hex digits and a channel id a
dashed lower-case UUID: that is how storage keys them, how sessions and
records hold them, and how logs hash them. ``uuid.UUID`` appears only where
bytes are encrypted or parsed (endpoint tokens and message ids,
``crypto/``) and where a request names an id in any spelling; those convert
at their edge with the functions below.
"""

from __future__ import annotations

import re
import uuid

_UAID = re.compile(r"[0-9a-f]{32}")


def canonical_uaid(text: str) -> str:
    """A UAID given in any UUID spelling (dashed, braces, ``urn:uuid:``) as 32 hex digits.

    Raises ``ValueError`` for text that is no UUID. Text already in that
    form (what nodes send: every ``PUT /push``) is returned as it is.
    """
    if _UAID.fullmatch(text):
        return text
    return uuid.UUID(text).hex


def uaid_text(uaid: uuid.UUID) -> str:
    return uaid.hex


def channel_text(channel_id: uuid.UUID) -> str:
    return str(channel_id)
