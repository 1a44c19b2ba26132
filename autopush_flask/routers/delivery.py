"""How an accepted message leaves the endpoint: stamped once, then handed to its deliverer.

"Router" names three different things in this project: the connection
node's internal ``PUT /push`` API, the ``router_type``/``router_data`` of a
stored record, and the classes in this package. Here the last are
*deliverers*: one per ``router_type``, each taking a stamped notification to
a connection node, storage or a mobile platform. The endpoint handler sees
only ``Dispatcher.dispatch`` and the ``Delivery`` it returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, cast

from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User
from autopush_flask.db.models import SortKeyClock

# Destination labels: the ``destination`` tag of the success metrics.
DIRECT = "Direct"  # taken by the browser's node or the mobile platform
STORED = "Stored"  # in the message table until the browser connects
EXPIRED = "Expired"  # TTL 0 and nobody to take it: discarded


@dataclass(frozen=True)
class Delivery:
    """What became of a message the endpoint accepted."""

    destination: str  # DIRECT, STORED or EXPIRED
    message_id: str  # the version it was stamped with: the 201's ``Location``


class Deliverer(Protocol):
    """Delivery for one ``router_type``; refuses with ``PushError``."""

    def route(self, user: User, notification: Notification) -> str:
        """Deliver a stamped notification; returns its destination label (``DIRECT``…)."""
        ...


class MessageStamper:
    """Gives a notification its message id and, unless it has a topic, its sort-key time.

    Stamped once, when the endpoint accepts the message and before it is
    offered to a connection node; a message the node does not take is stored
    under that same stamp. Stamping again at store time would hand a message
    the node may already have delivered (its answer came too late) a second
    version, and the browser would get it twice.

    The stamp can therefore be older than a later message that was stored,
    delivered and acknowledged while this one waited: for the node (at most
    ``AUTOPUSH_NODE_REQUEST_TIMEOUT``, 3 s by default) and for its own write
    (three attempts of at most 10 s each by the storage client).
    That is safe because a drain never stores a bookmark later than its own
    start minus ``AUTOPUSH_BOOKMARK_MARGIN`` (60 s by default, a connection
    node setting that must stay above this wait): a message written that
    late still sorts after the bookmark and is read.
    """

    def __init__(self, crypto_keys: CryptoKeys, clock: SortKeyClock) -> None:
        self._keys = crypto_keys
        self._clock = clock

    def stamp(self, uaid: str, notification: Notification) -> None:
        if not notification.topic:
            notification.sortkey_timestamp = self._clock.next()
        notification.version = MessageId.for_notification(uaid, notification).encode(self._keys)


class Dispatcher:
    """Stamps each accepted message once and hands it to the deliverer of its record's type."""

    def __init__(self, stamper: MessageStamper, deliverers: Mapping[str, Deliverer]) -> None:
        self._stamper = stamper
        self._deliverers = dict(deliverers)

    def dispatch(self, user: User, notification: Notification) -> Delivery:
        """The one stamp the message keeps, delivered or stored (see ``MessageStamper``)."""
        self._stamper.stamp(user.uaid, notification)
        # the endpoint accepts only records of a known router type (endpoint/webpush.py)
        destination = self._deliverers[cast(str, user.router_type)].route(user, notification)
        return Delivery(destination, notification.version)
