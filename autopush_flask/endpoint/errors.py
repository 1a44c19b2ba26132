"""Error responses of the endpoint node (docs/protocol.md#error-responses).

Every error, including unknown paths, 405s and storage outages, leaves as
the same JSON body with the protocol's status, errno and headers. Which errors
exist is ``autopush_flask.push_errors``; this module only renders them, and
turns any ``StorageError`` a handler lets through into its 503.
"""

from __future__ import annotations

import logging
from http import HTTPStatus

from flask import Flask, Response, jsonify, request
from werkzeug.exceptions import HTTPException

from autopush_flask.db import StorageError
from autopush_flask.logging import log_fields
from autopush_flask.push_errors import (
    AUTHORIZATION_TOO_LONG,
    ERRNO_TOO_LARGE,
    ERRNO_UNKNOWN,
    PushError,
    storage_error,
)

MORE_INFO = "http://autopush.readthedocs.io/en/latest/http.html#error-codes"
RETRY_AFTER_SECONDS = "120"
GONE_MAX_AGE = "max-age=86400"
MAX_AUTHORIZATION = 4096  # bytes of the Authorization header

log = logging.getLogger("autopush.endpoint")


def authorization_header() -> str | None:
    """The ``Authorization`` header, refused (401 errno 109) past ``MAX_AUTHORIZATION`` bytes.

    A real VAPID header is about 400 bytes and a bridge secret 71; gunicorn
    alone would let 8190 bytes through to base64, JSON and ECDSA work.
    """
    value = request.headers.get("Authorization")
    if value is not None and len(value) > MAX_AUTHORIZATION:
        raise PushError(AUTHORIZATION_TOO_LONG)
    return value


def error_response(
    status: int,
    errno: int | None,
    message: str | None,
    headers: dict[str, str] | None = None,
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
        valid_methods = getattr(error, "valid_methods", None)  # set by MethodNotAllowed only
        if error.code == 405 and valid_methods:
            response.headers["Allow"] = ", ".join(valid_methods)
        return response

    @app.errorhandler(Exception)
    def unexpected(error: Exception) -> Response:
        log.exception("unexpected error", extra=log_fields(error=repr(error)))
        return error_response(500, ERRNO_UNKNOWN, "An unexpected server error occurred")
