"""What every fuzz test shares: its seed, how to replay it, and the HTTP oracle.

Seed. ``FUZZ_SEED`` (an integer, or ``random`` for a fresh one) seeds the frame
fuzzer, schemathesis and hypothesis alike; the default is fixed, so a run is
repeatable (up to thread timing in the frame fuzzer). Each fuzz test prints
one line to copy that replays it, and the same line is attached to its failure
report (see ``fuzz_seed``). The variable is deliberately not ``AUTOPUSH_*``: test fixtures hand
their environment to the nodes, and the nodes refuse unknown ``AUTOPUSH_*``
variables.

Oracle. An endpoint answer is judged by the service's rules (no 5xx when no
outage is injected; every error is the JSON body of ``code``/``errno``/…)
unless it is a rejection by the HTTP server in front of the app: gunicorn's
parser, or nginx in a deployment. Those answer before any app code runs, with
their own HTML page, and HTTP prescribes their status: 400 for a malformed
request, 414 for a request line over the limit, 431 for header fields over
the limit, 501 for a transfer coding the server does not implement (RFC 9112
docs/protocol.md#bridges). Only those four, and only with the front's own page, pass; any other
5xx, or one of those statuses with the app's JSON body, is judged by the
app's rules and fails.
"""

from __future__ import annotations

import json
import os
import random
import re
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import requests

SEED_VARIABLE = "FUZZ_SEED"
DEFAULT_SEED = 4774
SCALE_VARIABLE = "FUZZ_SCALE"


def _seed_from_environment() -> int:
    text = os.environ.get(SEED_VARIABLE, "").strip().lower()
    if not text:
        return DEFAULT_SEED
    if text == "random":
        return random.SystemRandom().randrange(2**32)
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{SEED_VARIABLE}={text!r}: expected an integer or 'random'") from None


# Read once per process, so ``FUZZ_SEED=random`` gives every fuzz test the same seed.
SEED = _seed_from_environment()


def replay_command(*args: str) -> str:
    """A shell line that runs pytest on ``args`` with this run's seed and scale."""
    scale = os.environ.get(SCALE_VARIABLE, "").strip() or "ci"
    return f"{SEED_VARIABLE}={SEED} {SCALE_VARIABLE}={scale} .venv/bin/python -m pytest {shlex.join(args)}"


@pytest.fixture
def fuzz_seed(request: pytest.FixtureRequest) -> int:
    """Print the seed and how to replay as the test starts; repeat them in its failure report.

    Two commands: the run exactly as invoked, which sends the same frames and requests
    again on the same tree, and the test alone. Alone, the frame fuzzer still repeats
    itself, but hypothesis (under schemathesis too) mixes constants from every project
    module loaded into its cases, so a smaller selection can shift them.
    """
    invoked = request.config.invocation_params.args or ("tests",)
    line = (f"fuzz seed {SEED}; replay the run:  {replay_command(*invoked)}\n"
            f"{' ' * len(str(SEED))}           this test alone: "
            f"{replay_command(request.node.nodeid, '-p', 'no:cacheprovider')}")
    plugins = request.config.pluginmanager
    reporter, capture = plugins.get_plugin("terminalreporter"), plugins.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        with capture.global_and_fixture_disabled():  # shown even though output is captured
            reporter.write(f"\n{line}\n")  # own line even after -q's progress dots
    request.node.add_report_section("call", "fuzz seed", line)
    return SEED


# ---- the oracle ------------------------------------------------------------------------

ERROR_FIELDS = {"code", "errno", "error", "message", "more_info"}
# What HTTP prescribes for a request the front refuses before the app sees it.
FRONT_STATUSES = frozenset({400, 414, 431, 501})
# gunicorn.util.write_error: a fixed page (its 501 keeps the title "Bad Request"), and the
# connection is closed.
GUNICORN_PAGE = re.compile(
    r"<html>\n  <head>\n    <title>(?P<reason>[A-Za-z -]+)</title>\n  </head>\n  <body>\n"
    r"    <h1><p>(?P=reason)</p></h1>\n    [^\n]*\n  </body>\n</html>\n"
)
# nginx's built-in error pages (ngx_http_special_response.c), with or without the version
# (server_tokens), possibly followed by the padding comments it adds for old browsers.
NGINX_PAGE = re.compile(
    r"<html>\r\n<head><title>(?P<status>\d{3}) [^<\r\n]+</title></head>\r\n<body>\r\n"
    r"<center><h1>(?P=status) [^<\r\n]+</h1></center>\r\n(?:<center>[^<\r\n]+</center>\r\n)?"
    r"<hr><center>nginx(?:/[0-9.]+)?</center>\r\n</body>\r\n</html>\r\n(?:<!-- [^\r\n]* -->\r\n)*"
)


@dataclass(frozen=True)
class Answer:
    """An HTTP response reduced to what the oracle reads (header names lower-case)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    @classmethod
    def of(cls, response: Any) -> Answer:
        """From a ``requests.Response`` or a schemathesis ``Response`` (list-valued headers)."""
        headers = {}
        for name, value in response.headers.items():
            headers[name.lower()] = value[0] if isinstance(value, list) else value
        return cls(response.status_code, headers, response.content)


@dataclass(frozen=True)
class Verdict:
    front: str | None = None  # "gunicorn" or "nginx" when the server front refused the request
    error: dict | None = None  # the app's error body, for an app error


def server_front(answer: Answer) -> str | None:
    """Which front refused the request before the app, if one did (else ``None``)."""
    if answer.status not in FRONT_STATUSES:
        return None
    content_type = answer.headers.get("content-type", "")
    if content_type.split(";")[0].strip().lower() != "text/html":
        return None
    text = answer.body.decode("latin-1")
    if answer.headers.get("connection", "").lower() == "close" and GUNICORN_PAGE.fullmatch(text):
        return "gunicorn"
    match = NGINX_PAGE.fullmatch(text)
    if match and int(match["status"]) == answer.status and answer.headers.get("server", "").startswith("nginx"):
        return "nginx"
    return None


def judge(answer: Answer, request: str) -> Verdict:
    """Accept a front rejection; otherwise no 5xx, and an error has the app's JSON body.

    ``request`` (a curl command or a description) goes into every failure message,
    so a failing case shows exactly what was sent.
    """
    front = server_front(answer)
    if front is not None:
        return Verdict(front=front)
    shown = f"{answer.status} for {request}\n{answer.body[:500]!r}"
    assert answer.status < 500, shown
    if answer.status < 400:
        return Verdict()
    content_type = answer.headers.get("content-type")
    assert content_type == "application/json", f"{content_type!r}: {shown}"
    error = json.loads(answer.body)
    assert isinstance(error, dict) and set(error) == ERROR_FIELDS, shown
    assert error["code"] == answer.status, shown
    assert error["errno"] is None or type(error["errno"]) is int, shown
    assert all(isinstance(error[name], str) for name in ("error", "message", "more_info")), shown
    return Verdict(error=error)


@pytest.fixture
def schemathesis_nodeid_shim(request: pytest.FixtureRequest) -> None:
    """schemathesis 4.32.5's ``from_fixture`` tests read and write ``request.node._nodeid``,
    which pytest 9.2 no longer has (nodes keep ``_id``; ``nodeid`` is a read-only property).
    Giving the item the attribute lets them run; only their cosmetic renaming of the
    node id is lost (subtests are still labelled with the operation)."""
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


# ---- fixtures the fuzzing modules share (imported there by name; each module has its own ``stack``)


@pytest.fixture(scope="module")
def http(stack: Any) -> Iterator[requests.Session]:
    """One keep-alive session for a module's requests to its stack."""
    with requests.Session() as session:
        yield session


@pytest.fixture(scope="module")
def api_schema(stack: Any) -> Any:
    """The schema exactly as the running endpoint serves it, generating from ``FUZZ_SEED``
    (an explicit seed wins over ``derandomize``)."""
    import schemathesis

    loaded = schemathesis.openapi.from_url(f"{stack.endpoint_url}/openapi.json", timeout=10)
    loaded.config.seed = SEED
    return loaded
