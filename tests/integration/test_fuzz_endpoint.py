"""Fuzzing the endpoint node over real sockets: schemathesis and hypothesis.

Two passes against one real gunicorn endpoint node (plus connection node and
dynalite), both checking the same property (docs/protocol.md#endpoint-routes, docs/protocol.md#error-responses):

* no response is a 5xx (the protocol's 503s are storage outages, which do not
  happen here, so any 5xx is a bug);
* every error response is ``application/json`` with exactly ``code``,
  ``errno``, ``error``, ``message``, ``more_info`` and ``code`` == status.

1. schemathesis reads the live ``/openapi.json`` and generates requests for
   every documented operation (its examples, coverage and fuzzing phases,
   positive and negative data). Its path values are mostly undecryptable
   tokens, so the push operations mostly end at 404 errno 102.
2. hypothesis posts generated header sets and bodies to *valid* endpoints of
   registered channels (v1, unversioned and VAPID-bound v2), so TTL, Topic,
   Content-Encoding, Encryption, Crypto-Key and Authorization validation is
   really reached; there the status must also be one a live subscription can
   get (201, 400, 401, 413) with the protocol's errno.

Answers that gunicorn (or nginx) gives before the app — 400, 414, 431, 501 with
the front's own HTML page — are what HTTP prescribes and pass; see
``tests.support.fuzzing``.

Runs are reproducible: both passes are seeded with ``FUZZ_SEED`` (default fixed;
each test prints its seed and a command that replays it) and there is no example
database, so the same tree and the same test selection send the same requests.
(Hypothesis also mixes in constants from the project modules already imported,
so running this file together with others, or editing project code, can shift
the cases.) The last test prints ``fuzz: cases=N 5xx=0 ...`` (pytest shows it
without -s).
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from autopush_flask.endpoint.schemas import BASE64URL_VALUE, SIGNED_INTEGER
from tests.support.fuzzing import SEED, Answer, Verdict, judge
from tests.support.fuzzing import api_schema, fuzz_seed, http, schemathesis_nodeid_shim  # noqa: F401 - fixtures, used by name
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer, b64url, raw_public_key

MAX_TTL = 2_592_000  # default max_notification_ttl (docs/protocol.md#push-headers)
MAX_DATA = 5630  # default max_data (docs/protocol.md#push)
# What a live, registered subscription can be answered (no storage outage here).
LIVE_ERRNOS = {400: {110, 111, 112, 113, 114}, 401: {109}, 413: {104}}

# The seed (``@seed`` / the schema's config) takes precedence over ``derandomize``.
# ``fuzz_seed`` is function-scoped but only prints, so sharing it between examples is fine.
FUZZ_SETTINGS = settings(
    max_examples=60, derandomize=True, database=None, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.function_scoped_fixture],
)

TALLY: Counter[str] = Counter()


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "fuzz-stack")


# ---- the property ----------------------------------------------------------------


def check_response(source: str, answer: Answer, request: str) -> Verdict:
    """Count the case, then judge it (``tests.support.fuzzing.judge``)."""
    TALLY["cases"] += 1
    TALLY[source] += 1
    verdict = judge(answer, request)
    TALLY[f"front:{answer.status}" if verdict.front else f"{answer.status // 100}xx"] += 1
    return verdict


# ---- 1. schemathesis over the documented operations -------------------------------------

schema = schemathesis.pytest.from_fixture("api_schema")


@FUZZ_SETTINGS
@pytest.mark.usefixtures("schemathesis_nodeid_shim", "fuzz_seed")
@schema.parametrize()
def test_documented_operations(case, stack: Stack, http: requests.Session) -> None:
    response = case.call(base_url=stack.endpoint_url, session=http, timeout=10)
    check_response("schemathesis", Answer.of(response), case.as_curl_command(base_url=stack.endpoint_url))


# ---- 2. hypothesis headers against live subscriptions ------------------------------------


@dataclass(frozen=True)
class Target:
    url: str
    valid_authorization: str  # a correctly signed VAPID header for this node


def _register(stack: Stack, key: str | None = None) -> str:
    client = stack.client()
    client.hello()
    reply = client.register(str(uuid.uuid4()), key=key)
    assert reply["status"] == 200
    # Offline from here on: accepted messages are stored (or discarded for TTL 0),
    # so nothing piles up unread on a WebSocket.
    client.close()
    return reply["pushEndpoint"]


@pytest.fixture(scope="module")
def targets(stack: Stack) -> dict[str, Target]:
    app_server = AppServer()
    claims = {"aud": stack.endpoint_url, "exp": int(time.time()) + 3600, "sub": "mailto:fuzz@example.com"}
    vapid = app_server.vapid.sign(claims)["Authorization"]
    v1 = _register(stack)
    v2 = _register(stack, key=app_server.application_server_key)
    time.sleep(0.2)  # let the connection node forget the closed sessions
    token = v1.rsplit("/", 1)[1]
    return {
        "v1": Target(v1, vapid),
        "unversioned": Target(f"{stack.endpoint_url}/wpush/{token}", vapid),
        "v2": Target(v2, vapid),
    }


# Header values requests can send: printable ASCII plus Latin-1, no leading blank.
_chars = st.characters(codec="latin-1", exclude_categories=("Cc",))
junk = st.text(_chars, max_size=40).map(str.lstrip)
base64url = st.from_regex(r"\A[0-9A-Za-z_-]{1,40}={0,2}\Z")

# Python's int() refuses more than 4300 digits (sys.get_int_max_str_digits()); longer
# TTLs are the known bug pinned by test_ttl_beyond_python_int_digit_limit below.
LONGEST_TTL = 4300
VALID_TTL = st.one_of(
    st.integers(0, 10**9).map(str), st.integers(0, 10**9).map(lambda n: f"+{n}"),
    st.integers(10, LONGEST_TTL).map(lambda n: "9" * n),  # capped to max_notification_ttl
)
INVALID_TTL = st.one_of(
    st.integers(-(10**12), -1).map(str), st.integers(10, LONGEST_TTL).map(lambda n: "-" + "9" * n),
    st.sampled_from(["", "1.5", "1e3", "0x10", "1_000", "- 1", "abc", "9" * 40 + "x"]),
    junk.filter(lambda v: not SIGNED_INTEGER.match(v.strip())),
)
VALID_TOPIC = st.from_regex(r"\A[0-9A-Za-z_-]{1,30}={0,2}\Z")
INVALID_TOPIC = st.one_of(
    st.from_regex(r"\A[0-9A-Za-z_-]{33,40}\Z"),
    st.sampled_from(["bad!", "has space", "==", "a=b", "a" * 33, "é"]),
    junk.filter(lambda v: not (0 < len(v) <= 32 and BASE64URL_VALUE.match(v))),
)
URGENCY_LEVELS = ("very-low", "low", "normal", "high")
VALID_URGENCY = st.tuples(st.sampled_from(URGENCY_LEVELS), st.sampled_from([str.lower, str.upper, str.title])).map(
    lambda level_case: level_case[1](level_case[0])
)
INVALID_URGENCY = st.one_of(
    st.sampled_from(["", "urgent", "very low", "very_low", "highest", "normal,high", "0"]),
    junk.filter(lambda v: v.strip().lower() not in URGENCY_LEVELS),
)


def param(name: str, values: st.SearchStrategy[str] = base64url) -> st.SearchStrategy[str]:
    """``name=value``, the value sometimes double-quoted."""
    return st.tuples(values, st.booleans()).map(lambda vq: f'{name}="{vq[0]}"' if vq[1] else f"{name}={vq[0]}")


EXTRA_PARAMS = st.lists(st.one_of(param("keyid", st.from_regex(r"\A[a-z0-9]{1,10}\Z")),
                                  param("rs", st.integers(1, 5000).map(str))), max_size=2)


def crypto_header(*required: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """The required parameters plus a few harmless ones, in any order and grouping."""
    return st.tuples(st.tuples(*required), EXTRA_PARAMS, st.sampled_from([";", ",", "; ", " , "])).flatmap(
        lambda parts: st.permutations([*parts[0], *parts[1]]).map(parts[2].join)
    )


JUNK_PARAM = st.tuples(st.sampled_from(["salt", "dh", "keyid", "rs", "p256ecdsa", "", " "]),
                       junk.filter(lambda v: "," not in v and ";" not in v)).map("=".join)
JUNK_CRYPTO = st.one_of(
    st.lists(st.lists(JUNK_PARAM, min_size=1, max_size=2).map(";".join), min_size=1, max_size=2).map(",".join),
    st.sampled_from(["noequals", "salt", ";=", "=x", "salt=", 'salt=""', "salt=a b", "dh=%%", "salt=ab;dh"]),
    junk,
)
# Per Content-Encoding: (valid Encryption, valid Crypto-Key, invalid Encryption, invalid Crypto-Key).
# ``None`` in a valid list means "header absent", which is valid there.
ENCODINGS = {
    "aes128gcm": (
        st.one_of(st.none(), crypto_header(param("rs", st.just("4096")))),
        st.one_of(st.none(), crypto_header(param("p256ecdsa"))),
        st.one_of(crypto_header(param("salt")), JUNK_CRYPTO),
        st.one_of(crypto_header(param("dh")), JUNK_CRYPTO),
    ),
    "aesgcm": (
        crypto_header(param("salt")),
        st.one_of(st.none(), crypto_header(param("dh")), crypto_header(param("dh"), param("p256ecdsa"))),
        st.one_of(st.none(), crypto_header(param("keyid", st.just("x"))), JUNK_CRYPTO),
        st.one_of(crypto_header(param("keyid", st.just("x"))), JUNK_CRYPTO),
    ),
}
INVALID_ENCODING = st.one_of(st.none(), st.sampled_from(["aesgcm128", "foo", "", "gzip"]),
                             junk.filter(lambda v: v.strip().lower() not in ENCODINGS))
INVALID_AUTHORIZATION = st.one_of(
    st.tuples(st.sampled_from(["vapid", "VAPID", "WebPush", "Bearer", "Basic", "x"]), junk).map(" ".join),
    st.tuples(junk, junk).map(lambda tk: f"vapid t={tk[0]}, k={tk[1]}"),
    st.just("vapid t=abc.def.ghi, k=" + b64url(raw_public_key(AppServer().vapid.private_key))),
    junk,
)
NONEMPTY_BODY = st.one_of(st.binary(min_size=1, max_size=64), st.just(b"x" * MAX_DATA))


@dataclass(frozen=True)
class PushRequest:
    headers: dict[str, str]
    data: bytes
    valid: bool  # every part came from a "valid" branch: the node must accept it


@st.composite
def push_requests(draw: st.DrawFn, needs_vapid: bool, valid_authorization: str) -> PushRequest:
    """Mostly-valid requests with one or more parts broken, so every check is reached."""
    headers: dict[str, str | None] = {}
    valid = True

    def choose(name: str, good: st.SearchStrategy, bad: st.SearchStrategy, bad_odds: int = 4) -> None:
        nonlocal valid
        broken = draw(st.integers(0, bad_odds)) == bad_odds  # shrinks towards "good"
        headers[name] = draw(bad if broken else good)
        valid = valid and not broken

    choose("TTL", VALID_TTL, st.one_of(st.none(), INVALID_TTL))
    choose("Topic", st.one_of(st.none(), VALID_TOPIC), INVALID_TOPIC)
    choose("Urgency", st.one_of(st.none(), VALID_URGENCY), INVALID_URGENCY)
    data = draw(st.one_of(st.just(b""), NONEMPTY_BODY))
    encoding = draw(st.sampled_from(sorted(ENCODINGS)))
    good_encryption, good_crypto_key, bad_encryption, bad_crypto_key = ENCODINGS[encoding]
    if data:
        choose("Content-Encoding", st.just(encoding), INVALID_ENCODING, bad_odds=6)
        choose("Encryption", good_encryption, bad_encryption, bad_odds=6)
        choose("Crypto-Key", good_crypto_key, bad_crypto_key, bad_odds=6)
    else:  # ignored without a body (docs/protocol.md#push-headers), whatever they hold
        headers["Content-Encoding"] = draw(st.one_of(st.none(), st.just(encoding), INVALID_ENCODING))
        headers["Encryption"] = draw(st.one_of(good_encryption, bad_encryption))
        headers["Crypto-Key"] = draw(st.one_of(good_crypto_key, bad_crypto_key))
    good_authorization = st.just(valid_authorization) if needs_vapid else st.sampled_from([None, valid_authorization])
    bad_authorization = st.one_of(st.none(), INVALID_AUTHORIZATION) if needs_vapid else INVALID_AUTHORIZATION
    choose("Authorization", good_authorization, bad_authorization, bad_odds=5)
    if draw(st.integers(0, 12)) == 12:
        data, valid = b"x" * (MAX_DATA + 1), False
    sent = {name: value.lstrip() for name, value in headers.items() if value is not None}
    return PushRequest(sent, data, valid)


def describe(url: str, headers: dict[str, str], data: bytes) -> str:
    shown = data if len(data) <= 64 else data[:16] + f"...({len(data)} bytes)".encode()
    return f"POST {url} headers={headers!r} body={shown!r}"


@pytest.mark.parametrize("kind", ["v1", "unversioned", "v2"])
@pytest.mark.usefixtures("fuzz_seed")
@seed(SEED)
@settings(FUZZ_SETTINGS, max_examples=80)
@given(data=st.data())
def test_push_headers_on_live_subscriptions(
    kind: str, data: st.DataObject, targets: dict[str, Target], http: requests.Session,
) -> None:
    target = targets[kind]
    push = data.draw(push_requests(needs_vapid=kind == "v2", valid_authorization=target.valid_authorization))
    request = describe(target.url, push.headers, push.data)
    response = http.post(target.url, data=push.data, headers=push.headers, timeout=10)
    verdict = check_response("live", Answer.of(response), request)
    error = verdict.error
    if verdict.front:
        TALLY[f"live:front-{response.status_code}"] += 1
        assert not push.valid, f"{verdict.front} refused a valid push: {response.status_code} for {request}"
        return
    TALLY[f"live:{response.status_code}" if error is None else f"live:{error['errno']}"] += 1
    if push.valid:
        assert response.status_code == 201, f"{response.status_code} {response.text} for {request}"
    if error is None:
        assert response.status_code == 201, request
        assert response.headers["Location"].startswith(target.url.split("/wpush/")[0] + "/m/"), request
        assert int(response.headers["TTL"]) == min(int(push.headers["TTL"]), MAX_TTL), request
        return
    assert error["errno"] in LIVE_ERRNOS.get(response.status_code, set()), f"{error!r} for {request}"
    if response.status_code == 401:
        assert response.headers["WWW-Authenticate"] == "webpush", request


# ---- known bugs, pinned ---------------------------------------------------------------


def test_ttl_at_python_int_digit_limit_is_capped(targets: dict[str, Target], http: requests.Session) -> None:
    response = http.post(targets["v1"].url, headers={"TTL": "9" * LONGEST_TTL}, timeout=10)
    assert response.status_code == 201, response.text
    assert response.headers["TTL"] == str(MAX_TTL)


@pytest.mark.parametrize(("ttl", "status", "errno"), [("9" * (LONGEST_TTL + 1), 201, None),
                                                     ("-" + "9" * (LONGEST_TTL + 1), 400, 114)],
                         ids=["4301-digits", "minus-4301-digits"])
def test_ttl_beyond_python_int_digit_limit(
    ttl: str, status: int, errno: int | None, targets: dict[str, Target], http: requests.Session,
) -> None:
    url = targets["v1"].url
    response = http.post(url, headers={"TTL": ttl}, timeout=10)
    sign = "'-' + " if ttl.startswith("-") else ""
    request = f"POST {url} headers={{'TTL': {sign}'9' * {len(ttl.lstrip('-'))}}}"
    verdict = judge(Answer.of(response), request)
    error = verdict.error
    assert response.status_code == status, request
    if error is None:
        assert response.headers["TTL"] == str(MAX_TTL)
    else:
        assert error["errno"] == errno


# ---- summary ------------------------------------------------------------------------


def test_summary(capsys: pytest.CaptureFixture[str]) -> None:
    """Say what the run proved (runs last: pytest keeps the file's order)."""
    live = " ".join(f"{key[5:]}:{n}" for key, n in sorted(TALLY.items(), key=str) if key.startswith("live:"))
    front = " ".join(f"{key[6:]}:{n}" for key, n in sorted(TALLY.items()) if key.startswith("front:")) or "none"
    line = (f"fuzz (seed {SEED}): cases={TALLY['cases']} (schemathesis={TALLY['schemathesis']} live={TALLY['live']})"
            f" 5xx={TALLY['5xx']} 2xx={TALLY['2xx']} 4xx={TALLY['4xx']} refused by gunicorn: {front}"
            f" | live by status/errno: {live}")
    with capsys.disabled():
        print(f"\n{line}")
    assert TALLY["5xx"] == 0
