"""Conversion between plain Python values and DynamoDB attribute values.

The low-level client speaks typed attribute maps. Converting by hand (rather
than with boto3's TypeDeserializer) keeps ``Decimal`` and ``set`` out of the
rest of the code: numbers come back as ``int`` (or ``float``), string sets as
sorted lists.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any


class StringSet(frozenset):
    """Marks a collection of strings to be written as a DynamoDB string set."""


def to_attribute(value: Any) -> dict:
    if isinstance(value, str):
        return {"S": value}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, (int, float)):
        return {"N": str(value)}
    if isinstance(value, StringSet):
        return {"SS": sorted(value)}
    if isinstance(value, Mapping):
        return {"M": to_item(value)}
    if isinstance(value, (list, tuple)):
        return {"L": [to_attribute(item) for item in value]}
    if value is None:
        return {"NULL": True}
    raise TypeError(f"cannot store {type(value).__name__} in DynamoDB")


def to_item(values: Mapping[str, Any]) -> dict:
    """An attribute map; ``None`` values are omitted (DynamoDB has no empty strings)."""
    return {key: to_attribute(value) for key, value in values.items() if value is not None}


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        number = float(text)
        return int(number) if number.is_integer() else number


def from_attribute(attribute: Mapping[str, Any]) -> Any:
    ((kind, value),) = attribute.items()
    if kind == "S":
        return value
    if kind == "N":
        return _number(value)
    if kind == "SS":
        return sorted(value)
    if kind == "NS":
        return sorted(_number(item) for item in value)
    if kind == "M":
        return from_item(value)
    if kind == "L":
        return [from_attribute(item) for item in value]
    if kind == "BOOL":
        return bool(value)
    if kind == "NULL":
        return None
    if kind == "B":  # base64 on the wire, bytes from boto3
        return base64.b64decode(value) if isinstance(value, str) else bytes(value)
    raise TypeError(f"unsupported DynamoDB attribute type {kind}")


def from_item(item: Mapping[str, Any] | None) -> dict:
    return {key: from_attribute(value) for key, value in (item or {}).items()}
