"""Typed storage errors, mapped from boto3/botocore in exactly one place.

Callers decide on the protocol's status codes (503 errno 201 vs 202, a delayed
hello reply, a rescheduled drain) from these types alone, never from boto3
error codes.
"""

from __future__ import annotations

from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

THROTTLING_CODES = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "LimitExceededException",
    }
)
SERVER_ERROR_CODES = frozenset({"InternalServerError", "ServiceUnavailable", "InternalFailure"})
UNKNOWN_OPERATION_CODES = frozenset({"UnknownOperationException", "UnrecognizedClientException"})


class StorageError(Exception):
    """A storage call failed; ``retryable`` says whether trying again may help."""

    retryable = False

    def __init__(self, message: str, operation: str = "", code: str = "") -> None:
        super().__init__(message)
        self.operation = operation
        self.code = code


class StorageThrottled(StorageError):
    """DynamoDB refused the call for lack of throughput (docs/architecture.md#storage-errors: errno 201)."""

    retryable = True


class StorageUnavailable(StorageError):
    """DynamoDB could not be reached or failed internally (docs/architecture.md#storage-errors: errno 202)."""

    retryable = True


class TableMissing(StorageError):
    """The table does not exist (health checks report "Nonexistent table")."""


class UnknownOperation(StorageError):
    """The server does not implement the call (dynalite lacks UpdateTimeToLive)."""


class ConditionFailed(StorageError):
    """A conditional write's condition was false: a result, never retried."""


def map_error(error: Exception, operation: str) -> StorageError:
    """Translate a boto3/botocore exception into a ``StorageError``."""
    if isinstance(error, StorageError):
        return error
    if isinstance(error, ClientError):
        code = error.response.get("Error", {}).get("Code", "")
        message = f"{operation}: {code}: {error.response.get('Error', {}).get('Message', '')}"
        return error_for_code(code)(message, operation, code)
    if isinstance(error, (BotoConnectionError, HTTPClientError)):
        return StorageUnavailable(f"{operation}: {error}", operation, type(error).__name__)
    if isinstance(error, BotoCoreError):
        return StorageError(f"{operation}: {error}", operation, type(error).__name__)
    raise error


def error_for_code(code: str) -> type[StorageError]:
    """The error type of a DynamoDB error code (the part after '#' of ``__type``)."""
    if code in THROTTLING_CODES:
        return StorageThrottled
    if code == "ConditionalCheckFailedException":
        return ConditionFailed
    if code == "ResourceNotFoundException":
        return TableMissing
    if code in SERVER_ERROR_CODES:
        return StorageUnavailable
    if code in UNKNOWN_OPERATION_CODES:
        return UnknownOperation
    return StorageError
