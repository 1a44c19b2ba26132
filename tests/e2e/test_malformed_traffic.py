"""Malformed traffic at scale (acceptance item 4), against one real stack.

1. A seeded frame fuzzer (``fuzz_support.FrameFuzzer``) sends binary frames,
   invalid UTF-8, huge messages, broken and non-object JSON, protocol messages
   with wrong types, random messageTypes, pings, mutated and fragmented
   messages, framing errors and client closes to the single connection worker,
   over several parallel connections that reconnect whenever the server hangs
   up. Every unit must get what docs/protocol.md#session-states, docs/protocol.md#close-codes says (close code, or staying
   open, and its one reply), all close codes are the protocol's (1000, 1003, 1007,
   1009, 1011, 4774, gevent-websocket's 1002, or the echo of a client close),
   and meanwhile a bystander client on the same worker receives every push
   answered 201, in order, acking each; the worker's pid never changes and its
   log holds no Traceback.
2. schemathesis generates requests for every operation of the endpoint node's
   live ``/openapi.json`` (examples, coverage and fuzzing phases, positive and
   negative data): no 5xx from the app (no storage outage is injected, so not
   even the protocol's 503s are legitimate), every app error body is docs/protocol.md#error-responses's
   JSON, and the endpoint worker's pid never changes. Some generated requests
   never reach the app: gunicorn's parser refuses them with its own HTML page
   and the status HTTP prescribes (400, 414, 431, or 501 for a transfer coding
   it does not implement). Those pass, are counted apart, and nothing else
   does (``tests.support.fuzzing.judge``).

Each scenario prints its seed with a command that replays it, then one line
with its counts. The size is chosen by ``FUZZ_SCALE``: ``ci`` (the default,
part of ``make test``) or ``full`` (``make fuzz``: ≥ 10,000 frames and
≥ 10,000 requests). ``FUZZ_SEED`` (an integer, or ``random``) seeds both the
frame fuzzer and schemathesis; the default is fixed, so a run is repeatable
(the frame fuzzer up to thread timing). Neither variable is ``AUTOPUSH_*``:
the stack hands the test's environment to the nodes, which refuse unknown
``AUTOPUSH_*`` variables.

Regression tests for the bugs the fuzzer found (deep JSON nesting, falsy register keys)
are at the end.
"""

from __future__ import annotations

import json
import struct
import time
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings

from tests.e2e.fuzz_support import (
    DROP,
    OP_CLOSE,
    OP_TEXT,
    OPEN,
    SERVER_CLOSE_CODES,
    Bystander,
    ConnState,
    Dropped,
    FrameFuzzer,
    RawWebSocket,
    child_pids,
    crash_lines,
    describe_frames,
    frame,
    fuzz_scale,
    log_since,
    run_fuzzers,
)
from tests.support.fuzzing import SEED, Answer, judge
from tests.support.fuzzing import api_schema, fuzz_seed, http, schemathesis_nodeid_shim  # noqa: F401 - fixtures, used by name
from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack

SCALE = fuzz_scale()
QUIET_CLIENTS = 20  # identified clients that just sit on the worker during the fuzzing


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    """One connection worker (so every client shares it) and one endpoint worker."""
    return start_stack(request, "malformed-traffic")


def router_health(stack: Stack) -> requests.Response:
    return requests.get(f"http://127.0.0.1:{stack.router_port}/health", timeout=5)


def wait_for_clients(stack: Stack, expected: int, timeout: float = 10.0) -> requests.Response:
    """The router's ``/health`` once its client count is ``expected`` (or the last answer)."""
    deadline = time.monotonic() + timeout
    while True:
        response = router_health(stack)
        if response.status_code != 200 or response.json().get("clients") == expected:
            return response
        if time.monotonic() > deadline:
            return response
        time.sleep(0.1)


# ---- 1. the connection node ------------------------------------------------------------


@pytest.mark.usefixtures("fuzz_seed")
def test_malformed_frames_leave_the_worker_and_its_clients_alone(stack: Stack, capsys) -> None:
    master = stack.connection.process.pid
    workers = child_pids(master)
    assert len(workers) == 1, workers
    log_offset = stack.connection.log_path.stat().st_size
    quiet = [stack.client() for _ in range(QUIET_CLIENTS)]
    for client in quiet:
        assert client.hello()["status"] == 200
    bystander = Bystander(stack.ws_url)
    bystander.start()

    started = time.monotonic()
    stats = run_fuzzers("127.0.0.1", stack.connection.port, SCALE.units, SCALE.threads, SEED)
    fuzz_seconds = time.monotonic() - started

    # Every fuzz session has left the worker's client table; the others are still there.
    health = wait_for_clients(stack, QUIET_CLIENTS + 1)
    bystander.stop()
    for client in quiet:  # each one's first protocol ping is answered
        client.send({})
        assert client.receive() == "{}"
    workers_after = child_pids(master)
    crashes = crash_lines(log_since(stack.connection.log_path, log_offset))

    assert stats.errors == [], "\n".join(stats.errors[:5])
    assert stats.units >= SCALE.units
    assert stats.mismatch_count == 0, "\n".join(stats.mismatches)
    closes = {code: n for code, n in stats.outcomes.items() if isinstance(code, int)}
    assert set(closes) <= SERVER_CLOSE_CODES, closes
    assert DROP not in stats.outcomes and "timeout" not in stats.outcomes, stats.outcomes
    assert workers_after == workers, f"connection worker changed: {workers} -> {workers_after}"
    assert crashes == [], crashes[:5]
    assert health.status_code == 200 and health.json()["clients"] == QUIET_CLIENTS + 1, health.text

    assert bystander.problems == [], bystander.problems[:5]
    statuses = Counter(push.status for push in bystander.pushes)
    assert set(statuses) == {201}, statuses
    accepted = bystander.accepted
    assert [seq for seq, _, _ in bystander.received] == [push.seq for push in accepted]
    assert [version for _, version, _ in bystander.received] == [push.message_id for push in accepted]
    assert len(accepted) >= max(2, int(fuzz_seconds / 2)), (len(accepted), fuzz_seconds)
    latency = bystander.max_latency()
    assert latency < 5, latency

    codes = " ".join(f"{code}:{n}" for code, n in sorted(closes.items()))
    line = (
        f"malformed frames ({SCALE.name}, seed {SEED}): {stats.units} fuzz units = {stats.frames} frames"
        f" (+{stats.hellos} set-up hellos) over {stats.connections} connections, {SCALE.threads} at a time,"
        f" to 1 connection worker in {fuzz_seconds:.1f} s | server closes {codes};"
        f" client closes echoed {sum(stats.echoes.values())}; left open {stats.outcomes[OPEN]};"
        f" client hang-ups {stats.outcomes['client-abort']}; TCP drops 0; outcomes off-protocol 0;"
        f" replies {sum(stats.replies.values())} (status 200/400/401 only)"
        f" | worker pid {min(workers)} unchanged, no Traceback, router /health 200"
        f" | bystander got {len(bystander.received)}/{len(accepted)} pushes (all 201) in order,"
        f" max latency {latency:.2f} s; {QUIET_CLIENTS} idle clients still answer"
    )
    with capsys.disabled():
        print(f"\n{line}")


def fuzz_script(seed: int, units: int = 2000) -> list[str]:
    """What a fuzzer with ``seed`` sends, unmasked, along a fixed sequence of connection states."""
    fuzzer = FrameFuzzer(seed)
    states = [ConnState(identified=False), ConnState(identified=True)]
    return [describe_frames(fuzzer.next_unit(states[index % 2]).wire) for index in range(units)]


def test_a_seed_replays_the_same_frames() -> None:
    """Replaying a failure needs nothing but the printed seed (masking keys aside, which the
    server undoes): the same seed gives the same frames, another seed others."""
    assert fuzz_script(SEED) == fuzz_script(SEED)
    assert fuzz_script(SEED) != fuzz_script(SEED + 1)


# ---- 2. the endpoint node --------------------------------------------------------------

ENDPOINT_TALLY: Counter[str] = Counter()
ENDPOINT_FUZZ = settings(
    max_examples=SCALE.max_examples, derandomize=True, database=None, deadline=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def endpoint_baseline(stack: Stack) -> dict:
    """Taken before the first generated request."""
    return {
        "workers": child_pids(stack.endpoint.process.pid),
        "log_offset": stack.endpoint.log_path.stat().st_size,
        "started": time.monotonic(),
    }


endpoint_schema = schemathesis.pytest.from_fixture("api_schema")


@ENDPOINT_FUZZ
@pytest.mark.usefixtures("schemathesis_nodeid_shim", "endpoint_baseline", "fuzz_seed")
@endpoint_schema.parametrize()
def test_generated_requests(case, stack: Stack, http: requests.Session) -> None:
    response = case.call(base_url=stack.endpoint_url, session=http, timeout=10)
    ENDPOINT_TALLY["requests"] += 1
    ENDPOINT_TALLY[f"op:{case.operation.label}"] += 1  # unexpected-method probes count for their path
    meta = case.meta
    if meta is not None:
        ENDPOINT_TALLY[f"mode:{meta.generation.mode.value}"] += 1
    verdict = judge(Answer.of(response), case.as_curl_command(base_url=stack.endpoint_url))
    ENDPOINT_TALLY[f"front:{response.status_code}" if verdict.front else f"{response.status_code // 100}xx"] += 1
    ENDPOINT_TALLY["checked"] += 1


def test_generated_requests_summary(stack: Stack, endpoint_baseline: dict, capsys) -> None:
    """Runs after ``test_generated_requests`` (pytest keeps the file's order)."""
    seconds = time.monotonic() - endpoint_baseline["started"]
    workers = child_pids(stack.endpoint.process.pid)
    crashes = crash_lines(log_since(stack.endpoint.log_path, endpoint_baseline["log_offset"]))
    operations = sorted(key[3:] for key in ENDPOINT_TALLY if key.startswith("op:"))
    assert ENDPOINT_TALLY["requests"] >= SCALE.requests, ENDPOINT_TALLY
    assert ENDPOINT_TALLY["5xx"] == 0, ENDPOINT_TALLY
    assert ENDPOINT_TALLY["checked"] == ENDPOINT_TALLY["requests"], "some responses broke docs/protocol.md#error-responses"
    assert ENDPOINT_TALLY["mode:negative"] > 0 and ENDPOINT_TALLY["mode:positive"] > 0, ENDPOINT_TALLY
    assert workers == endpoint_baseline["workers"], (
        f"endpoint worker changed: {endpoint_baseline['workers']} -> {workers}")
    assert crashes == [], crashes[:5]
    per_op = [ENDPOINT_TALLY[f"op:{op}"] for op in operations]
    front = " ".join(f"{key[6:]}:{n}" for key, n in sorted(ENDPOINT_TALLY.items()) if key.startswith("front:"))
    line = (
        f"schemathesis endpoint ({SCALE.name}, seed {SEED}): {ENDPOINT_TALLY['requests']} generated requests over"
        f" {len(operations)} operations ({min(per_op)}–{max(per_op)} each;"
        f" positive {ENDPOINT_TALLY['mode:positive']}, negative {ENDPOINT_TALLY['mode:negative']}) in {seconds:.1f} s"
        f" | app: 2xx {ENDPOINT_TALLY['2xx']}, 4xx {ENDPOINT_TALLY['4xx']}, 5xx 0; every error body docs/protocol.md#error-responses JSON"
        f" | refused by gunicorn before the app: {front or 'none'}"
        f" | endpoint worker pid {min(workers)} unchanged, no Traceback"
    )
    with capsys.disabled():
        print(f"\n{line}")


# ---- known bugs, pinned ------------------------------------------------------------------


def close_code(ws: RawWebSocket) -> int | None:
    try:
        while True:
            opcode, payload = ws.read_frame()
            if opcode == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0]
    except Dropped:
        return None


@pytest.mark.parametrize("identified", [False, True], ids=["before-hello", "after-hello"])
def test_deeply_nested_json_closes_1011(stack: Stack, identified: bool) -> None:
    log_offset = stack.connection.log_path.stat().st_size
    ws = RawWebSocket("127.0.0.1", stack.connection.port)
    try:
        if identified:
            ws.send(frame(OP_TEXT, b'{"messageType":"hello","use_webpush":true}'))
            opcode, reply = ws.read_frame()
            assert json.loads(reply)["status"] == 200
        ws.send(frame(OP_TEXT, b"[" * 1000 + b"]" * 1000))
        code = close_code(ws)
    finally:
        ws.close()
    time.sleep(0.2)
    crashes = crash_lines(log_since(stack.connection.log_path, log_offset))
    assert (code, crashes) == (1011, [])


@pytest.mark.parametrize("key", [False, 0, [], {}], ids=["false", "zero", "empty-list", "empty-object"])
def test_register_with_a_falsy_non_string_key_is_invalid(stack: Stack, key) -> None:
    client = PushClient(stack.ws_url)
    try:
        client.hello()
        channel_id = str(uuid.uuid4())
        client.send({"messageType": "register", "channelID": channel_id, "key": key})
        reply = client.receive()
    finally:
        client.close()
    assert reply == {"messageType": "register", "channelID": channel_id, "status": 400, "reason": "Invalid key"}
