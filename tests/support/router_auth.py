"""Sign test requests to a connection node's router the way nodes do.

Tests that talk to the router directly (as an endpoint node would) use
``signed_session(crypto_keys)``; it signs every request with the same
``node_auth`` module the nodes use, so a change there is covered here too.
"""

from __future__ import annotations

import requests

from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.node_auth import RouterRequestKeys


class RouterSignature(requests.auth.AuthBase):
    """requests auth hook: the ``node_auth`` headers for the prepared request."""

    def __init__(self, crypto_keys: str, now: float | None = None) -> None:
        self.keys = RouterRequestKeys.from_crypto_keys(CryptoKeys(crypto_keys.split(",")))
        self.now = now

    def __call__(self, prepared: requests.PreparedRequest) -> requests.PreparedRequest:
        body = prepared.body or b""
        if isinstance(body, str):
            body = body.encode()
        prepared.headers.update(self.keys.sign(prepared.method, prepared.path_url, body, self.now))
        return prepared


def signed_session(crypto_keys: str) -> requests.Session:
    """A session whose every request is signed with ``crypto_keys`` (``AUTOPUSH_CRYPTO_KEYS`` text)."""
    session = requests.Session()
    session.auth = RouterSignature(crypto_keys)
    return session
