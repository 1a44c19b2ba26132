"""``DELETE /m/{message_id}``: cancel a stored message (docs/protocol.md#message-cancel)."""

from __future__ import annotations

from flask import Blueprint, Response

from autopush_flask.crypto.message_ids import InvalidMessageIdError, MessageId
from autopush_flask.endpoint.state import endpoint_state
from autopush_flask.push_errors import INVALID_MESSAGE_ID, PushError

message = Blueprint("message", __name__)


@message.delete("/m/<message_id>")
def cancel(message_id: str) -> Response:
    state = endpoint_state()
    try:
        parsed = MessageId.decode(state.crypto_keys, message_id)
    except InvalidMessageIdError as error:
        raise PushError(INVALID_MESSAGE_ID) from error
    uaid = parsed.uaid_text
    updateid = message_id if parsed.kind == "topic" else None
    state.storage.cancel_message(uaid, parsed.sort_key, updateid)
    state.metrics.increment("notification.message.deleted", tags={"topic": parsed.kind == "topic"})
    return Response(b"", status=204)
