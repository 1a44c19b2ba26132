"""``DELETE /m/{message_id}``: cancel a stored message (SPEC §4.10)."""

from __future__ import annotations

from flask import Blueprint, Response

from autopush_flask.crypto import InvalidMessageIdError, MessageId
from autopush_flask.db import StorageError
from autopush_flask.endpoint.errors import PushError, storage_error
from autopush_flask.endpoint.state import endpoint_state

message = Blueprint("message", __name__)


@message.delete("/m/<message_id>")
def cancel(message_id: str) -> Response:
    state = endpoint_state()
    try:
        parsed = MessageId.decode(state.crypto_keys, message_id)
    except InvalidMessageIdError as error:
        raise PushError(400, None, "Invalid message ID") from error
    uaid = parsed.uaid.hex
    updateid = message_id if parsed.kind == "topic" else None
    try:
        state.storage.cancel_message(uaid, parsed.sort_key, updateid)
    except StorageError as error:
        raise storage_error(error) from error
    state.metrics.increment("notification.message.deleted", tags={"topic": parsed.kind == "topic"})
    return Response(b"", status=204)

