"""``PUT /push`` on the router: the lean paths answer as the Flask route does.

``RouterHandler`` (autopush_flask/connection/node_api.py) answers the plain
form of ``PUT /push/{uaid}`` from the buffered request, without a WSGI environ;
``PushRoute`` takes the forms left to gevent past Flask, and
``_plain_notification`` takes the plain form of its body past marshmallow. All
must be invisible: the same statuses, bodies and notifications
(docs/protocol.md#put-push).
"""

from __future__ import annotations

import io
import json
import socket
import uuid
from http.client import HTTPException

import gevent.socket
import pytest
from gevent.pywsgi import WSGIServer, headers_factory
from hypothesis import given, settings
from hypothesis import strategies as st

from autopush_flask.connection.app import create_connection_app
from autopush_flask.connection.node_api import (
    NOTIFICATION_SCHEMA,
    _plain_notification,
    parse_notification,
    PlainHead,
    RouterHandler,
    read_headers,
)
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import Notification
from autopush_flask.node_auth import RouterRequestKeys
from autopush_flask.urgency import LEVELS

CHANNEL = "6f1b3c2e-8d4a-4b7e-9c1f-2a3b4c5d6e7f"


def by_schema(body: object) -> Notification | None:
    """What the marshmallow schema alone makes of a body."""
    try:
        loaded = NOTIFICATION_SCHEMA.load(body or {})
    except Exception:  # noqa: BLE001 - any refusal is "invalid"
        return None
    return Notification(
        channel_id=str(loaded["channelID"]), version=loaded["version"], ttl=loaded["ttl"],
        timestamp=loaded["timestamp"], topic=loaded["topic"] or None, data=loaded["data"] or None,
        headers=loaded["headers"], sortkey_timestamp=loaded["sortkey_timestamp"], stored=loaded["stored"],
        urgency=loaded["urgency"], sender=loaded["sender"],
    )


def test_what_an_endpoint_sends_takes_the_shortcut() -> None:
    body = {"channelID": CHANNEL, "version": "gAAAA-v", "ttl": 60, "topic": None, "timestamp": 1_700_000_000,
            "sortkey_timestamp": 1_700_000_000_123, "urgency": "high", "sender": "push.example.com",
            "data": "AAEC", "headers": {"encoding": "aes128gcm"}}
    plain = _plain_notification(body)
    assert plain is not None
    assert plain == by_schema(body)


@pytest.mark.parametrize("body", [
    {"channelID": CHANNEL.upper(), "version": "v"},  # not canonical: the schema lowercases it
    {"channelID": CHANNEL.replace("-", ""), "version": "v"},
    {"channelID": CHANNEL, "version": "v", "ttl": "60"},  # a string the schema turns into 60
    {"channelID": CHANNEL, "version": "v", "stored": "true"},
    {"channelID": CHANNEL, "version": "v", "ttl": 1.0},
])
def test_other_spellings_are_left_to_the_schema_and_load_the_same(body: dict) -> None:
    assert _plain_notification(body) is None
    assert parse_notification(json.dumps(body).encode()) == by_schema(body)
    assert by_schema(body) is not None


@pytest.mark.parametrize("body", [
    {"channelID": CHANNEL, "version": ""}, {"channelID": CHANNEL, "version": "v", "ttl": -1},
    {"channelID": CHANNEL, "version": "v", "extra": 1}, {"channelID": CHANNEL, "version": "v", "ttl": True},
    {"channelID": CHANNEL, "version": "v", "urgency": "urgent"}, {"channelID": CHANNEL, "version": "v", "sender": "A"},
    {"channelID": CHANNEL, "version": "v", "headers": {"a": 1}}, {"version": "v"}, [], None, 0, "x",
])
def test_invalid_bodies_are_refused_by_both(body: object) -> None:
    assert parse_notification(json.dumps(body).encode()) is None
    assert by_schema(body) is None


FIELD_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2, max_value=2**40), st.floats(allow_nan=False, width=32),
    st.sampled_from([CHANNEL, CHANNEL.upper(), "", "v", "push.example.com", "Bad Sender", *LEVELS]),
    st.dictionaries(st.sampled_from(["encoding", "crypto_key"]), st.one_of(st.text(max_size=3), st.integers())),
)
BODIES = st.dictionaries(
    st.sampled_from(["channelID", "version", "ttl", "topic", "timestamp", "data", "headers",
                     "sortkey_timestamp", "stored", "urgency", "sender", "other"]),
    FIELD_VALUES,
).map(lambda body: {"channelID": CHANNEL, "version": "v", **body})


@settings(max_examples=400, deadline=None)
@given(BODIES)
def test_the_shortcut_only_takes_what_the_schema_takes_with_the_same_values(body: dict) -> None:
    plain = _plain_notification(body)
    if plain is not None:
        assert plain == by_schema(body)
    assert parse_notification(json.dumps(body).encode()) == by_schema(body)


@pytest.fixture
def router(make_settings):
    node_settings = make_settings("connection")
    keys = RouterRequestKeys.from_crypto_keys(CryptoKeys(list(node_settings.crypto_keys)))
    return create_connection_app(node_settings).node_api_app.test_client(), keys


def test_lean_path_and_flask_route_answer_alike(router) -> None:
    """The same request on the lean path (plain) and through Flask (a query string
    sends it there): 401 unsigned, 404 for a UAID not connected, same bodies."""
    client, keys = router
    path = f"/push/{uuid.uuid4().hex}"
    body = json.dumps({"channelID": CHANNEL, "version": "v"}).encode()
    answers = []
    for target in (path, path + "?via=flask"):
        unsigned = client.put(target, data=body)
        signed = client.put(target, data=body, headers=dict(keys.sign("PUT", target, body)))
        tampered = client.put(target, data=body + b" ", headers=dict(keys.sign("PUT", target, body)))
        answers.append([(r.status_code, r.get_data(), r.mimetype) for r in (unsigned, signed, tampered)])
    assert answers[0] == answers[1]
    assert [status for status, _, _ in answers[0]] == [401, 404, 401]
    assert answers[0][1][1] == b"Client not connected."


# ---- the router's header reading: as gevent's (email package), line for line

SAMPLE_LINES = [b"Host: 127.0.0.1:8082\r\n", b"Content-Length: 12\r\n", b"X-Autopush-Timestamp:1\r\n",
                b"Empty:\r\n", b"Spaces:   a  b  \r\n", b"Tab:\tv\r\n", b"LF-only: v\n", b"Folded: a\r\n",
                b"  continued\r\n", b"no colon\r\n", b"From someone\r\n", b"Bad Name: v\r\n",
                b"Caf\xe9: \xff\r\n", b"CR: a\rb\r\n", b"Double-CR: a\r\r\n", b": no name\r\n"]
HEADER_LINES = st.lists(
    st.one_of(
        st.sampled_from(SAMPLE_LINES),
        st.binary(max_size=12).map(lambda raw: raw.replace(b"\n", b"") + b"\r\n"),
    ),
    max_size=8,
)


# What gevent asks of a request's head, in every spelling it uses.
LOOKED_UP = ["content-length", "Content-Length", "transfer-encoding", "Connection", "Upgrade", "content-type",
             "host", "X-Autopush-Timestamp", "empty", "Absent"]


def reading(head: object, rest: bytes) -> list:
    """What gevent sees of a head, and what is left to read after it."""
    return [*head.items(), head.status, list(head.headers), head.typeheader,  # type: ignore[attr-defined]
            [head.get(name, "-") for name in LOOKED_UP], rest]  # type: ignore[attr-defined]


def both_readings(lines: list[bytes], end: bytes = b"\r\n", buffered: bool = False) -> tuple[list, list]:
    """Ours (through a buffered reader when ``buffered``, as on a socket: the whole-head path) and gevent's."""
    raw = b"".join(lines) + end + b"body"
    stream = io.BufferedReader(io.BytesIO(raw)) if buffered else io.BytesIO(raw)
    ours = read_headers(stream)
    gevent_stream = io.BytesIO(raw)
    gevents = headers_factory(gevent_stream)
    return reading(ours, stream.read()), reading(gevents, gevent_stream.read())


@settings(max_examples=400, deadline=None)
@given(HEADER_LINES, st.sampled_from([b"\r\n", b"\n", b""]), st.booleans())
def test_router_headers_read_as_gevent_reads_them(lines: list[bytes], end: bytes, buffered: bool) -> None:
    ours, gevents = both_readings(lines, end, buffered)
    assert ours == gevents


@pytest.mark.parametrize("buffered", [False, True])
@pytest.mark.parametrize("line", SAMPLE_LINES)
def test_each_sample_line_reads_as_gevent_reads_it(line: bytes, buffered: bool) -> None:
    ours, gevents = both_readings([b"Host: a\r\n", line], buffered=buffered)
    assert ours == gevents


def test_a_buffered_plain_head_is_read_at_once_and_deleting_keeps_lookups_in_step() -> None:
    head = b"Host: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\ncontent-length: 6\r\n\r\n"
    stream = io.BufferedReader(io.BytesIO(head + b"5\r\nhello"))
    message = read_headers(stream)
    assert isinstance(message, PlainHead)
    assert stream.tell() == len(head)
    assert message.get("CONTENT-LENGTH") == "5"
    del message["content-length"]  # what gevent does beside a chunked body
    assert message.get("Content-Length") is None
    assert message.get("host") == "a"


def test_router_header_limits_are_gevents() -> None:
    for buffered in (False, True):
        ours, gevents = both_readings([b"X-Long: " + b"a" * 70_000 + b"\r\n"], buffered=buffered)
        assert ours == gevents
        assert "Line too long" in ours
        with pytest.raises(HTTPException):
            both_readings([b"X: 1\r\n"] * 100, buffered=buffered)
        ours, gevents = both_readings([b"X: 1\r\n"] * 99, buffered=buffered)
        assert ours == gevents


def test_plain_heads_are_read_without_the_email_package() -> None:
    """The email package leaves an empty payload on what it parsed; the lean reading none."""
    head = b"Host: 127.0.0.1\r\nContent-Length: 2\r\nX-Autopush-Timestamp: 1\r\n\r\n{}"
    assert read_headers(io.BytesIO(head)).get_payload() is None
    assert read_headers(io.BytesIO(b"Folded: a\r\n b\r\n\r\n")).get_payload() == ""


# ---- the router's handler: the plain PUT /push without gevent's WSGI environ


def handled(api_app, raw: bytes, monkeypatch) -> tuple[object, bytes, int]:
    """``raw`` through one ``RouterHandler.handle_one_request`` on a real socket pair:
    (its result, the answer's bytes, how many WSGI environs gevent built)."""
    environs = []
    original = RouterHandler.get_environ

    def counted(handler):
        environs.append(1)
        return original(handler)

    monkeypatch.setattr(RouterHandler, "get_environ", counted)
    server = WSGIServer(("127.0.0.1", 0), api_app, log=None, handler_class=RouterHandler)
    ours, theirs = gevent.socket.socketpair()
    with ours, theirs:
        theirs.sendall(raw)
        handler = RouterHandler(ours, ("127.0.0.1", 1), server)
        result = handler.handle_one_request()
        ours.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := theirs.recv(65536):
            answer += chunk
    return result, answer, len(environs)


def test_the_plain_push_is_answered_without_a_wsgi_environ(router, monkeypatch) -> None:
    client, keys = router
    api_app = client.application
    path = f"/push/{uuid.uuid4().hex}"
    body = json.dumps({"channelID": CHANNEL, "version": "v"}).encode()
    signature = "".join(f"{name}: {value}\r\n" for name, value in keys.sign("PUT", path, body))
    head = f"PUT {path} HTTP/1.1\r\nHost: router\r\nContent-Length: {len(body)}\r\n{signature}"
    plain = handled(api_app, f"{head}\r\n".encode() + body, monkeypatch)
    expecting = handled(api_app, f"{head}Expect: 100-continue\r\n\r\n".encode() + body, monkeypatch)
    assert plain[0] is True and plain[2] == 0
    assert plain[1].startswith(b"HTTP/1.1 404 NOT FOUND\r\n") and plain[1].endswith(b"\r\n\r\nClient not connected.")
    assert expecting[2] == 1 and b"404 NOT FOUND" in expecting[1]  # gevent's handling
