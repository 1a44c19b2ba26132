"""Malformed traffic at scale: a seeded WebSocket frame fuzzer and the helpers around it.

``FrameFuzzer`` draws *units* (one protocol message, sometimes spread over several
WebSocket frames) from a seeded ``random.Random``: binary frames, invalid UTF-8,
huge messages, broken and non-object JSON, protocol messages with wrong types,
random messageTypes, protocol pings, mutated valid messages, fragmented
messages, framing errors, WebSocket pings/pongs, client close frames and
hang-ups in the middle of a frame.

Every unit carries what the protocol (docs/protocol.md#session-states–docs/protocol.md#close-codes) says must happen to it in the
connection's current state: the close codes it may get (or that the
connection stays open), and the one reply it gets, if any. Mutated and
unmasked units can do anything the protocol allows, so for them only the general
rules are checked (allowed close code, replies are JSON objects, no 5xx status).

``FuzzWorker`` sends units over raw sockets (``RawWebSocket``: own handshake
and framing, so broken frames can be sent at all). After each unit it sends a
WebSocket ping: gevent-websocket answers it from the same reading greenlet that
runs the session, so its pong proves the unit was processed and the connection
is still open; a close frame instead gives the unit's close code. When a
connection ends, the worker opens a new one (usually sending a valid hello
first, so the identified-state handlers are reached) and carries on.
"""

from __future__ import annotations

import base64
import json
import os
import random
import socket
import string
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

from tests.support.fuzzing import SCALE_VARIABLE
from tests.support.push_client import PushClient

# ---- scale -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FuzzScale:
    name: str
    units: int  # fuzz units (messages) sent to the connection node
    requests: int  # schemathesis requests sent to the endpoint node
    threads: int  # parallel fuzzing connections
    max_examples: int  # hypothesis examples per schemathesis operation and phase


SCALES = {
    # In CI (part of ``make test``): both scenarios well under a minute on 2 cores.
    "ci": FuzzScale("ci", units=5_000, requests=1_500, threads=4, max_examples=130),
    # ``make fuzz``: the acceptance run (≥ 10,000 of each). Frames are cheap (~1 ms a unit),
    # so that side runs long enough for the bystander to get ~100 pushes.
    "full": FuzzScale("full", units=50_000, requests=10_000, threads=8, max_examples=1_250),
}


def fuzz_scale() -> FuzzScale:
    """``FUZZ_SCALE``: ``ci`` (default) or ``full``."""
    name = os.environ.get(SCALE_VARIABLE, "").strip().lower() or "ci"
    if name not in SCALES:
        raise ValueError(f"{SCALE_VARIABLE}={name!r}: expected one of {sorted(SCALES)}")
    return SCALES[name]


# ---- processes -------------------------------------------------------------------------


def child_pids(parent: int) -> set[int]:
    """The live children of ``parent`` (a gunicorn master's workers), from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        if int(fields[1]) == parent and fields[0] != "Z":
            children.add(int(entry.name))
    return children


def log_since(path: Path, offset: int) -> str:
    with open(path, "rb") as log:
        log.seek(offset)
        return log.read().decode("utf-8", "replace")


def crash_lines(text: str) -> list[str]:
    """Lines showing an exception escaped: a Traceback or gevent's "failed with"."""
    return [line for line in text.splitlines() if "Traceback" in line or " failed with " in line]


# ---- WebSocket framing -----------------------------------------------------------------

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def _xor(data: bytes, key: bytes) -> bytes:
    if not data:
        return b""
    size = len(data)
    stream = (key * (size // 4 + 1))[:size]
    return (int.from_bytes(data, "big") ^ int.from_bytes(stream, "big")).to_bytes(size, "big")


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True, rsv: int = 0, mask: bool = True,
          length: int | None = None) -> bytes:
    """One client frame; ``length`` lets the header claim another size than the payload's."""
    size = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv & 0x70) | (opcode & 0x0F)
    mask_bit = 0x80 if mask else 0
    if size < 126:
        header = bytes([first, mask_bit | size])
    elif size < 1 << 16:
        header = bytes([first, mask_bit | 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, mask_bit | 127]) + struct.pack("!Q", size)
    if not mask:
        return header + payload
    key = os.urandom(4)  # the masking key has no effect on what the server sees
    return header + key + _xor(payload, key)


OPCODE_NAMES = {0x0: "CONT", 0x1: "TEXT", 0x2: "BINARY", 0x8: "CLOSE", 0x9: "PING", 0xA: "PONG"}


def describe_frames(wire: bytes, limit: int = 160) -> str:
    """Client frames as a reader wants them in a failure: opcode, flags, unmasked payload.

    The wire itself is masked with a random key, so its bytes say nothing; a frame cut
    short (a hang-up, or a header claiming more than is sent) shows what was there.
    """
    shown, at = [], 0
    while at + 2 <= len(wire):
        first, second = wire[at], wire[at + 1]
        size, at = second & 0x7F, at + 2
        if size in (126, 127):
            width = 2 if size == 126 else 8
            size = int.from_bytes(wire[at:at + width], "big")
            at += width
        key = wire[at:at + 4] if second & 0x80 else b""
        at += len(key)
        payload = wire[at:at + size]
        at += size
        data = _xor(payload, key) if len(key) == 4 else payload
        flags = "".join(flag for bit, flag in ((0x80, "F"), (0x40, "1"), (0x20, "2"), (0x10, "3")) if first & bit)
        name = OPCODE_NAMES.get(first & 0x0F, hex(first & 0x0F))
        cut = f" (claims {size}, sent {len(payload)})" if len(payload) < size else ""
        mask = "" if second & 0x80 else " unmasked"
        shown.append(f"{name}[{flags}{mask}]{cut} {data[:limit]!r}{'…' if len(data) > limit else ''}")
    if at < len(wire):
        shown.append(f"partial header {wire[at:]!r}")
    return " + ".join(shown)


class Dropped(Exception):
    """The TCP connection ended (EOF or reset) without a close frame."""


class RawWebSocket:
    """A client socket speaking just enough RFC 6455 to send anything at all."""

    def __init__(self, host: str, port: int, timeout: float = 15.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Sec-WebSocket-Protocol: push-notification\r\n\r\n".encode()
        )
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        if not head.startswith(b"HTTP/1.1 101"):
            raise ConnectionError(f"upgrade refused: {head[:200]!r}")

    def _fill(self) -> None:
        try:
            chunk = self.sock.recv(65536)
        except ConnectionError as error:  # reset, aborted, broken pipe
            raise Dropped(str(error)) from error
        if not chunk:
            raise Dropped("EOF")
        self.buffer += chunk

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def send(self, data: bytes) -> bool:
        """``False`` when the server already hung up (its close frame may still be readable)."""
        try:
            self.sock.sendall(data)
            return True
        except OSError:
            return False

    def read_frame(self) -> tuple[int, bytes]:
        """The next server frame (servers never mask and never fragment here)."""
        first, second = self._take(2)
        size = second & 0x7F
        if size == 126:
            size = struct.unpack("!H", self._take(2))[0]
        elif size == 127:
            size = struct.unpack("!Q", self._take(8))[0]
        if second & 0x80:
            key = self._take(4)
            return first & 0x0F, _xor(self._take(size), key)
        return first & 0x0F, self._take(size)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


# ---- what the protocol says must happen --------------------------------------------------------

OPEN = "open"  # the connection survives the unit (its sync pong came back)
DROP = "drop"  # TCP ended without a close frame
TIMEOUT = "timeout"  # no answer at all: always a failure
# Close codes the server itself may choose (docs/protocol.md#close-codes and, for framing errors,
# gevent-websocket's 1002). 1012 (restart) cannot happen: no worker stops here.
SERVER_CLOSE_CODES = frozenset({1000, 1002, 1003, 1007, 1009, 1011, 4774})
ANY_OUTCOME = frozenset({OPEN, *SERVER_CLOSE_CODES})
# Reply statuses a healthy node gives (no storage outage is injected: 500/503 are bugs).
HEALTHY_STATUSES = frozenset({200, 400, 401})
PING_WINDOW = 45.0  # docs/protocol.md#ping
MAX_MESSAGE = 64 * 1024  # README / docs/protocol.md#close-codes (1009)
# json.loads gives up past ~930 levels of nesting (the node then closes 1011, covered by
# test_deeply_nested_json_closes_1011); the fuzzer's valid messages stay well below that.
MAX_NESTING = 200


@dataclass
class ConnState:
    identified: bool = False
    last_ping: float | None = None  # monotonic time of the last answered ``{}``
    opened: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Unit:
    label: str
    wire: bytes  # the frames, encoded
    outcomes: frozenset  # allowed outcomes: OPEN, close codes
    reply: str | None = None  # signature of the one reply expected (checked unless ``loose``)
    loose: bool = False  # mutated / unmasked: only the general rules apply
    sync: bool = True  # follow with a WebSocket ping to learn the outcome
    abort: bool = False  # the client hangs up right after sending
    echo: int | None = None  # a client close frame: the code the server must echo
    frames: int = 1
    identifies: bool = False  # a successful hello: the session becomes IDENTIFIED
    pings: bool = False  # a protocol ping that gets answered


def signature(text: str) -> str:
    """``{}`` for a ping reply, else ``messageType:status`` (or just the messageType)."""
    if text == "{}":
        return "{}"
    message = json.loads(text)
    status = message.get("status")
    return f"{message.get('messageType')}:{status}" if status is not None else str(message.get("messageType"))


def _base64_key_valid(value: Any) -> bool | None:
    """docs/protocol.md#register ``key``: ``None`` = treated as absent; else whether it decodes to bytes."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        return False
    try:
        raw = value.encode("ascii").translate(bytes.maketrans(b"-_", b"+/")).rstrip(b"=")
        decoded = base64.b64decode(raw + b"=" * (-len(raw) % 4), validate=True)
    except (UnicodeEncodeError, ValueError):
        return False
    return bool(decoded)


def _uuid(value: Any) -> uuid.UUID | None:
    if not isinstance(value, str):
        return None
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def predict(text: str, state: ConnState) -> tuple[frozenset, str | None, bool, bool]:
    """(outcomes, reply, identifies, pings) for one text message, from docs/protocol.md#session-states, docs/protocol.md#close-codes."""
    close = frozenset
    try:
        message = json.loads(text)
    except ValueError:
        return close({1011}), None, False, False
    if not isinstance(message, dict):
        return close({1011}), None, False, False
    kind = message.get("messageType")
    if not state.identified:
        if kind != "hello":
            return close({1011}), None, False, False  # first message not hello (also {})
        if message.get("use_webpush") is not True:
            return close({1011}), "hello:401", False, False
        return close({OPEN}), "hello:200", True, False
    if not message:
        if state.last_ping is None:
            return close({OPEN}), "{}", False, True
        since = time.monotonic() - state.last_ping
        if since < PING_WINDOW - 2:
            return close({4774}), None, False, False
        if since > PING_WINDOW + 2:
            return close({OPEN}), "{}", False, True
        return close({OPEN, 4774}), None, False, False  # too close to call: loose
    if kind == "hello":
        return close({1011}), "hello:401", False, False
    if kind == "register":
        channel_id = message.get("channelID")
        parsed = _uuid(channel_id)
        if parsed is None or str(parsed) != channel_id:
            return close({OPEN}), "register:401", False, False
        key = _base64_key_valid(message["key"]) if "key" in message else None
        return close({OPEN}), "register:400" if key is False else "register:200", False, False
    if kind == "unregister":
        return close({OPEN}), "unregister:200" if _uuid(message.get("channelID")) else "unregister:401", False, False
    if kind in ("ack", "nack"):
        return close({OPEN}), None, False, False
    if kind == "broadcast_subscribe":  # Megaphone is off: every id is unknown
        broadcasts = message.get("broadcasts")
        return close({OPEN}), "broadcast" if isinstance(broadcasts, dict) and broadcasts else None, False, False
    return close({1011}), None, False, False  # missing, non-string or unknown messageType


# ---- the generator -------------------------------------------------------------------------

KNOWN_TYPES = ("hello", "register", "unregister", "ack", "nack", "broadcast_subscribe")
WEIRD_VALUES: tuple[Any, ...] = (
    None, True, False, 0, 5, -1, 12, 1.5, 1e308, "", "x", "x" * 1000, [], [1, "a"], {}, {"a": 1},
    "\u0000", "\ud800", "é" * 10, "null", "true", 2**64, -(2**63),
)
# Wrong at the first bad byte (a validator fed them incrementally rejects them at once) ...
BAD_UTF8 = (b"\xc3\x28", b"\xff", b"\xfe\xff", b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80")
# ... and sequences cut short, only wrong once the message ends (or continues with ASCII).
INVALID_UTF8 = (*BAD_UTF8, b"\xe2\x82", b"\xf0\x9f\x98")
BROKEN_JSON = (
    "", " ", "{", "}", "}{", "{{}", "[", '{"messageType":', '{"messageType":"hello"', "{'a': 1}",
    '{"a":1,}', "{a:1}", '{"a" 1}', "\ufeff{}", "{}x", "{} {}", "nul", "tru", "01", "--1", '"unterminated',
    '{"messageType":"ack","updates":[}', "\u0000", "{\"a\":\"\\x\"}", "/* c */ {}", "undefined",
)
NON_OBJECTS = (
    "[]", "[1]", '"str"', "5", "null", "true", "1.5", "NaN", "-Infinity", '[{"messageType":"hello"}]', "[{}]",
)
# Valid per docs/protocol.md#ping: any JSON object with no keys is a ping.
PING_TEXTS = ("{}", "{ }", " {}", "{}\n", "\t{\r\n}\t")
VALID_CLOSE_CODES = (1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011)
INVALID_CLOSE_CODES = (0, 1, 999, 1004, 1005, 1006, 1015, 1100, 2000, 2999)


def _dumps(value: Any, ascii_only: bool = True) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=ascii_only)


class FrameFuzzer:
    """A seeded source of fuzz units; the same seed and states give the same units."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.kinds: list[tuple[Callable[[ConnState], Unit], int]] = [
            (self.binary, 7), (self.invalid_utf8, 6), (self.huge, 2), (self.broken_json, 7),
            (self.non_object, 4), (self.wrong_types, 26), (self.random_type, 5), (self.mutated, 12),
            (self.protocol_ping, 3), (self.ws_control, 4), (self.framing_error, 5), (self.client_close, 3),
            (self.fragmented, 5), (self.nested, 3), (self.hello, 3), (self.unmasked, 2), (self.abort, 1),
        ]
        self.makers = [maker for maker, _ in self.kinds]
        self.weights = [weight for _, weight in self.kinds]

    def next_unit(self, state: ConnState) -> Unit:
        return self.rng.choices(self.makers, self.weights)[0](state)

    # ---- helpers

    def _text_unit(self, label: str, text: str, state: ConnState, **extra: Any) -> Unit:
        try:
            payload = text.encode("utf-8")
        except UnicodeEncodeError:  # a raw lone surrogate: not UTF-8 on the wire
            return Unit(label, frame(OP_TEXT, text.encode("utf-8", "surrogatepass")), frozenset({1007}), **extra)
        outcomes, reply, identifies, pings = predict(text, state)
        loose = reply is None and outcomes == frozenset({OPEN, 4774})
        return Unit(label, frame(OP_TEXT, payload), outcomes, reply,
                    loose=loose, identifies=identifies, pings=pings, **extra)

    def _hex_uaid(self) -> str:
        return f"{self.rng.getrandbits(128):032x}"

    def _chid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def _junk_text(self, size: int) -> str:
        return "".join(self.rng.choices(string.printable, k=size))

    def _weird(self) -> Any:
        return self.rng.choice(WEIRD_VALUES)

    def valid_message(self, state: ConnState) -> dict:
        """A message a well-behaved client could send in this state."""
        if not state.identified:
            return {"messageType": "hello", "use_webpush": True, "broadcasts": {}}
        chid = self._chid()
        return self.rng.choice([
            {"messageType": "register", "channelID": chid},
            {"messageType": "register", "channelID": chid,
             "key": base64.urlsafe_b64encode(b"\x04" + self.rng.randbytes(64)).decode()},
            {"messageType": "unregister", "channelID": chid, "code": 200},
            {"messageType": "ack", "updates": [{"channelID": chid, "version": "gAAAA" + self._junk_text(40),
                                                "code": 100}]},
            {"messageType": "nack", "version": "gAAAA" + self._junk_text(20), "code": 301},
            {"messageType": "broadcast_subscribe", "broadcasts": {"remote-settings/monitor_changes": '"1"'}},
        ])

    # ---- the kinds of unit

    def binary(self, state: ConnState) -> Unit:
        payload = self.rng.choice([
            b"", self.rng.randbytes(self.rng.randint(1, 300)), b'{"messageType":"hello","use_webpush":true}',
            b"\x00\x01",
        ])
        if len(payload) > 4 and self.rng.random() < 0.3:  # fragmented binary message
            cut = self.rng.randint(1, len(payload) - 1)
            wire = frame(OP_BINARY, payload[:cut], fin=False) + frame(OP_CONT, payload[cut:])
            return Unit("binary-fragmented", wire, frozenset({1003}), frames=2)
        return Unit("binary", frame(OP_BINARY, payload), frozenset({1003}))

    def invalid_utf8(self, state: ConnState) -> Unit:
        bad = self.rng.choice(INVALID_UTF8)
        valid = _dumps(self.valid_message(state)).encode()
        where = self.rng.randint(0, len(valid))
        payload = self.rng.choice([bad, valid[:where] + bad + valid[where:], b'{"messageType":"' + bad + b'"}'])
        return Unit("invalid-utf8", frame(OP_TEXT, payload), frozenset({1007}))

    def huge(self, state: ConnState) -> Unit:
        over = MAX_MESSAGE + self.rng.randint(1, 4096)
        variant = self.rng.randrange(3)
        if variant == 0:  # one frame, valid JSON padded past the limit
            text = _dumps({"messageType": "nack", "version": "x" * over})
            return Unit("huge", frame(OP_TEXT, text.encode()), frozenset({1009}))
        if variant == 1:  # fragments, each small, together too big
            pieces = [b"x" * 16384] * (over // 16384 + 1)
            wire = frame(OP_TEXT, pieces[0], fin=False)
            wire += b"".join(frame(OP_CONT, p, fin=False) for p in pieces[1:-1]) + frame(OP_CONT, pieces[-1])
            return Unit("huge-fragmented", wire, frozenset({1009}), frames=len(pieces))
        # A header claiming a giant length, with no payload: refused on the header alone.
        size = self.rng.choice([over, 2**32, 2**63 - 1, 2**64 - 1])
        return Unit("huge-claimed", frame(OP_TEXT, b"", length=size), frozenset({1009}))

    def broken_json(self, state: ConnState) -> Unit:
        if self.rng.random() < 0.5:
            text = self.rng.choice(BROKEN_JSON)
        else:
            valid = _dumps(self.valid_message(state))
            text = valid[: self.rng.randint(0, len(valid) - 1)]  # truncated (never the whole)
        return self._text_unit("broken-json", text, state)

    def non_object(self, state: ConnState) -> Unit:
        return self._text_unit("non-object", self.rng.choice(NON_OBJECTS), state)

    def wrong_types(self, state: ConnState) -> Unit:
        """Real messageTypes, fields of the wrong type or shape (and some right ones)."""
        rng, chid = self.rng, self._chid()
        weird = self._weird()
        kind = rng.choice(["hello", "register", "register", "unregister", "ack", "ack", "nack", "broadcast_subscribe"])
        if kind == "hello":
            message = {"messageType": "hello", "use_webpush": rng.choice([True, True, True, False, 1, "true", None]),
                       "uaid": rng.choice([12, [], {}, None, "", self._hex_uaid(), self._hex_uaid().upper(),
                                           chid, "x" * 200, weird]),
                       "channelIDs": rng.choice([[], [5], "x", weird]),
                       "broadcasts": rng.choice([{}, [], "x", {"a": 1}, {"x" * 50: None}, weird])}
            if rng.random() < 0.2:
                del message["use_webpush"]
        elif kind == "register":
            message = {"messageType": "register",
                       "channelID": rng.choice([5, None, "x" * 1000, "", chid, chid.upper(), chid.replace("-", ""),
                                                "{" + chid + "}", "urn:uuid:" + chid, chid + " ", weird])}
            if rng.random() < 0.5:
                message["key"] = rng.choice([
                    None, "", "!!!!", "ab cd", "é", "=", 5, True, [1], {"k": 1}, "\ud800",
                    base64.urlsafe_b64encode(rng.randbytes(65)).decode(),
                    base64.urlsafe_b64encode(rng.randbytes(65)).decode().rstrip("="),
                    base64.b64encode(rng.randbytes(65)).decode(),
                ])
            if rng.random() < 0.1:
                del message["channelID"]
        elif kind == "unregister":
            message = {"messageType": "unregister", "code": rng.choice(["x", None, 200, 201, 1.5, [], weird]),
                       "channelID": rng.choice([chid, chid.upper(), chid.replace("-", ""), None, 5, "x", weird])}
            if rng.random() < 0.1:
                del message["channelID"]
        elif kind == "ack":
            update = rng.choice([
                {"channelID": chid, "version": 7}, {"channelID": 5, "version": "v"}, {"version": "v"},
                {"channelID": chid}, {"channelID": chid, "version": "v", "code": "x"},
                {"channelID": chid, "version": "x" * 1000, "code": 102}, {"channelID": [], "version": {}},
                weird, [chid, "v"],
            ])
            message = {"messageType": "ack",
                       "updates": rng.choice([[update], [update] * rng.randint(2, 50), update, [], "x", None, 5, {}])}
            if rng.random() < 0.1:
                del message["updates"]
        elif kind == "nack":
            message = {"messageType": "nack", "version": rng.choice([7, None, "v", [], weird]),
                       "code": rng.choice([301, 302, 303, 0, "x", None, 1.5, weird])}
        else:
            message = {"messageType": "broadcast_subscribe",
                       "broadcasts": rng.choice([[], "x", None, {}, {"a": "v"}, {"x" * 100: 1},
                                                 {f"id{i}": i for i in range(rng.randint(1, 200))}, weird])}
        if rng.random() < 0.2:
            message[rng.choice(["extra", "messageType2", "", "\u00e9"])] = self._weird()
        return self._text_unit(f"wrong-types:{kind}", _dumps(message, ascii_only=rng.random() < 0.7), state)

    def random_type(self, state: ConnState) -> Unit:
        rng = self.rng
        kind = rng.choice([
            "notification", "broadcast", "error", "ping", "HELLO", "Register", "hello ", " ack", "", "x" * 300,
            self._junk_text(rng.randint(1, 20)), None, 5, [], {}, True, "ack\u0000",
        ])
        message = {"messageType": kind} if rng.random() < 0.8 else {"type": "hello", "use_webpush": True}
        if rng.random() < 0.5:
            message["channelID"] = self._chid()
        return self._text_unit("random-type", _dumps(message), state)

    def mutated(self, state: ConnState) -> Unit:
        data = bytearray(_dumps(self.valid_message(state)).encode())
        for _ in range(self.rng.randint(1, 3)):
            if not data:
                break
            where = self.rng.randrange(len(data))
            op = self.rng.randrange(5)
            if op == 0:
                data[where] ^= 1 << self.rng.randrange(8)
            elif op == 1:
                del data[where:]
            elif op == 2:
                del data[where]
            elif op == 3:
                data.insert(where, self.rng.randrange(256))
            else:
                end = min(len(data), where + self.rng.randint(1, 8))
                data[where:where] = data[where:end]
        return Unit("mutated", frame(OP_TEXT, bytes(data)), ANY_OUTCOME, loose=True)

    def protocol_ping(self, state: ConnState) -> Unit:
        return self._text_unit("ping", self.rng.choice(PING_TEXTS), state)

    def ws_control(self, state: ConnState) -> Unit:
        payload = self.rng.randbytes(self.rng.randint(0, 125))
        opcode = self.rng.choice([OP_PING, OP_PONG])
        label = "ws-ping" if opcode == OP_PING else "ws-pong"
        return Unit(label, frame(opcode, payload), frozenset({OPEN}))

    def framing_error(self, state: ConnState) -> Unit:
        """RFC 6455 violations: gevent-websocket closes with 1002."""
        rng = self.rng
        text = _dumps(self.valid_message(state)).encode()
        variant = rng.randrange(6)
        if variant == 0:
            wire, label = frame(OP_TEXT, text, rsv=rng.choice([0x10, 0x20, 0x40, 0x70])), "rsv-bits"
        elif variant == 1:
            wire, label = frame(rng.choice([3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF]), text[:100]), "bad-opcode"
        elif variant == 2:
            wire, label = frame(OP_CONT, text), "orphan-continuation"
        elif variant == 3:
            wire, label = frame(OP_TEXT, text[:5], fin=False) + frame(OP_TEXT, text), "interrupted-fragments"
        elif variant == 4:
            wire, label = frame(OP_PING, b"p", fin=False), "fragmented-ping"
        else:
            wire, label = frame(OP_PING, rng.randbytes(rng.randint(126, 300))), "oversized-ping"
        return Unit(f"framing:{label}", wire, frozenset({1002}), frames=2 if variant == 3 else 1)

    def client_close(self, state: ConnState) -> Unit:
        """docs/protocol.md#close-codes: a client-initiated close is echoed (RFC 6455 docs/protocol.md#bridge-registration)."""
        rng = self.rng
        variant = rng.randrange(6)
        if variant == 0:
            return Unit("close:empty", frame(OP_CLOSE), frozenset(), echo=1000, sync=False)
        if variant == 1:
            return Unit("close:1-byte", frame(OP_CLOSE, b"\x03"), frozenset({1002}), sync=False)
        if variant == 2:
            code = rng.choice(INVALID_CLOSE_CODES)
            return Unit("close:invalid-code", frame(OP_CLOSE, struct.pack("!H", code)), frozenset({1002}), sync=False)
        if variant == 3:
            # gevent-websocket validates close reasons incrementally, so a reason that is
            # merely cut short passes; only bytes wrong on their own are certain to give 1007.
            payload = struct.pack("!H", 1000) + rng.choice(BAD_UTF8)
            return Unit("close:bad-reason", frame(OP_CLOSE, payload), frozenset({1007}), sync=False)
        code = rng.choice([*VALID_CLOSE_CODES, rng.randint(3000, 4999)])
        reason = self._junk_text(rng.randint(0, 100)).encode()
        wire = frame(OP_CLOSE, struct.pack("!H", code) + reason)
        return Unit("close:valid", wire, frozenset(), echo=code, sync=False)

    def fragmented(self, state: ConnState) -> Unit:
        """A message split over 2–6 frames (cuts may split UTF-8 sequences), pings in between."""
        message = self.valid_message(state)
        if self.rng.random() < 0.3:
            message = {"messageType": "nack", "version": "é✓😀" * 20}  # multi-byte UTF-8 to cut through
        text = _dumps(message, ascii_only=False) if self.rng.random() < 0.9 else self.rng.choice(PING_TEXTS)
        data = text.encode()
        count = min(len(data), self.rng.randint(2, 6))
        cuts = sorted(self.rng.sample(range(1, len(data)), count - 1)) if count > 1 else []
        pieces = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]
        wire = b""
        for index, piece in enumerate(pieces):
            wire += frame(OP_TEXT if index == 0 else OP_CONT, piece, fin=index == len(pieces) - 1)
            if index < len(pieces) - 1 and self.rng.random() < 0.3:
                wire += frame(OP_PING, b"between")  # control frames may come between fragments
        base = self._text_unit("fragmented", text, state)
        return Unit("fragmented", wire, base.outcomes, base.reply, loose=base.loose, frames=len(pieces),
                    identifies=base.identifies, pings=base.pings)

    def nested(self, state: ConnState) -> Unit:
        """Big or deep (≤ MAX_NESTING) JSON, inside valid messages or on its own."""
        rng = self.rng
        depth = rng.randint(1, MAX_NESTING)
        deep: Any = rng.choice([[], {}, "x"])
        for _ in range(depth):
            deep = [deep] if rng.random() < 0.5 else {"k": deep}
        wide = [{"channelID": self._chid(), "version": "v" * rng.randint(0, 40)} for _ in range(rng.randint(10, 1000))]
        value = rng.choice([deep, wide])
        message = rng.choice([
            {"messageType": "ack", "updates": value if isinstance(value, list) else [value]},
            {"messageType": "nack", "version": "v", "code": value},
            {"messageType": "broadcast_subscribe", "broadcasts": value},
            {"messageType": "register", "channelID": value},
            {"messageType": "hello", "use_webpush": True, "uaid": value, "channelIDs": value},
            value,
        ])
        text = _dumps(message)
        if len(text.encode()) > MAX_MESSAGE:
            text = _dumps({"messageType": "ack", "updates": wide[:100]})
        return self._text_unit("nested", text, state)

    def hello(self, state: ConnState) -> Unit:
        message = {"messageType": "hello", "use_webpush": True, "broadcasts": {}}
        if self.rng.random() < 0.5:
            message["uaid"] = self._hex_uaid()  # unknown: a new UAID is issued
        return self._text_unit("hello", _dumps(message), state)

    def unmasked(self, state: ConnState) -> Unit:
        """RFC 6455 says servers close on unmasked frames; the protocol is silent: anything allowed."""
        text = _dumps(self.valid_message(state)).encode()
        return Unit("unmasked", frame(OP_TEXT, text, mask=False), ANY_OUTCOME, loose=True)

    def abort(self, state: ConnState) -> Unit:
        """The client vanishes in the middle of a frame."""
        whole = frame(OP_TEXT, _dumps(self.valid_message(state)).encode())
        return Unit("client-abort", whole[: self.rng.randint(1, len(whole) - 1)], frozenset(), abort=True, sync=False)


# ---- the worker ----------------------------------------------------------------------------


@dataclass
class FuzzStats:
    units: int = 0
    frames: int = 0
    hellos: int = 0  # set-up hellos, not counted as fuzz units
    connections: int = 0
    outcomes: Counter = field(default_factory=Counter)  # OPEN, close codes, DROP, TIMEOUT
    echoes: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    replies: Counter = field(default_factory=Counter)
    mismatches: list[str] = field(default_factory=list)
    mismatch_count: int = 0
    errors: list[str] = field(default_factory=list)

    def merge(self, other: FuzzStats) -> None:
        self.units += other.units
        self.frames += other.frames
        self.hellos += other.hellos
        self.connections += other.connections
        for name in ("outcomes", "echoes", "labels", "replies"):
            getattr(self, name).update(getattr(other, name))
        self.mismatch_count += other.mismatch_count
        self.mismatches += other.mismatches[: 20 - len(self.mismatches)]
        self.errors += other.errors


SET_UP_HELLO = frame(OP_TEXT, b'{"messageType":"hello","use_webpush":true,"broadcasts":{}}')


class FuzzWorker(threading.Thread):
    """One fuzzing client: ``quota`` units, reconnecting whenever the server hangs up."""

    def __init__(self, host: str, port: int, seed: int, quota: int, hello_odds: float = 0.85) -> None:
        super().__init__(name=f"fuzz-{seed}", daemon=True)
        self.host, self.port, self.quota = host, port, quota
        self.fuzzer = FrameFuzzer(seed)
        self.rng = random.Random(seed * 7919)
        self.hello_odds = hello_odds
        self.stats = FuzzStats()
        self.sync_counter = 0

    def run(self) -> None:
        try:
            while self.stats.units < self.quota:
                self._one_connection()
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.stats.errors.append(f"{self.name} unit {self.stats.units}: {type(error).__name__}: {error}")

    def _one_connection(self) -> None:
        ws = RawWebSocket(self.host, self.port)
        self.stats.connections += 1
        state = ConnState()
        try:
            if self.rng.random() < self.hello_odds:
                ws.send(SET_UP_HELLO)
                self.stats.hellos += 1
                outcome, texts = self._settle(ws)
                if outcome != OPEN or [signature(t) for t in texts] != ["hello:200"]:
                    self.stats.errors.append(f"set-up hello got {outcome} {texts!r}")
                    return
                state.identified = True
            while self.stats.units < self.quota:
                if not state.identified and time.monotonic() - state.opened > 3:
                    return  # before the 5 s hello timeout could close it mid-unit
                unit = self.fuzzer.next_unit(state)
                if not self._play(ws, unit, state):
                    return
        finally:
            ws.close()

    def _play(self, ws: RawWebSocket, unit: Unit, state: ConnState) -> bool:
        """Send one unit and check what happened; ``False`` once the connection is over."""
        self.stats.units += 1
        self.stats.frames += unit.frames
        self.stats.labels[unit.label] += 1
        ws.send(unit.wire)
        if unit.abort:
            self.stats.outcomes["client-abort"] += 1
            return False
        outcome, texts = self._settle(ws, sync=unit.sync)
        if unit.echo is not None and outcome == unit.echo:
            self.stats.echoes[outcome] += 1
        else:
            self.stats.outcomes[outcome] += 1
        signatures = []
        for text in texts:
            try:
                sig = signature(text)
                status = json.loads(text).get("status") if text != "{}" else None
            except (ValueError, AttributeError):
                self._mismatch(unit, "reply is not a JSON object", outcome, texts)
                continue
            signatures.append(sig)
            self.stats.replies[sig] += 1
            if status is not None and status not in HEALTHY_STATUSES:
                self._mismatch(unit, f"reply status {status}", outcome, texts)
        allowed = frozenset({unit.echo}) if unit.echo is not None else unit.outcomes
        if outcome not in allowed:
            self._mismatch(unit, f"outcome {outcome}, expected one of {sorted(allowed, key=str)}", outcome, texts)
        elif not unit.loose and signatures != ([unit.reply] if unit.reply else []):
            self._mismatch(unit, f"replies {signatures}, expected {[unit.reply] if unit.reply else []}",
                           outcome, texts)
        if outcome != OPEN:
            return False
        if unit.identifies or "hello:200" in signatures:
            state.identified = True
        if unit.pings or "{}" in signatures:
            state.last_ping = time.monotonic()
        return True

    def _settle(self, ws: RawWebSocket, sync: bool = True) -> tuple[Any, list[str]]:
        """Read until our sync pong (OPEN), a close frame (its code) or the end of TCP (DROP)."""
        token = b""
        if sync:
            self.sync_counter += 1
            token = b"sync-%d" % self.sync_counter
            ws.send(frame(OP_PING, token))
        texts: list[str] = []
        try:
            while True:
                opcode, payload = ws.read_frame()
                if opcode == OP_TEXT:
                    texts.append(payload.decode("utf-8", "replace"))
                elif opcode == OP_PONG and sync and payload == token:
                    return OPEN, texts
                elif opcode == OP_PING:
                    ws.send(frame(OP_PONG, payload))
                elif opcode == OP_CLOSE:
                    code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005
                    ws.send(frame(OP_CLOSE, payload[:2]))  # complete the closing handshake
                    return code, texts
        except Dropped:
            return DROP, texts
        except TimeoutError:
            return TIMEOUT, texts

    def _mismatch(self, unit: Unit, problem: str, outcome: Any, texts: list[str]) -> None:
        """Record which unit of which worker failed, its frames unmasked, and what came back."""
        self.stats.mismatch_count += 1
        if len(self.stats.mismatches) < 20:
            self.stats.mismatches.append(
                f"{self.name} unit {self.stats.units}: {unit.label}: {problem}; sent {describe_frames(unit.wire)}; "
                f"got {outcome} {[t[:160] for t in texts]}")


def run_fuzzers(host: str, port: int, units: int, threads: int, seed: int) -> FuzzStats:
    """``units`` fuzz units over ``threads`` parallel connections; merged stats."""
    quotas = [units // threads + (1 if index < units % threads else 0) for index in range(threads)]
    workers = [FuzzWorker(host, port, seed + index, quota) for index, quota in enumerate(quotas)]
    for worker in workers:
        worker.start()
    total = FuzzStats()
    for worker in workers:
        worker.join()
        total.merge(worker.stats)
    return total


# ---- the bystander -------------------------------------------------------------------------


@dataclass
class Push:
    seq: int
    status: int
    message_id: str | None
    sent_at: float


class Bystander:
    """A normal client on the fuzzed worker, sent a push every ~0.5 s, acking each one."""

    def __init__(self, ws_url: str, interval: float = 0.5) -> None:
        self.client = PushClient(ws_url)
        self.client.hello()
        reply = self.client.register(str(uuid.uuid4()))
        assert reply["status"] == 200, reply
        self.endpoint = reply["pushEndpoint"]
        self.interval = interval
        self.pushes: list[Push] = []
        self.received: list[tuple[int, str, float]] = []  # (seq, version, monotonic time)
        self.problems: list[str] = []
        self._stop_pushing = threading.Event()
        self._stop_reading = threading.Event()
        self._pusher = threading.Thread(target=self._push_loop, name="bystander-pusher", daemon=True)
        self._reader = threading.Thread(target=self._read_loop, name="bystander-reader", daemon=True)

    def start(self) -> None:
        self.client.ws.settimeout(0.5)
        self._reader.start()
        self._pusher.start()

    def _push_loop(self) -> None:
        with requests.Session() as http:
            seq = 0
            while not self._stop_pushing.wait(self.interval):
                seq += 1
                sent_at = time.monotonic()
                try:
                    response = http.post(self.endpoint, data=str(seq).encode(), timeout=10,
                                         headers={"TTL": "60", "Content-Encoding": "aes128gcm"})
                except requests.RequestException as error:
                    self.problems.append(f"push {seq}: {error}")
                    continue
                location = response.headers.get("Location", "")
                message_id = location.rsplit("/m/", 1)[1] if "/m/" in location else None
                self.pushes.append(Push(seq, response.status_code, message_id, sent_at))

    def _read_loop(self) -> None:
        while not self._stop_reading.is_set():
            try:
                message = self.client.receive()
            except websocket.WebSocketTimeoutException:
                continue
            except Exception as error:  # noqa: BLE001 - the bystander must never lose its socket
                self.problems.append(f"bystander socket: {type(error).__name__}: {error}")
                return
            if not isinstance(message, dict) or message.get("messageType") != "notification":
                self.problems.append(f"unexpected message {message!r}")
                continue
            data = message.get("data", "")
            seq = int(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
            self.received.append((seq, message["version"], time.monotonic()))
            self.client.ack(message)

    def stop(self, settle: float = 10.0) -> None:
        """Stop pushing, wait for every accepted push to arrive, stop reading."""
        self._stop_pushing.set()
        self._pusher.join()
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline and len(self.received) < len(self.accepted):
            time.sleep(0.05)
        self._stop_reading.set()
        self._reader.join()
        self.client.close()

    @property
    def accepted(self) -> list[Push]:
        return [push for push in self.pushes if push.status == 201]

    def max_latency(self) -> float:
        sent = {push.seq: push.sent_at for push in self.pushes}
        return max((at - sent[seq] for seq, _, at in self.received if seq in sent), default=0.0)
