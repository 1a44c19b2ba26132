"""gunicorn settings for both node types.

    gunicorn -c gunicorn.conf.py wsgi:connection_app   (WebSocket, port 8080)
    gunicorn wsgi:endpoint_app                          (HTTP API, port 8082)

gunicorn reads this file even without ``-c``, so everything here must suit
both apps. The listening port defaults to ``AUTOPUSH_PORT``, else the node
type's default; an explicit ``--bind`` wins.

Connection workers each own a *slot*: worker slot N serves its private
router on ``AUTOPUSH_ROUTER_PORT + N`` and announces that as its node_id.
The master gives a new worker the lowest slot no live worker holds, so a
replacement takes over the slot of the worker it replaces (docs/architecture.md#processes).

The master validates the node's settings before it binds anything: a bad
or unknown ``AUTOPUSH_*`` variable stops it with one line (exit status 3),
instead of every worker failing the same way. With ``AUTOPUSH_SSL_KEY`` and
``AUTOPUSH_SSL_CERT`` the public listener serves TLS (https, wss); HUP
re-reads them, so a renewed certificate is served by the new workers.
"""

import itertools
import os
import sys

from autopush_flask.config import (
    CONNECTION,
    ENDPOINT,
    WORKER_SLOT_VARIABLE,
    Settings,
    SettingsError,
    load_settings,
)

CONNECTION_APP = "wsgi:connection_app"
ENDPOINT_APP = "wsgi:endpoint_app"
CONNECTION_WORKER = "autopush_flask.connection.worker.ConnectionWorker"
SLOT_VARIABLE = WORKER_SLOT_VARIABLE
# gunicorn's "worker failed to boot" status, as wsgi.py uses it.
BOOT_ERROR_STATUS = 3
DEFAULT_PORTS = {CONNECTION_APP: 8080}
ENDPOINT_DEFAULT_PORT = 8082


def _app_uri() -> str:
    """The WSGI app named on the command line (or ``GUNICORN_CMD_ARGS``)."""
    arguments = sys.argv[1:] + os.environ.get("GUNICORN_CMD_ARGS", "").split()
    return next((a for a in arguments if a.startswith("wsgi:")), "")


def _node_settings(app: str) -> Settings | None:
    """The node's settings, validated in the master; None for another app (benchmarks)."""
    node_type = {CONNECTION_APP: CONNECTION, ENDPOINT_APP: ENDPOINT}.get(app)
    if node_type is None:
        return None
    try:
        return load_settings(node_type, os.environ)
    except SettingsError as error:
        print(error, file=sys.stderr, flush=True)
        raise SystemExit(BOOT_ERROR_STATUS) from None


_app = _app_uri()
_settings = _node_settings(_app)
_port = os.environ.get("AUTOPUSH_PORT") or DEFAULT_PORTS.get(_app, ENDPOINT_DEFAULT_PORT)
bind = [f"0.0.0.0:{_port}"]
# Never preload: the gevent workers monkey-patch after fork, before the app
# (and boto3) is imported.
preload_app = False
worker_class = CONNECTION_WORKER if _app == CONNECTION_APP else "gevent"
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Idle push connections are the connection node's normal state.
worker_connections = 20000 if _app == CONNECTION_APP else 1000
# A stopping connection worker stores its clients' unacknowledged notifications
# and closes them within this; the container's stop timeout must be longer.
graceful_timeout = 25
keepalive = 75
accesslog = None
# The control socket defaults to one path per user; several masters on one
# host (several nodes, tests) would fight over it.
control_socket_disable = True
# TLS on the public listener (the settings checked that both files load).
certfile = _settings.ssl_cert if _settings else None
keyfile = _settings.ssl_key if _settings else None
_dh_param = _settings.ssl_dh_param if _settings else None


def ssl_context(config, default_ssl_context_factory):
    """gunicorn's context (certificate, key, its defaults), plus DH parameters when set.

    Python's server context offers DHE suites to TLS 1.2 clients but cannot
    use them without parameters; TLS 1.3 and ECDHE never need them.
    """
    context = default_ssl_context_factory()
    if _dh_param:
        context.load_dh_params(_dh_param)
    return context


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
