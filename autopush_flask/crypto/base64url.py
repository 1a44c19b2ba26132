"""Base64 as browsers and app servers write it, and as the server writes it (docs/protocol.md#identifiers)."""

from __future__ import annotations

import base64
import binascii


def decode_base64_lenient(text: str) -> bytes:
    """Browsers and app servers mix alphabets and drop padding (docs/protocol.md#identifiers)."""
    try:
        raw = text.encode("ascii")
    except (UnicodeEncodeError, AttributeError) as exc:
        raise ValueError("not base64 text") from exc
    raw = raw.translate(bytes.maketrans(b"-_", b"+/")).rstrip(b"=")
    raw += b"=" * (-len(raw) % 4)
    try:
        return base64.b64decode(raw, validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64 text") from exc


def encode_base64url(data: bytes) -> str:
    """The server always emits unpadded base64url (docs/protocol.md#identifiers)."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")
