"""register and unregister (docs/protocol.md#register, docs/protocol.md#unregister)."""

from __future__ import annotations

import uuid
from collections.abc import Generator
from typing import Any

from autopush_flask.connection.effects import Send
from autopush_flask.connection.protocol import Register, Unregister, error_reply
from autopush_flask.connection.session.base import TOO_MANY_CHANNELS, TOO_MANY_REGISTERS, Effects, SessionBase, log
from autopush_flask.connection.storage_ops import AddChannel, AddUser, GetChannels, RefreshUser, RemoveChannel
from autopush_flask.crypto.endpoints import make_endpoint_url
from autopush_flask.db import StorageError, StorageThrottled
from autopush_flask.logging import log_fields


class RegistrationMixin(SessionBase):
    __slots__ = ()

    def _register(self, message: Register) -> Effects:
        """A valid register (``protocol.parse_client_message`` answered the invalid ones)."""
        channel_id = message.channel_id
        if not self._register_allowed():
            yield Send(error_reply("register", TOO_MANY_REGISTERS, "too many registers", channel_id))
            return
        try:
            if not (yield from self._room_for_channel(channel_id)):
                yield Send(error_reply("register", TOO_MANY_CHANNELS, "too many channels", channel_id))
                return
            yield from self._create_pending_user()
            user = self.known_user
            yield AddChannel(user, channel_id)
            yield from self._best_effort(RefreshUser(user))
        except StorageThrottled:
            yield Send({"messageType": "error", "reason": "overloaded", "status": 503})
            return
        except StorageError as error:
            log.warning("register failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))
            yield Send(error_reply("register", 500, "An unexpected server error occurred", channel_id))
            return
        endpoint = make_endpoint_url(
            self.ctx.crypto_keys,
            self.ctx.endpoint_url,
            uuid.UUID(self.uaid),
            uuid.UUID(channel_id),
            message.key,
        )
        self.stats.registers += 1
        self.ctx.metrics.increment("ua.command.register")
        log.info("Register", extra=log_fields(channel_id=channel_id, endpoint=endpoint, uaid_hash=self.uaid))
        yield Send({"messageType": "register", "channelID": channel_id, "status": 200, "pushEndpoint": endpoint})

    def _register_allowed(self) -> bool:
        """The register rate, as a generic cell rate algorithm: one float per session.

        ``register_credit`` is when the register after the last accepted one
        is due at the steady rate; a register is refused when that lies more
        than a burst's worth of intervals ahead.
        """
        rate = self.ctx.limits.register_rate
        if not rate:
            return True
        interval = 60.0 / rate
        now = self.ctx.monotonic()
        due = max(self.register_credit, now)
        if due - now > interval * (rate - 1):
            return False
        self.register_credit = due + interval
        return True

    def _room_for_channel(self, channel_id: str) -> Generator[Any, Any, bool]:
        """Whether the UAID may hold ``channel_id``: one it already has, or a new one under the cap.

        Without a cap, one connection could grow its channel list (a single
        storage item, read on every hello and bridge check) without bound.
        """
        if self.pending_user is not None:
            return True  # a new user's first register: no channels yet
        user = self.known_user
        channels = yield GetChannels(user)
        return channel_id in channels or len(channels) < self.ctx.limits.max_channels

    def _create_pending_user(self) -> Effects:
        """The router record of a new user is written by its first register
        (docs/architecture.md#records-and-messages)."""
        if self.pending_user is None:
            return
        user = self.pending_user
        created = yield AddUser(user)
        if not created:
            raise StorageError("UAID collision", "put_item")
        self.pending_user = None

    def _unregister(self, message: Unregister) -> Effects:
        channel_id, sent, code = message.channel_id, message.sent, message.code
        self._forget_channel(channel_id)
        try:
            user = self.known_user
            yield RemoveChannel(user, channel_id)
        except StorageError as error:
            log.warning("unregister failed", extra=log_fields(error=str(error), uaid_hash=self.uaid))
            yield Send(error_reply("unregister", 500, "An unexpected server error occurred", sent))
            return
        self.stats.unregisters += 1
        self.ctx.metrics.increment("ua.command.unregister", tags={"code": code})
        log.info("Unregister", extra=log_fields(channel_id=channel_id, uaid_hash=self.uaid, code=code))
        yield Send({"messageType": "unregister", "channelID": sent, "status": 200})
        yield from self._after_acks()

    def _forget_channel(self, channel_id: str) -> None:
        for tracked in (self.unacked_direct, self.unacked_stored):
            for version in [v for v, n in tracked.items() if n.channel_id == channel_id]:
                del tracked[version]
