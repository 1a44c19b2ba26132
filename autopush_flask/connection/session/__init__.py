"""One WebSocket client's protocol state, without I/O (docs/architecture.md#the-session-generators-of-effects).

``Session`` (``core.py``) is composed of one mixin per part of the protocol:

- ``hello.py``: identifying the client (docs/protocol.md#hello)
- ``registration.py``: register and unregister (docs/protocol.md#register, docs/protocol.md#unregister)
- ``delivery.py``: direct delivery, acks and nacks, storing what is unacked
  (docs/protocol.md#ack, docs/protocol.md#nack, docs/protocol.md#direct-notifications)
- ``drain.py``: stored delivery, the bookmark, migration
  (docs/protocol.md#stored-messages, docs/architecture.md#monthly-rotation)
- ``base.py``: the shared state, the node context and the steps all of them use
"""

from autopush_flask.connection.session.base import NodeContext, RecentVersions, SessionLimits, SessionStats
from autopush_flask.connection.session.core import Session

__all__ = ["NodeContext", "RecentVersions", "Session", "SessionLimits", "SessionStats"]
