"""Greenlets spawned from a client's greenlet leave nothing behind in its frames."""

from __future__ import annotations

import gc
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
