"""gunicorn settings for both node types.

    gunicorn -c gunicorn.conf.py wsgi:connection_app   (WebSocket, port 8080)
    gunicorn wsgi:endpoint_app                          (HTTP API, port 8082)

gunicorn reads this file even without ``-c``, so everything here must suit
both apps. The listening port defaults to ``AUTOPUSH_PORT``, else the node
type's default; an explicit ``--bind`` wins.

Connection workers each own a *slot*: worker slot N serves its private
router on ``AUTOPUSH_ROUTER_PORT + N`` and announces that as its node_id.
The master gives a new worker the lowest slot no live worker holds, so a
replacement takes over the slot of the worker it replaces (DESIGN §1).
"""

import itertools
import os
import sys

CONNECTION_APP = "wsgi:connection_app"
CONNECTION_WORKER = "autopush_flask.connection.worker.ConnectionWorker"
SLOT_VARIABLE = "AUTOPUSH_WORKER_SLOT"
DEFAULT_PORTS = {CONNECTION_APP: 8080}
ENDPOINT_DEFAULT_PORT = 8082


def _app_uri() -> str:
    """The WSGI app named on the command line (or ``GUNICORN_CMD_ARGS``)."""
    arguments = sys.argv[1:] + os.environ.get("GUNICORN_CMD_ARGS", "").split()
    return next((a for a in arguments if a.startswith("wsgi:")), "")


_app = _app_uri()
_port = os.environ.get("AUTOPUSH_PORT") or DEFAULT_PORTS.get(_app, ENDPOINT_DEFAULT_PORT)
bind = [f"0.0.0.0:{_port}"]
# Never preload: the gevent workers monkey-patch after fork, before the app
# (and boto3) is imported.
preload_app = False
worker_class = CONNECTION_WORKER if _app == CONNECTION_APP else "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Idle push connections are the connection node's normal state.
worker_connections = 20000 if _app == CONNECTION_APP else 1000
graceful_timeout = 25
keepalive = 75
accesslog = None
# The control socket defaults to one path per user; several masters on one
# host (several nodes, tests) would fight over it.
control_socket_disable = True


def _is_connection_worker(server) -> bool:
    return server.cfg.worker_class_str == CONNECTION_WORKER


def pre_fork(server, worker):
    """In the master: give the new worker the lowest free slot."""
    if not _is_connection_worker(server):
        return
    held = {getattr(w, "autopush_slot", None) for w in server.WORKERS.values()}
    worker.autopush_slot = next(slot for slot in itertools.count() if slot not in held)


def post_fork(server, worker):
    """In the worker: tell the app factory its slot."""
    slot = getattr(worker, "autopush_slot", None)
    if slot is not None:
        os.environ[SLOT_VARIABLE] = str(slot)
