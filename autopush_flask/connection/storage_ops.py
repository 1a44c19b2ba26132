"""The storage operations a session asks for, as data, and their one interpreter.

A session yields one of these (an effect, see ``effects.py``); the transport
and the test harness both perform it with ``run_storage``, and the retry
queue keeps a failed write as the same value to try again. Being data rather
than closures, an operation is fixed when it is made (nothing it reads can
change before it runs) and can be looked at: logs and metrics use ``name``.

``name`` is the operation's name in logs and metrics (``update_user``,
``update_bookmark``, ``store_direct``…); these are documented, so they stay
as they are even where they differ from the ``Storage`` method's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, assert_never, get_args

from autopush_flask.db import Notification, Storage, User


@dataclass(frozen=True)
class GetUser:
    name: ClassVar[str] = "get_user"
    uaid: str


@dataclass(frozen=True)
class AddUser:
    name: ClassVar[str] = "add_user"
    user: User


@dataclass(frozen=True)
class ClaimUser:
    """The hello update (``Storage.claim_user``)."""

    name: ClassVar[str] = "update_user"
    user: User
    node_id: str
    connected_at: int


@dataclass(frozen=True)
class RefreshUser:
    name: ClassVar[str] = "refresh_user"
    user: User


@dataclass(frozen=True)
class SetMinUrgency:
    name: ClassVar[str] = "set_min_urgency"
    user: User
    urgency: str


@dataclass(frozen=True)
class DropUser:
    name: ClassVar[str] = "drop_user"
    uaid: str


@dataclass(frozen=True)
class MigrateUser:
    name: ClassVar[str] = "migrate_user"
    user: User
    bookmark: int | None


@dataclass(frozen=True)
class GetChannels:
    name: ClassVar[str] = "get_channels"
    user: User


@dataclass(frozen=True)
class AddChannel:
    name: ClassVar[str] = "add_channel"
    user: User
    channel_id: str


@dataclass(frozen=True)
class RemoveChannel:
    name: ClassVar[str] = "remove_channel"
    user: User
    channel_id: str


@dataclass(frozen=True)
class TouchChannels:
    name: ClassVar[str] = "touch_channels"
    user: User


@dataclass(frozen=True)
class DeleteMessage:
    name: ClassVar[str] = "delete_message"
    user: User
    sort_key: str
    updateid: str | None


@dataclass(frozen=True)
class SaveLateMessages:
    """A leaving client's unacked direct notifications (``Storage.save_late_messages``)."""

    name: ClassVar[str] = "store_direct"
    user: User
    notifications: Sequence[Notification]


@dataclass(frozen=True)
class FetchTopicMessages:
    name: ClassVar[str] = "fetch_topic_messages"
    user: User


@dataclass(frozen=True)
class FetchTimestampMessages:
    name: ClassVar[str] = "fetch_timestamp_messages"
    user: User
    bookmark: int | None


@dataclass(frozen=True)
class AdvanceBookmark:
    name: ClassVar[str] = "update_bookmark"
    user: User
    expected: int | None
    bookmark: int


StorageOp = (
    GetUser
    | AddUser
    | ClaimUser
    | RefreshUser
    | SetMinUrgency
    | DropUser
    | MigrateUser
    | GetChannels
    | AddChannel
    | RemoveChannel
    | TouchChannels
    | DeleteMessage
    | SaveLateMessages
    | FetchTopicMessages
    | FetchTimestampMessages
    | AdvanceBookmark
)
# For ``isinstance``: is an effect a storage operation?
STORAGE_OPS: tuple[type, ...] = get_args(StorageOp)


def run_storage(storage: Storage, op: StorageOp) -> Any:
    """Perform ``op`` on ``storage``; its result, or the ``StorageError`` it raises."""
    match op:
        case GetUser(uaid=uaid):
            return storage.get_user(uaid)
        case AddUser(user=user):
            return storage.add_user(user)
        case ClaimUser(user=user, node_id=node_id, connected_at=connected_at):
            return storage.claim_user(user, node_id, connected_at)
        case RefreshUser(user=user):
            return storage.refresh_user(user)
        case SetMinUrgency(user=user, urgency=level):
            return storage.set_min_urgency(user, level)
        case DropUser(uaid=uaid):
            return storage.drop_user(uaid)
        case MigrateUser(user=user, bookmark=bookmark):
            return storage.migrate_user(user, bookmark)
        case GetChannels(user=user):
            return storage.get_channels(user)
        case AddChannel(user=user, channel_id=channel_id):
            return storage.add_channel(user, channel_id)
        case RemoveChannel(user=user, channel_id=channel_id):
            return storage.remove_channel(user, channel_id)
        case TouchChannels(user=user):
            return storage.touch_channels(user)
        case DeleteMessage(user=user, sort_key=sort_key, updateid=updateid):
            return storage.delete_message(user, sort_key, updateid)
        case SaveLateMessages(user=user, notifications=notifications):
            return storage.save_late_messages(user, notifications)
        case FetchTopicMessages(user=user):
            return storage.fetch_topic_messages(user)
        case FetchTimestampMessages(user=user, bookmark=bookmark):
            return storage.fetch_timestamp_messages(user, bookmark)
        case AdvanceBookmark(user=user, expected=expected, bookmark=bookmark):
            return storage.advance_bookmark(user, expected, bookmark)
        case _:
            assert_never(op)
