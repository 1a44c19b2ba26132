"""DynamoDB's JSON protocol for item operations, signed with SigV4, on a keep-alive pool (``http_client``).

Item reads and writes are on every push's path. botocore's generic machinery
(serialisers, event hooks, endpoint rules, response shapes, http.client) costs
several times the exchange itself, so item operations go out here: the
parameters are the low-level client's (DynamoDB's wire format), the request is
signed with the same SigV4 scheme from the same boto3 credentials (refreshed by
boto3 as usual), and errors arrive as the same typed ``StorageError``. Table
administration stays on the boto3 client.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import zlib
from collections.abc import Callable
from typing import Any

from autopush_flask import json_codec
from autopush_flask.db.errors import StorageError, StorageUnavailable, error_for_code
from autopush_flask.http_client import ConnectionPool, HTTPFailure

SERVICE = "dynamodb"
TARGET_PREFIX = "DynamoDB_20120810."
CONTENT_TYPE = "application/x-amz-json-1.0"
ALGORITHM = "AWS4-HMAC-SHA256"

# Low-level client method names of the operations carried here.
ITEM_OPERATIONS = {
    "get_item": "GetItem",
    "put_item": "PutItem",
    "update_item": "UpdateItem",
    "delete_item": "DeleteItem",
    "query": "Query",
    "batch_get_item": "BatchGetItem",
    "batch_write_item": "BatchWriteItem",
}


class SigV4Signer:
    """AWS Signature Version 4 for DynamoDB's ``POST /`` requests."""

    def __init__(self, region: str, host_header: str) -> None:
        self._region = region
        self._host = host_header
        self._keys: dict[tuple[str, str], bytes] = {}

    def headers(
        self,
        target: str,
        body: bytes,
        access_key: str,
        secret_key: str,
        token: str | None,
        now: dt.datetime,
    ) -> list[tuple[str, str]]:
        """The signed headers of one request (``Host`` is signed, not returned)."""
        amz_date = now.strftime("%Y%m%dT%H%M%SZ")
        date = amz_date[:8]
        signed = [("content-type", CONTENT_TYPE), ("host", self._host), ("x-amz-date", amz_date)]
        if token:
            signed.append(("x-amz-security-token", token))
        signed.append(("x-amz-target", target))
        names = ";".join(name for name, _ in signed)
        canonical = "\n".join(
            [
                "POST",
                "/",
                "",
                *(f"{name}:{value}" for name, value in signed),
                "",
                names,
                hashlib.sha256(body).hexdigest(),
            ]
        )
        scope = f"{date}/{self._region}/{SERVICE}/aws4_request"
        to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.digest(self._signing_key(secret_key, date), to_sign.encode(), "sha256").hex()
        authorization = f"{ALGORITHM} Credential={access_key}/{scope}, SignedHeaders={names}, Signature={signature}"
        return [(name, value) for name, value in signed if name != "host"] + [("authorization", authorization)]

    def _signing_key(self, secret_key: str, date: str) -> bytes:
        key = self._keys.get((secret_key, date))
        if key is None:
            key = ("AWS4" + secret_key).encode()
            for part in (date, self._region, SERVICE, "aws4_request"):
                key = hmac.digest(key, part.encode(), "sha256")
            self._keys = {(secret_key, date): key}  # one day's key is all that is needed
        return key


class ItemClient:
    """Sends item operations; ``call`` takes and returns the low-level client's dicts."""

    def __init__(
        self,
        pool: ConnectionPool,
        region: str,
        credentials: Any,
        user_agent: str,
        clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self._pool = pool
        self._signer = SigV4Signer(region, pool.host_header)
        self._credentials = credentials
        self._user_agent = user_agent
        self._clock = clock

    def call(self, operation: str, params: dict) -> dict:
        target = TARGET_PREFIX + ITEM_OPERATIONS[operation]
        body = json_codec.encode(params)
        frozen = self._credentials.get_frozen_credentials()
        headers = self._signer.headers(target, body, frozen.access_key, frozen.secret_key, frozen.token, self._clock())
        headers.append(("user-agent", self._user_agent))
        try:
            response = self._pool.request("POST", "/", headers, body)
        except HTTPFailure as error:
            raise StorageUnavailable(f"{operation}: {error}", operation, type(error).__name__) from error
        _check_crc32(response.header("x-amz-crc32"), response.body, operation)
        if response.status == 200:
            return json_codec.decode(response.body)
        raise _error_from(operation, response.status, response.body)


def _check_crc32(expected: str | None, body: bytes, operation: str) -> None:
    """DynamoDB checksums its answers; a mismatch is a corrupted answer, worth a retry."""
    if expected is not None and expected.isdigit() and int(expected) != zlib.crc32(body):
        raise StorageUnavailable(f"{operation}: answer failed its CRC32 check", operation, "CRC32Mismatch")


def _error_from(operation: str, status: int, body: bytes) -> StorageError:
    try:
        detail = json.loads(body)
        code = str(detail.get("__type", "")).rpartition("#")[2]
        message = detail.get("message") or detail.get("Message") or ""
    except (ValueError, AttributeError):
        code, message = "", body[:200].decode("utf-8", "replace")
    if not code:
        kind = StorageUnavailable if status >= 500 else StorageError
        return kind(f"{operation}: HTTP {status}: {message}", operation, f"HTTP{status}")
    return error_for_code(code)(f"{operation}: {code}: {message}", operation, code)
