"""gunicorn settings of ``gunicorn.conf.py`` plus a memory report on SIGUSR2 (benchmarks).

    gunicorn -c scripts/bench/gunicorn_diag.conf.py ...

On SIGUSR2 the worker writes a JSON report of its allocators (glibc
``mallinfo2``, pymalloc's arena statistics, greenlet and thread counts) to
``$BENCH_DIAG_DIR/<pid>.json``; ``connections.py --breakdown`` reads it.
"""

import os
from pathlib import Path

_ROOT = Path(__file__).resolve().parents[2]
exec(compile((_ROOT / "gunicorn.conf.py").read_text(), str(_ROOT / "gunicorn.conf.py"), "exec"))


def post_worker_init(worker):
    import signal

    import gevent

    from scripts.bench.memory import write_report

    directory = os.environ.get("BENCH_DIAG_DIR", "/tmp")
    gevent.signal_handler(signal.SIGUSR2, write_report, directory)
    (Path(directory) / f"{os.getpid()}.ready").touch()
