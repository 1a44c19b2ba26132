"""Greenlets that a client's greenlet starts: storage calls, node requests, timers.

gevent records, for debugging, the newest ten frames of whoever spawns a
greenlet. Reading them makes CPython 3.11 create a frame object for each,
and such an object stays allocated until its frame returns. Spawned from a
client's greenlet, most of those frames are its reading loop's, which
return only when the client leaves: ~1.4 KiB held for every client that
ever made a storage call. These greenlets record no spawning stack.

gevent's hub prints a plain-text traceback (30–40 lines) for every greenlet
that ends with an exception, even when a caller collects the exception with
``get()`` and handles it, as every storage error of a session is. So no
greenlet started here ends with an exception: ``call`` hands it to the
waiting caller, and the fire-and-forget ``spawn``/``spawn_later`` log it
once, as JSON, since nobody else will.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import gevent

log = logging.getLogger("autopush.connection")


class SideGreenlet(gevent.Greenlet):
    spawning_stack_limit = 0


class _Raised:
    """An exception carried out of a side greenlet as its result."""

    __slots__ = ("error",)

    def __init__(self, error: Exception) -> None:
        self.error = error


def _outcome(function: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    try:
        return function(*args, **kwargs)
    except Exception as error:  # noqa: BLE001 - raised again in the caller by ``call``
        return _Raised(error)


def _logged(function: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
    try:
        return function(*args, **kwargs)
    except Exception:  # nobody waits for this greenlet: say it once
        log.exception("background task failed")
        return None


def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``function`` in a side greenlet and wait: its result, or its exception raised here."""
    result = SideGreenlet.spawn(_outcome, function, args, kwargs).get()
    if isinstance(result, _Raised):
        raise result.error
    return result


def spawn(function: Callable[..., Any], *args: Any, **kwargs: Any) -> SideGreenlet:
    """Start ``function`` and do not wait; an exception it raises is logged (its result is ``None``)."""
    return SideGreenlet.spawn(_logged, function, args, kwargs)


def spawn_later(delay: float, function: Callable[..., Any], *args: Any, **kwargs: Any) -> SideGreenlet:
    """``spawn`` after ``delay`` seconds."""
    return SideGreenlet.spawn_later(delay, _logged, function, args, kwargs)
