"""``PushHeadersSchema.load_headers`` loads the push headers field by field: it
must give exactly what marshmallow's ``load`` gives, ``TTL`` required first."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from autopush_flask.endpoint.schemas import PUSH_HEADERS
from autopush_flask.push_errors import MISSING_TTL, PushError

NAMES = [field.data_key or name for name, field in PUSH_HEADERS.fields.items()]
VALUES = st.one_of(
    st.sampled_from(["60", "+0", "-0", "-5", "0060", "9" * 40, " 60 ", "x", "", "low", "HIGH", "very-low", "abc_-",
                     "a" * 33, "aes128gcm", "aesgcm", "salt=abc", "vapid t=x,k=y"]),
    st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=40),
)


def outcome(load: Any, headers: dict[str, str]) -> tuple:
    try:
        return ("loaded", load(headers))
    except PushError as error:
        return ("refused", error.status, error.errno, error.message)


@settings(max_examples=500, deadline=None)
@given(st.dictionaries(st.sampled_from(NAMES), VALUES))
def test_load_headers_gives_what_load_gives(headers: dict[str, str]) -> None:
    ours = outcome(PUSH_HEADERS.load_headers, headers)
    if "TTL" not in headers:
        assert ours == ("refused", MISSING_TTL.status, MISSING_TTL.errno, MISSING_TTL.message)
    else:
        assert ours == outcome(PUSH_HEADERS.load, headers)


def test_the_first_bad_field_in_declaration_order_decides() -> None:
    """``TTL`` is declared before ``Topic`` and ``Urgency``: its error wins."""
    refused = outcome(PUSH_HEADERS.load_headers, {"TTL": "x", "Topic": "!" * 40, "Urgency": "soon"})
    assert refused[:3] == ("refused", 400, 112)
    refused = outcome(PUSH_HEADERS.load_headers, {"TTL": "1", "Topic": "!" * 40, "Urgency": "soon"})
    assert refused[:3] == ("refused", 400, 113)
