"""Log-check routes (SPEC §4.13): prove that errors reach the log pipeline."""

from __future__ import annotations

import logging

from flask import Blueprint, Response

from autopush_flask.endpoint.errors import ERRNO_UNKNOWN, PushError, error_response

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
        raise PushError(404, 0, "Not Found")
    try:
        raise RuntimeError("Test Failure")
    except RuntimeError:
        log.critical("Test Failure", exc_info=True)
    return error_response(TEAPOT, ERRNO_UNKNOWN, "FAILURE:Success", reason="Test Failure")
