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

The worker class follows the app: a connection app needs ``ConnectionWorker``
(the WebSocket handler and the private router), whatever module path names
it and however gunicorn is started (``gunicorn``, ``python -m gunicorn``,
options from ``GUNICORN_CMD_ARGS``). A contradiction (``--worker-class``
against the app, or a connection app loaded under another name) stops the
node at start-up with one line (exit status 3) rather than serving HTTP
without WebSockets. Started with another config file, none of this runs:
use this one.
"""

import itertools
import os
import sys
from typing import NoReturn

from autopush_flask.config import (
    CONNECTION,
    ENDPOINT,
    NODE_DEFAULTS,
    WORKER_COUNT_VARIABLE,
    WORKER_SLOT_VARIABLE,
    Settings,
    SettingsError,
    load_settings,
)
from autopush_flask.metrics import MultiprocessExposition, prometheus_enabled

CONNECTION_APP = "wsgi:connection_app"
ENDPOINT_APP = "wsgi:endpoint_app"
CONNECTION_WORKER = "autopush_flask.connection.worker.ConnectionWorker"
SLOT_VARIABLE = WORKER_SLOT_VARIABLE
# gunicorn's "worker failed to boot" status, as wsgi.py uses it.
BOOT_ERROR_STATUS = 3
# The node type of an app URI is the attribute it names, whatever the module
# path (``wsgi:connection_app``, ``deploy.entry:connection_app``, ...).
APP_NODE_TYPES = {"connection_app": CONNECTION, "endpoint_app": ENDPOINT}
DEFAULT_PORTS = {node: int(NODE_DEFAULTS[node]["AUTOPUSH_PORT"]) for node in (CONNECTION, ENDPOINT)}
ENDPOINT_DEFAULT_PORT = DEFAULT_PORTS[ENDPOINT]


def _command_line() -> tuple[str, str | None]:
    """The app URI and any ``--worker-class``, exactly as gunicorn reads them.

    gunicorn's own parser over ``sys.argv`` (``gunicorn`` or ``python -m
    gunicorn``, options in any order) and ``GUNICORN_CMD_ARGS``, where gunicorn
    takes options but ignores an app. ``on_starting`` checks the result
    against the app gunicorn really loads.
    """
    from gunicorn.config import Config

    config = Config()
    try:
        arguments = config.parser().parse_args(sys.argv[1:])
        from_env = config.parser().parse_args(config.get_cmd_args_from_env())
    except SystemExit:  # not gunicorn's argv (a script exec'ing this file)
        return "", None
    app_uri = arguments.args[0] if arguments.args else ""
    return app_uri, arguments.worker_class or from_env.worker_class


def node_type_of(app_uri: str) -> str | None:
    """``connection`` / ``endpoint`` for an app URI, None for any other app (benchmarks)."""
    attribute = app_uri.rpartition(":")[2].split("(")[0].strip()
    return APP_NODE_TYPES.get(attribute)


def worker_class_for(node_type: str | None) -> str:
    return CONNECTION_WORKER if node_type == CONNECTION else "gevent"


def _node_settings(node_type: str | None) -> Settings | None:
    """The node's settings, validated in the master; None for another app (benchmarks)."""
    if node_type is None:
        return None
    try:
        return load_settings(node_type, os.environ)
    except SettingsError as error:
        _refuse(str(error))


def _refuse(line: str) -> NoReturn:
    """Stop the master (or a booting worker) with one line and gunicorn's boot-error status."""
    print(line, file=sys.stderr, flush=True)
    raise SystemExit(BOOT_ERROR_STATUS) from None


def check_worker_class(node_type: str | None, worker_class_str: str, app: str) -> None:
    """Refuse a node app under the other node's worker class; other apps (benchmarks) choose freely."""
    if node_type is None:
        return
    needed = worker_class_for(node_type)
    if (worker_class_str == CONNECTION_WORKER) != (needed == CONNECTION_WORKER):
        _refuse(
            f"worker class {worker_class_str!r} cannot serve {app}: it needs {needed!r} "
            "(start it with -c gunicorn.conf.py and no --worker-class)"
        )


_app_uri, _chosen_worker_class = _command_line()
_node_type = node_type_of(_app_uri)
# An explicit --worker-class against the app: refused before gunicorn logs anything.
if _chosen_worker_class:
    check_worker_class(_node_type, _chosen_worker_class, _app_uri)
_settings = _node_settings(_node_type)
_port = os.environ.get("AUTOPUSH_PORT") or DEFAULT_PORTS.get(_node_type, ENDPOINT_DEFAULT_PORT)
bind = [f"0.0.0.0:{_port}"]
# Never preload: the gevent workers monkey-patch after fork, before the app
# (and boto3) is imported.
preload_app = False
worker_class = worker_class_for(_node_type)
workers = int(os.environ.get("WEB_CONCURRENCY", "1"))
# Idle push connections are the connection node's normal state.
worker_connections = 20000 if _node_type == CONNECTION else 1000
# A stopping connection worker stores its clients' unacknowledged notifications
# and closes them within this; the container's stop timeout must be longer.
graceful_timeout = 25
keepalive = 75
# The worker heartbeat file: on tmpfs, because a container's /tmp may sit on
# an overlay or disk-backed filesystem whose fsync stalls look like a hung
# worker to the master.
worker_tmp_dir = "/dev/shm" if os.path.isdir("/dev/shm") else None
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


def on_starting(server) -> None:
    """In the master, before binding: the app gunicorn will load needs the worker class set.

    The app URI comes from gunicorn itself here; it differs from this file's
    guess only when gunicorn is embedded or the app is given some other way,
    and an explicit ``--worker-class`` can contradict the app. A connection
    app under any other worker serves no WebSocket at all, so that stops the
    master with one line instead.
    """
    app_uri = getattr(server.app, "app_uri", None) or ""
    check_worker_class(node_type_of(app_uri), server.cfg.worker_class_str, app_uri)
    _serve_endpoint_metrics(server)


# The endpoint master's Prometheus exposition, kept on the arbiter: it
# outlives this file, which gunicorn reads again on HUP.
METRICS_EXPOSITION = "autopush_metrics_exposition"


def _serve_endpoint_metrics(server) -> None:
    """An endpoint node with Prometheus: its workers write their values to one directory the master serves.

    Here, before any worker forks and before prometheus_client is imported,
    so that every worker inherits ``PROMETHEUS_MULTIPROC_DIR`` (docs/operations.md#metrics).
    Only prometheus_client is imported into the master. A metrics port that
    cannot be bound stops it with one line, before the public port is bound.
    """
    if _settings is None or _settings.node_type != ENDPOINT or not prometheus_enabled(_settings):
        return
    exposition = MultiprocessExposition.prepare()
    try:
        exposition.serve(_settings.metrics_bind, _settings.metrics_port)
    except OSError as error:
        exposition.stop()
        _refuse(f"cannot serve metrics on {_settings.metrics_bind}:{_settings.metrics_port}: {error}")
    setattr(server, METRICS_EXPOSITION, exposition)


def child_exit(server, worker) -> None:
    """In the master: a dead endpoint worker's gauges leave the sums (its counters stay)."""
    exposition = getattr(server, METRICS_EXPOSITION, None)
    if exposition is not None:
        exposition.worker_exited(worker.pid)


def on_exit(server) -> None:
    """In the master: stop serving metrics and remove the directory it created."""
    exposition = getattr(server, METRICS_EXPOSITION, None)
    if exposition is not None:
        exposition.stop()


def post_worker_init(worker) -> None:
    """In the worker, once the app is loaded: the loaded object decides, whatever it is called.

    A connection app carries its node (``app.node``); under a worker that is
    not ``ConnectionWorker`` it would answer HTTP but never upgrade a
    WebSocket. Exiting with the boot-error status stops the master too, so
    the mistake is one line at start-up, not a node that silently drops
    every client.
    """
    if hasattr(worker.wsgi, "node"):
        check_worker_class(CONNECTION, worker.cfg.worker_class_str, "a connection app")


def _is_connection_worker(server) -> bool:
    return server.cfg.worker_class_str == CONNECTION_WORKER


def pre_fork(server, worker):
    """In the master: give the new worker the lowest free slot."""
    if not _is_connection_worker(server):
        return
    held = {getattr(w, "autopush_slot", None) for w in server.WORKERS.values()}
    worker.autopush_slot = next(slot for slot in itertools.count() if slot not in held)


def post_fork(server, worker):
    """In the worker: tell the app factory its slot, and how many workers the master keeps (the admin view)."""
    exposition = getattr(server, METRICS_EXPOSITION, None)
    if exposition is not None:  # the master's metrics socket is not the worker's to hold open
        exposition.in_worker()
    slot = getattr(worker, "autopush_slot", None)
    if slot is not None:
        os.environ[SLOT_VARIABLE] = str(slot)
        os.environ[WORKER_COUNT_VARIABLE] = str(server.num_workers)
