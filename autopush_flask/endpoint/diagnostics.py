"""Log-check routes (docs/protocol.md#health): prove that errors reach the log pipeline."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from autopush_flask.endpoint.errors import error_response
from autopush_flask.push_errors import ERRNO_UNKNOWN, UNKNOWN_DIAGNOSTIC, PushError

diagnostics = Blueprint("diagnostics", __name__)
log = logging.getLogger("autopush.endpoint")
TEAPOT = 418


@diagnostics.get("/v1/err")
@diagnostics.get("/__error__")
def test_error() -> Response:
    log.error("Test Error")
    return error_response(TEAPOT, ERRNO_UNKNOWN, "ERROR:Success", reason="Test Error")


@diagnostics.get("/v1/err/<kind>")
def test_failure(kind: str) -> Response:
    if kind != "crit":
        raise PushError(UNKNOWN_DIAGNOSTIC)
    try:
        raise RuntimeError("Test Failure")
    except RuntimeError:
        log.critical("Test Failure", exc_info=True)
    return error_response(TEAPOT, ERRNO_UNKNOWN, "FAILURE:Success", reason="Test Failure")
