"""gunicorn settings for both node types.

    gunicorn -c gunicorn.conf.py wsgi:connection_app   (WebSocket, port 8080)
    gunicorn wsgi:endpoint_app                          (HTTP API, port 8082)

gunicorn reads this file even without ``-c``, so everything here must suit
both apps. The listening port defaults to ``AUTOPUSH_PORT``, else the node
type's default; an explicit ``--bind`` wins.
"""

import os
import sys

CONNECTION_APP = "wsgi:connection_app"
DEFAULT_PORTS = {CONNECTION_APP: 8080}
ENDPOINT_DEFAULT_PORT = 8082


def _app_uri() -> str:
    """The WSGI app named on the command line (or ``GUNICORN_CMD_ARGS``)."""
    arguments = sys.argv[1:] + os.environ.get("GUNICORN_CMD_ARGS", "").split()
    return next((a for a in arguments if a.startswith("wsgi:")), "")


_port = os.environ.get("AUTOPUSH_PORT") or DEFAULT_PORTS.get(_app_uri(), ENDPOINT_DEFAULT_PORT)
bind = [f"0.0.0.0:{_port}"]
# Never preload: the gevent worker monkey-patches after fork, before the
# app (and boto3) is imported (DESIGN §1).
preload_app = False
worker_class = "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
worker_connections = 10000
graceful_timeout = 25
keepalive = 75
accesslog = None
