"""Writing to a gevent socket without ``sendall``'s fixed cost.

gevent's ``sendall`` asks the kernel for the socket's send-buffer size
(``getsockopt``, a system call) on every call, to cut what it sends into
pieces. The connection worker writes two small things per direct
notification, the WebSocket frame and the router's answer, and profiled
(py-spy, 12 s of direct pushes) that question alone was 3 % of its busy
samples. Both almost always fit in one ``send``; only what it leaves goes
through ``sendall``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def send_whole(sock: Any, data: bytes | bytearray, sendall: Callable[[Any], None] | None = None) -> int:
    """Write all of ``data``: one ``send`` when it takes everything, else ``sendall``
    (``sock.sendall`` unless another is given) for the rest; returns what ``send`` took.

    An error on the first ``send`` is left to ``sendall``, which meets it
    again and raises it as it always has.
    """
    try:
        sent = sock.send(data)
    except OSError:
        sent = 0
    if sent < len(data):
        (sendall or sock.sendall)(memoryview(data)[sent:])
    return sent
