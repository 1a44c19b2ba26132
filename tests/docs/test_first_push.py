"""README "First push in five minutes": its Python blocks, run as written against a real service.

The blocks are read from README.md at test time; only the WebSocket URL is
pointed at the test's own service (the README's is `make run`'s fixed
port). So a change to the walkthrough that breaks it fails here, and the
README cannot drift from what the service does. The second test runs the
same blocks through deploy/nginx.conf rendered as docker-compose.yml
renders it, the layout `docker compose up` gives Firefox.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from pathlib import Path

import pytest

from tests.docs.test_compose import SERVICES, render_nginx
from tests.support.nginx import Nginx, find_nginx
from tests.support.processes import free_port
from tests.support.stack import start_stack

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
SECTION = "## First push in five minutes"
MAKE_RUN_WS_URL = "ws://localhost:8080/"  # README's service table, `make run`
MESSAGE = b"Hello from the app server"


def section(title: str) -> str:
    start = README.index(title)
    end = README.find("\n## ", start + len(title))
    return README[start:end if end != -1 else None]


def python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", section(SECTION), re.DOTALL)


def run_walkthrough(ws_url: str) -> list[str]:
    """Every block in one namespace, like one interpreter session; what they printed, by line."""
    blocks = python_blocks()
    assert blocks[0].count(MAKE_RUN_WS_URL) == 1
    blocks[0] = blocks[0].replace(MAKE_RUN_WS_URL, ws_url)
    namespace: dict = {"__name__": "__readme__"}
    output = io.StringIO()
    try:
        with contextlib.redirect_stdout(output):
            for block in blocks:
                exec(compile(block, "README.md", "exec"), namespace)
    finally:
        # The session's objects hold sockets: the browser's WebSocket, and the
        # push response's connection, which would keep the endpoint node's
        # graceful stop waiting for it (10 s per test).
        for name in ("browser", "response"):
            if namespace.get(name) is not None:
                namespace[name].close()
        namespace.clear()
    return output.getvalue().splitlines()


def test_walkthrough_has_its_three_steps_and_commands() -> None:
    text = section(SECTION)
    assert len(python_blocks()) == 3
    assert "```sh\nmake run\n```" in text
    assert f"`dom.push.serverURL` to\n`{MAKE_RUN_WS_URL}`" in text
    assert f"| connection node | `{MAKE_RUN_WS_URL}`" in README
    assert "`ws://localhost:8090/`" in text  # the compose stack's nginx
    for block in python_blocks():
        compile(block, "README.md", "exec")


def check_output(printed: list[str], endpoint_base: str) -> None:
    hello_status, endpoint, push_status, message = printed
    assert hello_status == "200"
    assert endpoint.startswith(f"{endpoint_base}/wpush/v2/")
    assert push_status == "201"
    assert message == repr(MESSAGE)


def test_walkthrough_delivers_a_push(request: pytest.FixtureRequest) -> None:
    stack = start_stack(request, "first-push")
    check_output(run_walkthrough(stack.ws_url), stack.endpoint_url)


def test_walkthrough_through_the_compose_nginx(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    binary = find_nginx()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs the Debian package nginx")
        pytest.skip("nginx is not installed")
    port = free_port()
    public = f"http://127.0.0.1:{port}"
    stack = start_stack(request, "first-push-nginx", AUTOPUSH_ENDPOINT_URL=public, AUTOPUSH_PROXY_FIX="true")
    environ = {
        **SERVICES["nginx"]["environment"], "LISTEN": f"127.0.0.1:{port}",
        "CONNECTION_UPSTREAM": f"127.0.0.1:{stack.connection.port}",
        "ENDPOINT_UPSTREAM": f"127.0.0.1:{stack.endpoint_port}",
    }
    nginx = Nginx(binary, tmp_path / "nginx", render_nginx(environ), port).start()
    request.addfinalizer(nginx.stop)
    check_output(run_walkthrough(f"ws://127.0.0.1:{port}/"), public)
