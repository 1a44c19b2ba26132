"""The fuzz oracle (``tests.support.fuzzing.judge``) on answers from real servers.

The fuzz tests let through exactly the refusals HTTP prescribes from the server in
front of the app (400, 414, 431, 501, with that server's own page) and fail
everything else at or above 500. These tests produce each refusal for real, over
raw sockets, from a real gunicorn endpoint node and (where nginx is installed)
from real nginx running ``deploy/nginx.conf``, and check that the oracle tells
them from the app's answers; then that the app's JSON body under one of those
statuses, and the front's page under any other status (nginx's real 502 among
them), still fail.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.fuzzing import Answer, judge, server_front
from tests.support.nginx import Certificate, Nginx, find_nginx, make_certificate, render, site_values
from tests.support.processes import free_port
from tests.support.stack import Stack, start_stack

PUBLIC_HOST = "push.example.test"
LIMIT = 8190  # gunicorn's default limit_request_line and limit_request_field_size

# What a fuzzer (or an attacker) can send that the front refuses before the app runs.
REFUSED = {
    "unknown transfer coding": (b"POST /wpush/v1/abc HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip2\r\n"
                                b"Content-Length: 2\r\n\r\nxx", 501),
    "request line too long": (b"GET /" + b"a" * (LIMIT + 10) + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414),
    "header field too large": (b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"b" * (LIMIT + 10) + b"\r\n\r\n", 431),
    "malformed header name": (b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n", 400),
    "malformed request line": (b"NOT A REQUEST\r\n\r\n", 400),
}


def parse_answer(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Answer(int(status_line.split()[1]), headers, body)


def exchange(sock: socket.socket, request: bytes) -> Answer:
    """Send ``request`` and read the answer until the server closes (every case here closes).

    A server that refuses a request before reading all of it closes with bytes unread,
    which resets the connection after its answer: the answer read so far is kept.
    """
    with sock:
        sock.settimeout(10)
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may answer and hang up before taking the whole request
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:
            pass
    return parse_answer(b"".join(chunks))


# ---- gunicorn ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "fuzz-oracle")


def gunicorn_answer(stack: Stack, request: bytes) -> Answer:
    return exchange(socket.create_connection(("127.0.0.1", stack.endpoint_port)), request)


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_gunicorn_refusals_pass_as_the_front(stack: Stack, case: str) -> None:
    request, status = REFUSED[case]
    answer = gunicorn_answer(stack, request)
    assert (answer.status, answer.headers.get("content-type")) == (status, "text/html"), answer
    assert server_front(answer) == "gunicorn", answer
    assert judge(answer, case).front == "gunicorn"


BAD_TOKEN_PUSH = b"POST /wpush/v1/not-a-token HTTP/1.1\r\nHost: h\r\nTTL: 60\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def test_app_answers_are_judged_by_the_app_rules(stack: Stack) -> None:
    answer = gunicorn_answer(stack, BAD_TOKEN_PUSH)
    assert server_front(answer) is None
    verdict = judge(answer, "bad token")
    assert verdict.front is None and verdict.error is not None
    assert (answer.status, verdict.error["errno"]) == (404, 102)


@pytest.mark.parametrize("status", [400, 414, 431, 501])
def test_the_app_body_under_a_front_status_is_not_the_front(stack: Stack, status: int) -> None:
    """The app's JSON under a front status is the app's answer: its rules apply (≥ 500 fails)."""
    app = gunicorn_answer(stack, BAD_TOKEN_PUSH)
    relabelled = dataclasses.replace(app, status=status)
    assert server_front(relabelled) is None
    if status >= 500:
        with pytest.raises(AssertionError, match=f"^{status} for"):
            judge(relabelled, "app body")
    else:  # a 4xx with a JSON body whose code disagrees: still the app's rules, and they fail it
        with pytest.raises(AssertionError):
            judge(relabelled, "app body")


@pytest.mark.parametrize("status", [500, 502, 503, 504, 505, 413])
def test_the_front_page_under_another_status_fails(stack: Stack, status: int) -> None:
    page = gunicorn_answer(stack, REFUSED["unknown transfer coding"][0])
    relabelled = dataclasses.replace(page, status=status)
    assert server_front(relabelled) is None
    with pytest.raises(AssertionError):
        judge(relabelled, "front page")


def test_a_front_status_without_connection_close_is_not_gunicorn(stack: Stack) -> None:
    page = gunicorn_answer(stack, REFUSED["unknown transfer coding"][0])
    kept_alive = dataclasses.replace(page, headers={**page.headers, "connection": "keep-alive"})
    assert server_front(kept_alive) is None
    with pytest.raises(AssertionError, match="^501 for"):
        judge(kept_alive, "no close")


# ---- nginx ------------------------------------------------------------------------------

NGINX_REFUSED = {
    "unknown transfer coding": (REFUSED["unknown transfer coding"][0], 501),
    "request line too long": (REFUSED["request line too long"][0], 414),
    "header field too large": (REFUSED["header field too large"][0], 400),  # nginx says 400, not 431
    "malformed request line": (REFUSED["malformed request line"][0], 400),
}


@pytest.fixture(scope="module")
def nginx(tmp_path_factory) -> Iterator[tuple[Nginx, Certificate]]:
    """deploy/nginx.conf whose upstreams are closed ports: its own pages only, and a real 502."""
    binary = find_nginx()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs the Debian package nginx")
        pytest.skip("nginx is not installed (Debian package nginx; .ci/run installs it in CI)")
    certificate = make_certificate(tmp_path_factory.mktemp("oracle-tls"), PUBLIC_HOST)
    port, dead = free_port(), free_port()
    site = render(site_values(port, PUBLIC_HOST, certificate, f"127.0.0.1:{dead}", f"127.0.0.1:{dead}"))
    proxy = Nginx(binary, Path(tmp_path_factory.mktemp("oracle-nginx")), site, port).start()
    yield proxy, certificate
    proxy.stop()


def nginx_answer(nginx: tuple[Nginx, Certificate], request: bytes) -> Answer:
    proxy, certificate = nginx
    context = ssl.create_default_context(cafile=str(certificate.ca))
    context.set_alpn_protocols(["http/1.1"])
    raw = socket.create_connection(("127.0.0.1", proxy.port))
    return exchange(context.wrap_socket(raw, server_hostname=PUBLIC_HOST), request)


@pytest.mark.parametrize("case", sorted(NGINX_REFUSED))
def test_nginx_refusals_pass_as_the_front(nginx, case: str) -> None:
    request, status = NGINX_REFUSED[case]
    answer = nginx_answer(nginx, request)
    assert answer.status == status, answer
    assert server_front(answer) == "nginx", answer
    assert judge(answer, case).front == "nginx"


def test_nginx_bad_gateway_fails(nginx) -> None:
    """A real 5xx from the front (its upstream is down) is never excused."""
    answer = nginx_answer(nginx, b"POST /wpush/v1/abc HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n"
                                 b"Connection: close\r\n\r\n")
    assert answer.status == 502, answer
    assert server_front(answer) is None
    with pytest.raises(AssertionError, match="^502 for"):
        judge(answer, "upstream down")
