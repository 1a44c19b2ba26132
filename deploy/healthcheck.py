#!/usr/bin/env python3
"""Container health check for either node type (the Dockerfile's HEALTHCHECK).

One image runs both nodes, so the check cannot hard-code a port: it reads
the gunicorn command of the container (``/proc/1/cmdline``, after any init
such as ``docker run --init``) and asks the same port gunicorn.conf.py binds:
``--bind`` on the command line or in ``GUNICORN_CMD_ARGS``, else
``AUTOPUSH_PORT``, else the node type's default.

It polls ``/__lbheartbeat__``, which answers without touching the store:
a store outage must not mark every node unhealthy and have them restarted
(``/health`` reports the tables; it is for operators and monitoring).
Exit status 0 when the node answers 200, 1 otherwise (Docker's convention).

    python deploy/healthcheck.py [--cmdline FILE] [--print-url]
"""

from __future__ import annotations

import os
import shlex
import ssl
import sys
import urllib.request
from pathlib import Path

ROUTE = "/__lbheartbeat__"
TIMEOUT_SECONDS = 3.0
# The defaults of autopush_flask/config.py (AUTOPUSH_PORT per node type);
# tests/docs/test_compose.py checks they agree.
DEFAULT_PORTS = {"connection_app": 8080, "endpoint_app": 8082}
FALLBACK_PORT = DEFAULT_PORTS["endpoint_app"]


def gunicorn_arguments(cmdline: list[str]) -> list[str]:
    """The arguments after ``gunicorn`` (or ``-m gunicorn``), whatever runs it."""
    for index, part in enumerate(cmdline):
        if part == "gunicorn" or part.endswith("/gunicorn"):
            return cmdline[index + 1:]
    return []


def bound_port(arguments: list[str]) -> int | None:
    """The port of the last ``--bind``/``-b`` (gunicorn's own rule: the last one wins)."""
    port = None
    for index, part in enumerate(arguments):
        value = None
        if part in ("-b", "--bind") and index + 1 < len(arguments):
            value = arguments[index + 1]
        elif part.startswith("--bind="):
            value = part.split("=", 1)[1]
        if value and ":" in value and not value.startswith("unix:"):
            port = int(value.rsplit(":", 1)[1])
    return port


def node_port(cmdline: list[str], environ: dict[str, str]) -> int:
    arguments = gunicorn_arguments(cmdline)
    port = bound_port(arguments) or bound_port(shlex.split(environ.get("GUNICORN_CMD_ARGS", "")))
    if port:
        return port
    if environ.get("AUTOPUSH_PORT"):
        return int(environ["AUTOPUSH_PORT"])
    apps = [part.rpartition(":")[2] for part in arguments if ":" in part and not part.startswith("-")]
    return next((DEFAULT_PORTS[app] for app in apps if app in DEFAULT_PORTS), FALLBACK_PORT)


def heartbeat_url(cmdline: list[str], environ: dict[str, str]) -> str:
    """TLS on the public listener (``AUTOPUSH_SSL_CERT``) makes it https."""
    scheme = "https" if environ.get("AUTOPUSH_SSL_CERT") else "http"
    return f"{scheme}://127.0.0.1:{node_port(cmdline, environ)}{ROUTE}"


def main(argv: list[str]) -> int:
    cmdline_file = Path(argv[argv.index("--cmdline") + 1] if "--cmdline" in argv else "/proc/1/cmdline")
    cmdline = [part.decode() for part in cmdline_file.read_bytes().split(b"\0") if part]
    url = heartbeat_url(cmdline, dict(os.environ))
    if "--print-url" in argv:
        print(url)
        return 0
    # The certificate names the public host, not 127.0.0.1: only liveness is checked here.
    context = ssl._create_unverified_context() if url.startswith("https") else None
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_SECONDS, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as error:
        print(f"{url}: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
