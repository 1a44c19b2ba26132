"""The ``stub`` bridge: deliveries that succeed or fail on demand (docs/protocol.md#stub-bridge).

For app developers and staging, as the Rust autopush's stub router: with
``AUTOPUSH_STUB_ROUTER=true`` a device registers under
``/v1/stub/{app_id}/registration`` and the ``app_id`` decides how every push to
that record ends. Nothing is sent anywhere. Anyone can register such a device,
so the setting must stay off in production (docs/operations.md#security-model).

App ids and outcomes follow the Rust server (``success``, ``error``; unknown app
ids refused at registration; a missing device is 410 errno 106), answered as
this server's real bridges answer: ``error`` is an upstream failure, 502 errno
null, not the Rust server's 500, because a push to a bridge never fails with
500 here (docs/operations.md#security-model) and 5xx alerts read 500 as a bug.
``timeout`` answers at once, without waiting.
"""

from __future__ import annotations

import logging
from typing import Any

from autopush_flask.config import Settings
from autopush_flask.db import Notification, Storage, User
from autopush_flask.logging import log_fields
from autopush_flask.push_errors import (
    BRIDGE_REPORTED_ERROR,
    BRIDGE_TIMEOUT,
    INVALID_DEVICE_TOKEN,
    INVALID_ROUTER_TYPE,
    UNKNOWN_STUB_APP,
    PushError,
)
from autopush_flask.routers.bridge import bridge_failure, bridge_sent, device_gone, valid_token

PLATFORM = "stub"
SUCCESS = "success"
# app id -> (metric reason, answer); an app id here or in GONE fails every push.
FAILURES = {"error": ("stub_error", BRIDGE_REPORTED_ERROR), "timeout": ("timeout", BRIDGE_TIMEOUT)}
GONE = ("gone", "invalid")  # the record is deleted: 410 errno 106
APP_IDS = (SUCCESS, *FAILURES, *GONE)

log = logging.getLogger("autopush.router")


class StubRouter:
    """A bridge whose answer is chosen by the record's ``app_id``."""

    def __init__(self, settings: Settings, storage: Storage, metrics: Any) -> None:
        self._storage = storage
        self._metrics = metrics

    def router_data(self, app_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """A plausible token, as for the real bridges, and one of ``APP_IDS``.

        Unknown app ids are refused, as by the Rust server: a typo would
        otherwise read as "success" and hide the failure the developer asked for.
        """
        token = body.get("token") if isinstance(body, dict) else None
        if not valid_token(token):
            raise PushError(INVALID_DEVICE_TOKEN)
        if app_id not in APP_IDS:
            raise PushError(UNKNOWN_STUB_APP, app_ids=", ".join(APP_IDS))
        return {"token": token, "app_id": app_id}

    def route(self, user: User, notification: Notification) -> str:
        """The outcome of the record's app id; any other app id (not one we store) is ``error``."""
        app_id = (user.router_data or {}).get("app_id")
        app_id = app_id if isinstance(app_id, str) else ""
        log.info("Stub delivery", extra=log_fields(app_id=app_id, uaid_hash=user.uaid))
        if app_id == SUCCESS:
            return bridge_sent(self._metrics, PLATFORM, app_id)
        if app_id in GONE:
            raise device_gone(self._storage, self._metrics, user, PLATFORM, app_id)
        reason, kind = FAILURES.get(app_id, FAILURES["error"])
        raise bridge_failure(self._metrics, PLATFORM, app_id, reason, kind)


class DisabledStub:
    """Delivery for ``stub`` records on a node without ``AUTOPUSH_STUB_ROUTER``: refused, kept.

    Such records exist only where the stub was on; a production node must not
    answer for them (400 errno 108, as their registration calls now get).
    """

    def route(self, user: User, notification: Notification) -> str:
        raise PushError(INVALID_ROUTER_TYPE)
