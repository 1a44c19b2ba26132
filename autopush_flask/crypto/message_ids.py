"""Message ids (docs/protocol.md#push-response, docs/protocol.md#message-cancel):
the opaque handle of one stored message.

An id names the row to delete or acknowledge, so it carries the UAID, the
channel id and either the topic or the sort timestamp, encrypted under the
shared keys.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Literal

from autopush_flask.crypto.keys import CryptoKeys, InvalidTokenError
from autopush_flask.db.models import Notification, timestamp_sort_key, topic_sort_key
from autopush_flask.ids import channel_text, uaid_text

_DIGITS = re.compile(r"^[0-9]+$")


class InvalidMessageIdError(ValueError):
    """A message id that is not a current-format id (docs/protocol.md#message-cancel → 400)."""


MessageKind = Literal["topic", "timestamp"]


@dataclass(frozen=True)
class MessageId:
    """Legacy `m:` ids are never produced and always rejected, so no such kind."""

    kind: MessageKind
    uaid: uuid.UUID
    channel_id: uuid.UUID
    topic: str | None = None
    sortkey_timestamp: int | None = None

    @classmethod
    def for_topic(cls, uaid: uuid.UUID, channel_id: uuid.UUID, topic: str) -> MessageId:
        return cls("topic", uaid, channel_id, topic=topic)

    @classmethod
    def for_timestamp(cls, uaid: uuid.UUID, channel_id: uuid.UUID, sortkey_timestamp: int) -> MessageId:
        return cls("timestamp", uaid, channel_id, sortkey_timestamp=sortkey_timestamp)

    @classmethod
    def for_notification(cls, uaid: str, notification: Notification) -> MessageId:
        """The id of a stored or delivered notification, from the service's text ids (``ids``)."""
        ids = (uuid.UUID(uaid), uuid.UUID(notification.channel_id))
        if notification.topic:
            return cls.for_topic(*ids, notification.topic)
        # None is refused by __post_init__, as for any id
        return cls.for_timestamp(*ids, notification.sortkey_timestamp)  # type: ignore[arg-type]

    @property
    def uaid_text(self) -> str:
        """The UAID as the service writes it (``ids``)."""
        return uaid_text(self.uaid)

    def names(self, uaid: str, channel_id: str) -> bool:
        """Whether this id belongs to ``uaid``'s channel ``channel_id`` (text ids, ``ids``)."""
        return uaid_text(self.uaid) == uaid and channel_text(self.channel_id) == channel_id

    def __post_init__(self) -> None:
        if self.kind not in ("topic", "timestamp"):
            raise ValueError(f"unknown message id kind {self.kind!r}")
        if self.kind == "topic" and not self.topic:
            raise ValueError("a topic message id needs a topic")
        if self.kind == "timestamp" and type(self.sortkey_timestamp) is not int:
            raise ValueError("a timestamp message id needs an integer timestamp")

    @property
    def sort_key(self) -> str:
        """Topic messages share one key so a newer one replaces the older."""
        # __post_init__ makes sure each kind has its field
        if self.kind == "topic":
            return topic_sort_key(str(self.channel_id), self.topic)  # type: ignore[arg-type]
        return timestamp_sort_key(self.sortkey_timestamp, str(self.channel_id))  # type: ignore[arg-type]

    @property
    def plaintext(self) -> str:
        ids = f"{self.uaid.hex}:{self.channel_id.hex}"
        if self.kind == "topic":
            return f"01:{ids}:{self.topic}"
        return f"02:{ids}:{self.sortkey_timestamp}"

    def encode(self, keys: CryptoKeys) -> str:
        """Opaque to everyone without the key (docs/protocol.md#push-response)."""
        return keys.encrypt(self.plaintext.encode("utf-8"))

    @classmethod
    def decode(cls, keys: CryptoKeys, text: str) -> MessageId:
        """DELETE /m/ answers one 400 for every malformed id (docs/protocol.md#message-cancel)."""
        try:
            plaintext = keys.decrypt(text).decode("utf-8")
        except (InvalidTokenError, UnicodeDecodeError) as exc:
            raise InvalidMessageIdError("message id does not decrypt") from exc
        parts = plaintext.split(":")
        if len(parts) != 4 or parts[0] not in ("01", "02"):
            raise InvalidMessageIdError("not a current-format message id")
        prefix, uaid_text, chid_text, last = parts
        try:
            uaid, chid = uuid.UUID(uaid_text), uuid.UUID(chid_text)
        except ValueError as exc:
            raise InvalidMessageIdError("bad UUID in message id") from exc
        if prefix == "01":
            if not last:
                raise InvalidMessageIdError("empty topic in message id")
            return cls.for_topic(uaid, chid, last)
        if not _DIGITS.match(last):
            raise InvalidMessageIdError("bad timestamp in message id")
        return cls.for_timestamp(uaid, chid, int(last))
