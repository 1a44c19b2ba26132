"""JSON on the push path: orjson's speed, the json module's reach (``json_codec``)."""

from __future__ import annotations

import json

import pytest

from autopush_flask import json_codec

# What orjson refuses and the json module takes.
LONE_SURROGATE = {"token": "device-\udc80-token"}
BIG_INTEGER = {"n": 2**70}
DEEP = [[[[{"a": 1}]]]]
for _ in range(300):
    DEEP = [DEEP]


@pytest.mark.parametrize("value", [{"a": "é", "b": [1, 2.5, None, True]}, LONE_SURROGATE, BIG_INTEGER, DEEP],
                         ids=["plain", "lone surrogate", "big integer", "300 levels"])
def test_values_come_back_as_they_went(value: object) -> None:
    encoded = json_codec.encode(value)
    assert json.loads(encoded) == value
    assert json_codec.decode(encoded) == value


def test_escaped_lone_surrogates_are_read_as_the_json_module_reads_them() -> None:
    text = b'{"token":"device-\\udc80-token"}'
    assert json_codec.decode(text) == json.loads(text) == LONE_SURROGATE


def test_an_integer_past_64_bits_is_read_as_a_float() -> None:
    """The one difference from the json module (see the module's doc)."""
    assert json_codec.decode(b"[1180591620717411303425]") == [1.1805916207174113e21]


def test_what_is_not_json_is_a_value_error() -> None:
    for text in (b"", b"{", b"NaN-", b'{"a":1,}'):
        with pytest.raises(ValueError):
            json_codec.decode(text)
