"""hello: identifying the client (docs/protocol.md#hello)."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

from autopush_flask.connection.effects import Identify, NodeRequest, Send, Sleep
from autopush_flask.connection.protocol import Hello, error_reply, is_canonical_uaid
from autopush_flask.connection.session.base import (
    CLOSE_ERROR,
    IDENTIFIED,
    THROTTLED_HELLO_DELAY,
    Effects,
    SessionBase,
    log,
)
from autopush_flask.connection.storage_ops import ClaimUser, DropUser, GetUser, TouchChannels
from autopush_flask.db import StorageError, StorageThrottled, User
from autopush_flask.db.models import WEBPUSH
from autopush_flask.logging import log_fields


class HelloMixin(SessionBase):
    __slots__ = ()

    def _hello(self, message: Hello) -> Effects:
        if not message.use_webpush:
            yield Send(error_reply("hello", 401, "Simplepush not supported"))
            yield from self._close(CLOSE_ERROR, "simplepush")
            return
        requested = message.uaid
        try:
            user = yield from self._returning_user(requested)
        except StorageError as error:
            yield from self._hello_storage_failure(error)
            return
        if user is None:
            self._new_user()
        elif not (yield from self._claim_user(user)):
            return
        yield Identify()
        self.state = IDENTIFIED
        yield Send(self._hello_reply(message))
        self._count_hello(requested)
        if self.existing_uaid:
            yield from self._start_drain()

    def _returning_user(self, requested: str | None) -> Generator[Any, Any, User | None]:
        """The stored record of a returning client, or ``None`` for a new user."""
        if not is_canonical_uaid(requested):
            return None
        user = yield GetUser(requested)
        if user is None:
            return None
        if user.router_type is None or user.connected_at is None:
            yield from self._drop_user(requested, 104)
            return None
        if user.router_type != WEBPUSH:
            return None
        if not self.ctx.storage.holds_data_of(user):
            yield from self._drop_user(requested, 105)
            return None
        return user

    def _claim_user(self, user: User) -> Generator[Any, Any, bool]:
        """Point the record at this node, unless a newer connection holds it."""
        now = self.connected_at
        if user.connected_at > now:  # type: ignore[operator]  # _returning_user drops records without it
            yield from self._already_connected()
            return False
        node_id = self.ctx.node_id
        try:
            claimed, previous = yield ClaimUser(user, node_id, now)
        except StorageError as error:
            yield from self._hello_storage_failure(error)
            return False
        if not claimed:
            yield from self._already_connected()
            return False
        self.uaid = user.uaid
        self.existing_uaid = True
        self.reset_uaid = not user.record_version or user.record_version < 1
        self.user = user
        self.rotate = self.ctx.storage.needs_migration(user)
        yield from self._best_effort(TouchChannels(user))
        yield from self._evict_elsewhere(previous)
        return True

    def _evict_elsewhere(self, previous: User | None) -> Effects:
        if previous is None:
            return
        old_node, old_connected_at = previous.node_id, previous.connected_at
        if old_node and old_node != self.ctx.node_id and old_connected_at is not None:
            yield NodeRequest("DELETE", f"{old_node}/notif/{self.uaid}/{old_connected_at}")

    def _new_user(self) -> None:
        self.uaid = uuid.uuid4().hex
        self.user = self.pending_user = self.ctx.storage.new_user(self.uaid, self.ctx.node_id, self.connected_at)

    def _hello_reply(self, message: Hello) -> dict:
        check = self.ctx.broadcasts.subscribe(message.broadcasts)
        self.broadcast_subs = dict(check.subscribed)
        self.broadcast_seen = self.ctx.broadcasts.change_count
        reply: dict[str, Any] = {
            "messageType": "hello",
            "uaid": self.uaid,
            "status": 200,
            "use_webpush": True,
            "broadcasts": self.ctx.broadcasts.reply_payload(check),
            "env": self.ctx.env,
        }
        if self.ctx.auto_ping_interval:
            reply["ping"] = float(self.ctx.auto_ping_interval)
        return reply

    def _count_hello(self, requested: str | None) -> None:
        if self.existing_uaid:
            kind = "existing"
        elif requested:
            kind = "reassigned"
        else:
            kind = "new"
        self.ctx.metrics.increment("ua.command.hello", tags={"uaid": kind})

    def _already_connected(self) -> Effects:
        self.ctx.metrics.increment("ua.already_connected")
        yield Send(error_reply("hello", 500, "already_connected"))
        yield from self._close(CLOSE_ERROR, "already connected")

    def _hello_storage_failure(self, error: StorageError) -> Effects:
        reason = "error"
        if isinstance(error, StorageThrottled):
            reason = "error - overloaded"
            yield Sleep(self.ctx.rng.uniform(*THROTTLED_HELLO_DELAY))
        log.warning("hello failed", extra=log_fields(error=str(error)))
        yield Send(error_reply("hello", 503, reason))
        yield from self._close(CLOSE_ERROR, "storage error")

    def _drop_user(self, uaid: str, code: int) -> Effects:
        log.debug("Dropping User", extra=log_fields(code=code, uaid_hash=uaid))
        yield DropUser(uaid)

    def _duplicate_hello(self) -> Effects:
        yield Send(error_reply("hello", 401, "duplicate hello"))
        yield from self._close(CLOSE_ERROR, "duplicate hello")
