"""JSON on the push path as bytes: orjson, and the json module for what orjson refuses.

Why: the endpoint encodes a DynamoDB request and a ``PUT /push`` body and
decodes a DynamoDB answer for every push; orjson does each about ten times
faster than the json module, 7 % of the endpoint's instructions per push
(docs/architecture.md#dependency-notes). orjson refuses some JSON the json
module reads and writes: strings with lone surrogates (``\\udc80``, which a
record written by another server can hold), and on output integers past 64
bits and nesting past 254 levels. Those go through the json module, so what
is sent may be spelled differently (UTF-8 rather than ``\\u`` escapes) but
reads back the same. One difference stays: orjson reads an integer past 64
bits as a float. DynamoDB writes its numbers as strings and endpoints write
none that large, so nothing decoded here holds one.
"""

from __future__ import annotations

import json
from typing import Any

import orjson


def encode(value: Any) -> bytes:
    """Compact JSON, UTF-8."""
    try:
        return orjson.dumps(value)
    except TypeError:  # orjson.JSONEncodeError
        return json.dumps(value, separators=(",", ":")).encode()


def decode(data: bytes) -> Any:
    """Raises ``ValueError`` for what is not JSON."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)
