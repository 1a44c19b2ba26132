"""Bridged records whose bridge is not configured on this endpoint node.

SPEC §6.2/§6.3: a record naming an FCM app id or an APNs channel this node
has no credentials for is answered 400 (FCM: errno 106). The FCM and APNs
routers replace these when their credentials are configured.
"""

from __future__ import annotations

from autopush_flask.db import Notification, User
from autopush_flask.endpoint.errors import PushError

UNCONFIGURED = {
    "fcm": (106, "Unknown FCM app id"),
    "apns": (None, "Unknown release channel"),
}


class UnconfiguredBridge:
    def __init__(self, router_type: str) -> None:
        self.errno, self.message = UNCONFIGURED[router_type]

    def route(self, user: User, notification: Notification) -> str:
        raise PushError(400, self.errno, self.message)
