"""Error responses of the endpoint node (SPEC §4.11).

Every error, including unknown paths, 405s and storage outages, leaves as
the same JSON body with the SPEC's status, errno and headers.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from autopush_flask.db import StorageError, StorageThrottled
from autopush_flask.logging import log_fields

MORE_INFO = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"
RETRY_AFTER_SECONDS = "120"
GONE_MAX_AGE = "max-age=86400"
WWW_AUTHENTICATE = "webpush"
MAX_AUTHORIZATION = 4096  # bytes of the Authorization header

ERRNO_TOO_LARGE = 104
ERRNO_THROTTLED = 201
ERRNO_UNAVAILABLE = 202
ERRNO_UNKNOWN = 999

log = logging.getLogger("autopush.endpoint")


class PushError(Exception):
    """A request the SPEC answers with an error status and errno."""

    def __init__(
        self, status: int, errno: int | None, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.errno = errno
        self.message = message
        self.headers = headers or {}


def unauthorized(message: str = "Invalid authentication") -> PushError:
    """401 errno 109 with ``WWW-Authenticate: webpush`` (VAPID and bridge secrets)."""
    return PushError(401, 109, message, {"WWW-Authenticate": WWW_AUTHENTICATE})


def authorization_header() -> str | None:
    """The ``Authorization`` header, refused (401 errno 109) past ``MAX_AUTHORIZATION`` bytes.

    A real VAPID header is about 400 bytes and a bridge secret 71; gunicorn
    alone would let 8190 bytes through to base64, JSON and ECDSA work.
    """
    value = request.headers.get("Authorization")
    if value is not None and len(value) > MAX_AUTHORIZATION:
        raise unauthorized("Authorization header too long")
    return value


def storage_error(error: StorageError, other_errno: int = ERRNO_UNAVAILABLE) -> PushError:
    """503 with the retry errno: 201 when throttled, else ``other_errno`` (SPEC §7.8)."""
    errno = ERRNO_THROTTLED if isinstance(error, StorageThrottled) else other_errno
    message = "Please slow message send rate" if errno == ERRNO_THROTTLED else "Retry Request"
    return PushError(503, errno, message)


def error_response(
    status: int, errno: int | None, message: str, headers: dict[str, str] | None = None,
    reason: str | None = None,
) -> Response:
    response = jsonify(
        code=status,
        errno=errno,
        error=reason or HTTPStatus(status).phrase,
        message=message,
        more_info=MORE_INFO,
    )
    response.status_code = status
    if status == 410:
        response.headers["Cache-Control"] = GONE_MAX_AGE
    if status == 503:
        response.headers["Retry-After"] = RETRY_AFTER_SECONDS
    response.headers.update(headers or {})
    return response


def install_error_handlers(app: Flask) -> None:
    @app.errorhandler(PushError)
    def push_error(error: PushError) -> Response:
        return error_response(error.status, error.errno, error.message, error.headers)

    @app.errorhandler(StorageError)
    def storage_failure(error: StorageError) -> Response:
        log.warning("storage failure", extra=log_fields(error=str(error)))
        return push_error(storage_error(error))

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> Response:
        message = "Page not found" if error.code == 404 else error.description
        errno = ERRNO_TOO_LARGE if error.code == 413 else None
        response = error_response(error.code or 500, errno, message)
        if error.code == 405 and error.valid_methods:
            response.headers["Allow"] = ", ".join(error.valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error", extra=log_fields(error=repr(error)))
        return error_response(500, ERRNO_UNKNOWN, "An unexpected server error occurred")
