"""Small socket helpers shared by the fake peers."""

from __future__ import annotations

import socket


def close_quietly(sock: socket.socket) -> None:
    """Shut down both directions (the peer sees the close at once) and close."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
