"""Crypto-Key / Encryption header parameters (docs/protocol.md#push-headers)."""

from __future__ import annotations


def parse_crypto_params(header: str) -> list[dict[str, str]]:
    """Shared by VAPID (p256ecdsa) and the Encryption/Crypto-Key checks.

    Names are lower-cased (HTTP parameter names are case-insensitive); empty
    sections and items are skipped; within a section the last duplicate wins.
    """
    sections = []
    for section_text in header.split(","):
        section: dict[str, str] = {}
        for item in section_text.split(";"):
            if not item.strip():
                continue
            name, sep, value = item.partition("=")
            name = name.strip().lower()
            if not sep or not name:
                raise ValueError(f"unparseable crypto parameter {item.strip()!r}")
            section[name] = value.strip().strip('"').strip()
        if section:
            sections.append(section)
    return sections
