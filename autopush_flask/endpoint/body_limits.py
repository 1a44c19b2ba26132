"""Request bodies on the endpoint node: capped before they are read, cut off when too slow.

Every request body goes through ``BodyLimits``, a WSGI middleware wrapping
``wsgi.input``:

* **Rate.** The body must arrive at ``min_rate`` bytes/s on average, counted
  from the start of the request, after ``grace`` seconds. Each read waits at
  most until the time its bytes are due (gevent.Timeout); a late one answers
  **408** (errno null: like the 404/405 answers, a protocol-level failure the
  errno table has no number for). A 5 KB push over a 56 kbit/s link takes
  under 1 s; with the defaults (500 B/s after 5 s) it would be allowed 15 s.
  A client trickling 1 byte/s is cut off after ``grace`` + about 2 s.
* **Size.** Routes read their body through ``read_body(limit, …)``, which
  sets Flask's per-request ``max_content_length`` first: a declared
  ``Content-Length`` over the cap is refused before a byte is read, a chunked
  body is read to the cap plus one byte and no further (**413 errno 104**).
* **Connection.** A body the app did not read to its end (an early 4xx, a 413,
  a 408) would otherwise be drained by gunicorn before the next request on the
  connection, for as long as the client cares to send. Up to ``DRAIN_LIMIT``
  bytes arriving within ``DRAIN_SECONDS`` are read and dropped, so an app
  server pushing to a dead subscription keeps its connection; past that, or
  when the body is too slow, the connection is closed after the response
  (``Connection: close``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import gevent
from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from autopush_flask.push_errors import BODY_TOO_SLOW, ErrorKind, PushError

# The largest read waited for as one piece: a late piece is noticed within
# READ_PIECE / min_rate seconds of its due time (about 2 s at 500 B/s).
READ_PIECE = 1024
# An unread remainder up to this size, arriving within DRAIN_SECONDS, is read
# and dropped to keep the connection (gunicorn's threaded worker uses the same
# 64 KiB bound). A body already sent is in the socket buffer by then.
DRAIN_LIMIT = 64 * 1024
DRAIN_SECONDS = 1.0

StartResponse = Callable[..., Any]


def too_slow() -> PushError:
    return PushError(BODY_TOO_SLOW)


class PacedInput:
    """``wsgi.input`` whose reads must keep up a minimum average rate.

    Also remembers whether the body was read to its end, so the middleware
    knows when the connection cannot be reused.
    """

    def __init__(
        self,
        stream: Any,
        content_length: int | None,
        chunked: bool,
        due: Callable[[int], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._stream = stream
        self._remaining = content_length  # None: chunked or no length given
        self._expects_body = chunked or bool(content_length)
        self._due = due
        self._clock = clock
        self.bytes_read = 0
        self.at_end = False
        self.cut_off = False  # a read was too slow: the body is abandoned

    @property
    def unfinished(self) -> bool:
        """A body was announced and not read to its end."""
        return self._expects_body and not self.at_end

    def read(self, size: int | None = -1) -> bytes:
        wanted = float("inf") if size is None or size < 0 else size
        pieces = []
        while wanted > 0 and not self.at_end:
            piece = self._read_piece(int(min(wanted, READ_PIECE)))
            pieces.append(piece)
            wanted -= len(piece)
        return b"".join(pieces)

    def drain(self, limit: int) -> bool:
        """Read and drop the rest of the body, up to ``limit`` bytes; whether it ended."""
        if not self.unfinished:
            return True
        if self.cut_off or (self._remaining is not None and self._remaining > limit):
            return False
        with gevent.Timeout(DRAIN_SECONDS, False):  # False: just leave the block
            try:
                self.read(limit)
            except Exception:  # noqa: BLE001 - too slow, malformed chunks, a disconnect: unusable either way
                return False
        return not self.unfinished

    def readline(self, size: int | None = -1) -> bytes:
        limit = READ_PIECE if size is None or size < 0 else min(size, READ_PIECE)
        line = self._paced(lambda: self._stream.readline(limit), limit)
        self._count(line, len(line) if line.endswith(b"\n") else limit)
        return line

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _read_piece(self, size: int) -> bytes:
        if self._remaining is not None:
            size = min(size, self._remaining)
        if size <= 0:
            self.at_end = True
            return b""
        data = self._paced(lambda: self._stream.read(size), size)
        self._count(data, size)
        return data

    def _paced(self, read: Callable[[], bytes], size: int) -> bytes:
        """``read()``, interrupted with a 408 once ``size`` more bytes are overdue."""
        allowed = self._due(self.bytes_read + size) - self._clock()
        if allowed == float("inf"):
            return read()
        try:
            if allowed <= 0:
                raise too_slow()
            with gevent.Timeout(allowed, too_slow()):
                return read()
        except PushError:
            self.cut_off = True
            raise

    def _count(self, data: bytes, asked: int) -> None:
        self.bytes_read += len(data)
        if self._remaining is not None:
            self._remaining -= len(data)
        if len(data) < asked or self._remaining == 0:
            self.at_end = True


class BodyLimits:
    """WSGI middleware pacing every request body and closing connections left unread."""

    def __init__(
        self,
        app: Callable[..., Iterable[bytes]],
        min_rate: int,
        grace: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._app = app
        self._min_rate = min_rate
        self._grace = grace
        self._clock = clock

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        raw = environ["wsgi.input"]
        body = PacedInput(raw, _content_length(environ), _chunked(environ), self._deadline(), self._clock)
        environ["wsgi.input"] = body

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            if not body.drain(DRAIN_LIMIT):
                _close_after_response(raw, start_response)
            return start_response(status, headers, exc_info)

        return self._app(environ, start)

    def _deadline(self) -> Callable[[int], float]:
        """When the body's first ``n`` bytes are due, on ``clock``."""
        started, grace, rate = self._clock(), self._grace, self._min_rate
        if not rate:
            return lambda n: float("inf")
        return lambda n: started + grace + n / rate


def _content_length(environ: dict[str, Any]) -> int | None:
    try:
        length = int(environ.get("CONTENT_LENGTH") or "")
    except ValueError:
        return None
    return length if length >= 0 else None


def _chunked(environ: dict[str, Any]) -> bool:
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def _close_after_response(raw_input: Any, start_response: StartResponse) -> None:
    """Make gunicorn close the connection instead of draining the unread body.

    gunicorn drains an unread body before the next request on a keep-alive
    connection, with no bound but the keep-alive timeout. Its ``Body.failed``
    flag ("where the next request starts is unknown") makes it close instead;
    ``force_close()`` on its response, when the start_response we were handed
    is gunicorn's own, also says ``Connection: close`` to the client.
    """
    if hasattr(raw_input, "failed"):
        raw_input.failed = True
    force_close = getattr(getattr(start_response, "__self__", None), "force_close", None)
    if callable(force_close):
        force_close()


def read_body(limit: int, too_large: ErrorKind) -> bytes:
    """The request body, refused with ``too_large`` (413 errno 104) beyond ``limit`` bytes, unread.

    Werkzeug stops a streamed (chunked) body at ``max_content_length``
    without refusing it, so the cap is one byte more than allowed and the
    length decides: at most ``limit + 1`` bytes are ever read.
    """
    request.max_content_length = limit + 1
    try:
        body = request.get_data(cache=False)
    except RequestEntityTooLarge as error:
        raise PushError(too_large, limit=limit) from error
    if len(body) > limit:
        raise PushError(too_large, limit=limit)
    return body
