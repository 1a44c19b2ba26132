"""Publisher controls for private deployments (docs/protocol.md#publisher-controls).

Two optional checks on ``POST /wpush/…``, run after the token and VAPID
checks and before the first storage read, so a refused flood costs no store
call:

* ``AUTOPUSH_ALLOWED_VAPID_KEYS``: only application servers holding one of
  these keys may push (403 errno 120 otherwise);
* ``AUTOPUSH_PUSH_RATE``: pushes per minute per subscription, beyond which a
  push gets 429 errno 121 with ``Retry-After``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from typing import Any

from cachetools import TTLCache
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from autopush_flask.crypto.endpoints import EndpointToken
from autopush_flask.crypto.vapid import VapidResult, decode_vapid_public_key
from autopush_flask.push_errors import TOO_MANY_PUSHES, VAPID_KEY_NOT_ALLOWED, VAPID_REQUIRED, PushError

# Subscriptions one worker tracks at most. An entry (32-byte key, float,
# TTLCache links) measured 335 bytes with tracemalloc: ~34 MB at the cap.
MAX_TRACKED_SUBSCRIPTIONS = 100_000
RATE_WINDOW_SECONDS = 60.0
REFUSED_METRIC = "notification.publisher.refused"


def raw_vapid_key(text: str) -> bytes:
    """The 65-byte uncompressed P-256 point of any spelling ``k=``/``p256ecdsa`` may use.

    Padded or not, with or without the 0x04 prefix, raw or DER: an
    operator's copy of a key and a sender's header compare equal when they
    name the same point. ``ValueError`` when ``text`` is no P-256 point.
    """
    return decode_vapid_public_key(text).public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)


class AllowedKeys:
    """The application server keys allowed to push; empty means any (or none) is."""

    def __init__(self, keys: Iterable[str] = ()) -> None:
        self._raw = frozenset(raw_vapid_key(key) for key in keys)

    def __bool__(self) -> bool:
        return bool(self._raw)

    def check(self, vapid: VapidResult | None) -> None:
        """Raise the 403 for a push that is not signed by an allowed key."""
        if not self._raw:
            return
        if vapid is None:
            raise PushError(VAPID_REQUIRED)
        if not self._allows(vapid.public_key):
            raise PushError(VAPID_KEY_NOT_ALLOWED)

    def _allows(self, public_key: str) -> bool:
        try:
            return raw_vapid_key(public_key) in self._raw
        except ValueError:  # the verifier accepted it, so this would be a verifier change
            return False


class PushRateLimiter:
    """Pushes per minute per subscription, as a generic cell rate algorithm.

    Like the register rate (``connection/session/registration.py``), one
    float per subscription: when its next push is due at the steady rate. A
    push is refused when that lies more than a burst (``rate`` pushes) of
    intervals ahead; the wait until it no longer does is the ``Retry-After``.

    The floats live in a ``TTLCache`` bounded in entries: a due time is at
    most a minute ahead, so an entry untouched for a minute says nothing and
    expires, and past ``max_size`` subscriptions the least recently used
    leaves first. Tokens for new subscriptions cost an attacker nothing to
    mint from one register each, so the table must not grow with them; an
    evicted subscription only starts afresh. The state is per worker: the
    limit is exact for one worker and approximate across workers and nodes.
    """

    def __init__(
        self, rate: int, max_size: int = MAX_TRACKED_SUBSCRIPTIONS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self._interval = RATE_WINDOW_SECONDS / rate if rate else 0.0
        self._due: TTLCache = TTLCache(max_size, RATE_WINDOW_SECONDS, timer=clock)
        self._clock = clock

    def wait(self, key: bytes) -> float:
        """0 and the push counted when ``key`` may push now, else the seconds until it may."""
        if not self.rate:
            return 0.0
        now = self._clock()
        due = max(self._due.get(key, now), now)
        ahead = due - now - self._interval * (self.rate - 1)
        if ahead > 0:
            return ahead
        self._due[key] = due + self._interval
        return 0.0

    def __len__(self) -> int:
        return len(self._due)


class PublisherControls:
    """Both checks, as the push handler runs them (off when neither setting is given)."""

    def __init__(self, allowed: AllowedKeys | None = None, limiter: PushRateLimiter | None = None) -> None:
        # not ``or``: both define their truth (an empty limiter has length 0)
        self.allowed = AllowedKeys() if allowed is None else allowed
        self.limiter = PushRateLimiter(0) if limiter is None else limiter

    @classmethod
    def from_settings(cls, allowed_vapid_keys: Iterable[str], push_rate: int) -> PublisherControls:
        return cls(AllowedKeys(allowed_vapid_keys), PushRateLimiter(push_rate))

    def check(self, subscription: EndpointToken, vapid: VapidResult | None, metrics: Any) -> None:
        """Raise the 403 or 429 a push gets, counting it by reason."""
        try:
            self.allowed.check(vapid)
            self._check_rate(subscription)
        except PushError as error:
            metrics.increment(REFUSED_METRIC, tags={"reason": _REASONS[error.kind]})
            raise

    def _check_rate(self, subscription: EndpointToken) -> None:
        wait = self.limiter.wait(subscription.uaid.bytes + subscription.channel_id.bytes)
        if wait:
            error = PushError(TOO_MANY_PUSHES)
            error.headers["Retry-After"] = str(max(1, math.ceil(wait)))
            raise error


_REASONS = {
    VAPID_REQUIRED: "missing_vapid",
    VAPID_KEY_NOT_ALLOWED: "key_not_allowed",
    TOO_MANY_PUSHES: "rate_limited",
}
