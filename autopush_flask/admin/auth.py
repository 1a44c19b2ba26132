"""Who may read the admin view: the holder of ``AUTOPUSH_ADMIN_TOKEN``.

Scripts send ``Authorization: Bearer <token>``. A browser posts the token to
``/login`` once and gets a session cookie that holds an issue time and an
HMAC of it under the token, never the token: any worker can check it, it
lapses after ``SESSION_SECONDS``, and changing the token ends every session.
The cookie is HttpOnly and SameSite=Strict, so no other site can make the
browser send it (no cross-site request forgery), and scripts in no page can
read it. Every comparison is constant-time.
"""

from __future__ import annotations

import hashlib
import hmac
import time

COOKIE_NAME = "autopush_admin"
SESSION_SECONDS = 8 * 3600
# A cookie issued this far in the future (another worker's clock, NTP) still counts.
CLOCK_SKEW_SECONDS = 60
SESSION_LABEL = b"autopush-flask admin session v1"
# Longer than any token an operator pastes; longer headers are not even compared.
MAX_TOKEN_BYTES = 1024


def token_matches(given: str | None, token: str) -> bool:
    if not given or len(given) > MAX_TOKEN_BYTES:
        return False
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def bearer_matches(authorization: str | None, token: str) -> bool:
    """``Authorization: Bearer <token>`` (the scheme in any case)."""
    if not authorization or len(authorization) > MAX_TOKEN_BYTES + 16:
        return False
    scheme, _, credentials = authorization.strip().partition(" ")
    return scheme.lower() == "bearer" and token_matches(credentials.strip(), token)


def _mac(token: str, issued: str) -> str:
    return hmac.new(token.encode("utf-8"), SESSION_LABEL + b"|" + issued.encode(), hashlib.sha256).hexdigest()


def session_cookie(token: str, now: float | None = None) -> str:
    issued = str(int(time.time() if now is None else now))
    return f"{issued}.{_mac(token, issued)}"


def session_valid(cookie: str | None, token: str, now: float | None = None) -> bool:
    if not cookie or len(cookie) > 128:
        return False
    issued, _, mac = cookie.partition(".")
    if not (issued.isascii() and issued.isdigit() and len(issued) <= 12):
        return False
    current = time.time() if now is None else now
    age = current - int(issued)
    if age > SESSION_SECONDS or age < -CLOCK_SKEW_SECONDS:
        return False
    return hmac.compare_digest(_mac(token, issued).encode(), mac.encode("utf-8", "surrogatepass"))
