"""The named push errors and the dispatcher that stamps each accepted message once."""

from __future__ import annotations

import uuid

import pytest

from autopush_flask import push_errors
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.crypto.message_ids import MessageId
from autopush_flask.db import Notification, User
from autopush_flask.db.errors import StorageThrottled, StorageUnavailable
from autopush_flask.db.models import SortKeyClock
from autopush_flask.push_errors import (
    BRIDGE_DATA_TOO_LARGE,
    INVALID_VAPID,
    NO_SUCH_SUBSCRIPTION,
    STORAGE_THROTTLED,
    STORAGE_UNAVAILABLE,
    ErrorKind,
    PushError,
    storage_error,
)
from autopush_flask.routers.delivery import DIRECT, Delivery, Dispatcher, MessageStamper

KEYS = CryptoKeys([CryptoKeys.generate_key()])


def kinds() -> dict[str, ErrorKind]:
    return {name: value for name, value in vars(push_errors).items() if isinstance(value, ErrorKind)}


def test_each_error_is_written_once() -> None:
    """Two names for one (status, errno, message) would be the copy-paste this catalogue removes."""
    seen: dict[ErrorKind, list[str]] = {}
    for name, kind in kinds().items():
        seen.setdefault(kind, []).append(name)
    assert {tuple(names) for names in seen.values() if len(names) > 1} == {("STORAGE_THROTTLED", "STORE_FAILED")}


def test_a_named_error_carries_its_status_errno_and_message() -> None:
    error = PushError(NO_SUCH_SUBSCRIPTION)
    assert (error.status, error.errno, error.message, error.headers) == (410, 106, "No such subscription", {})


def test_details_fill_the_message_template() -> None:
    assert PushError(BRIDGE_DATA_TOO_LARGE, excess=7).message == "Data too large: too long by 7 bytes"
    error = PushError(INVALID_VAPID, reason="expired")
    assert (error.status, error.errno, error.message) == (401, 109, "Invalid authentication: expired")
    assert error.headers == {"WWW-Authenticate": "webpush"}


def test_every_401_asks_for_webpush_authentication() -> None:
    unauthorized = [kind for kind in kinds().values() if kind.status == 401]
    assert len(unauthorized) == 5
    assert all(dict(kind.headers) == {"WWW-Authenticate": "webpush"} for kind in unauthorized)


@pytest.mark.parametrize("failure, kind", [
    (StorageThrottled("slow down"), STORAGE_THROTTLED),
    (StorageUnavailable("down"), STORAGE_UNAVAILABLE),
])
def test_storage_failures_map_to_the_retry_errnos(failure: Exception, kind: ErrorKind) -> None:
    assert storage_error(failure).kind is kind


class Recording:
    """A deliverer that remembers the version each message had when it arrived."""

    def __init__(self) -> None:
        self.versions: list[str] = []

    def route(self, user: User, notification: Notification) -> str:
        self.versions.append(notification.version)
        return DIRECT


def test_dispatch_stamps_before_delivery_and_returns_the_message_id() -> None:
    deliverer = Recording()
    dispatcher = Dispatcher(MessageStamper(KEYS, SortKeyClock()), {"webpush": deliverer})
    uaid, channel_id = uuid.uuid4(), uuid.uuid4()
    notification = Notification(channel_id=str(channel_id), version="", ttl=60, timestamp=1700000000)

    delivery = dispatcher.dispatch(User(uaid=uaid.hex, router_type="webpush"), notification)

    assert delivery == Delivery(DIRECT, deliverer.versions[0])
    parsed = MessageId.decode(KEYS, delivery.message_id)
    assert notification.sortkey_timestamp is not None
    assert (parsed.kind, parsed.uaid, parsed.channel_id, parsed.sortkey_timestamp) == (
        "timestamp", uaid, channel_id, notification.sortkey_timestamp)
