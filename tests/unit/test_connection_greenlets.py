"""Greenlets spawned from a client's greenlet leave nothing behind in its frames."""

from __future__ import annotations

import gc
import logging
import tracemalloc
from collections.abc import Callable, Iterator

import gevent
import pytest

from autopush_flask.connection import greenlets


@pytest.fixture
def traced() -> Iterator[None]:
    tracemalloc.start()
    yield
    tracemalloc.stop()


def held_after_spawning(spawn: Callable, depth: int = 20) -> int:
    """Bytes still allocated after a spawn from ``depth`` frames deep, the frames still live."""

    def deep(n: int) -> int:
        if n:
            return deep(n - 1)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        spawn(lambda: None).get()
        gc.collect()
        return tracemalloc.get_traced_memory()[0] - before

    deep(depth)  # warm-up
    return deep(depth)


def test_side_greenlets_create_no_frame_objects_for_the_spawner(traced) -> None:
    # gevent.spawn records ten frames: ~200 bytes of frame object each.
    assert held_after_spawning(greenlets.spawn) < 800


def test_side_greenlets_run_and_time_like_gevent_ones() -> None:
    assert greenlets.spawn(lambda a, b=0: a + b, 1, b=2).get(timeout=5) == 3
    later = greenlets.spawn_later(0.01, lambda: "done")
    assert isinstance(later, gevent.Greenlet)
    assert later.get(timeout=5) == "done"


# ---- errors: the caller's, or logged once as JSON; never gevent's plain-text print ----------


@pytest.fixture
def connection_log(caplog) -> Iterator[pytest.LogCaptureFixture]:
    """Records of ``autopush.connection`` (which does not propagate once logging is set up)."""
    logger = logging.getLogger("autopush")
    attach = not logger.propagate
    if attach:
        logger.addHandler(caplog.handler)
    yield caplog
    if attach:
        logger.removeHandler(caplog.handler)


def test_call_raises_in_the_caller_and_the_hub_prints_nothing(capsys, connection_log) -> None:
    from autopush_flask.db import StorageUnavailable

    def failing() -> None:
        raise StorageUnavailable("query: connection refused", "query")

    with pytest.raises(StorageUnavailable):
        greenlets.call(failing)
    with pytest.raises(ZeroDivisionError):  # a bug too: the caller decides (and logs it)
        greenlets.call(lambda: 1 / 0)
    gevent.sleep(0.01)
    assert capsys.readouterr().err == ""
    assert connection_log.records == []
    assert greenlets.call(lambda a, b=0: a + b, 1, b=2) == 3


def test_an_unwaited_greenlet_s_bug_is_logged_once(capsys, connection_log) -> None:
    greenlets.spawn(lambda: 1 / 0).join(timeout=5)
    gevent.sleep(0.01)
    assert capsys.readouterr().err == ""
    [record] = connection_log.records
    assert record.getMessage() == "background task failed"
    assert record.exc_info[0] is ZeroDivisionError
