"""Bridge secrets (docs/protocol.md#bridge-registration): proof that a caller owns a bridged registration.

The secret is an HMAC of the UAID under one of the configured auth keys.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence


def make_bridge_secret(auth_key: str, uaid_hex: str) -> str:
    """The key text is used as-is (not base64-decoded), as clients expect."""
    digest = hmac.new(auth_key.encode("utf-8"), uaid_hex.encode("utf-8"), hashlib.sha256)
    return digest.hexdigest()


def verify_bridge_secret(auth_keys: Sequence[str], uaid_hex: str, secret: str) -> bool:
    """Every key is tried so timing does not reveal which one matched.

    Empty keys are skipped: an HMAC under "" would be computable by anyone.
    """
    given = secret.encode("utf-8")
    matched = False
    for key in auth_keys:
        if key:
            expected = make_bridge_secret(key, uaid_hex).encode("ascii")
            matched |= hmac.compare_digest(expected, given)
    return matched
