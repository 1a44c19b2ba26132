"""The admin view's Flask app (docs/operations.md#admin-view).

Built by ``create_admin_app`` from explicit parts (the token, the store, the
tour of the workers), so it needs no connection node to be tested or served.
Every answer is ``no-store`` with a strict Content-Security-Policy (no
script, no inline style, no framing); errors are HTML pages, or JSON under
``/api/``, and never tracebacks.
"""

from __future__ import annotations

import time

from flask import Flask, Response, request
from werkzeug.exceptions import HTTPException

from autopush_flask.admin.context import ADMIN_KEY, AdminContext, error_response, log
from autopush_flask.admin.views import admin_views, require_login
from autopush_flask.db.errors import StorageError
from autopush_flask.logging import log_fields

# A login form holds one token (and a few bytes of field names): anything
# larger is refused with 413 before it is parsed.
MAX_BODY_BYTES = 4096
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    # Not no-referrer: with it browsers send "Origin: null" on the login form's
    # own posts, which the same-origin check must refuse.
    "Referrer-Policy": "same-origin",
}


def _utc(seconds: float | int | None) -> str:
    if seconds is None:
        return ""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(seconds))


def _age(seconds: float | int | None) -> str:
    """``3 d 4 h``, ``5 h 2 min``, ``12 min``, ``40 s``: the two largest units."""
    if seconds is None:
        return ""
    remaining = max(0, int(seconds))
    parts: list[str] = []
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size} {unit}")
            remaining %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _secure(response: Response) -> Response:
    for name, value in SECURITY_HEADERS.items():
        response.headers[name] = value
    return response


def _http_error(error: HTTPException) -> Response:
    response = error_response(error.code or 500, error.description or error.name)
    if error.code == 413:
        response.headers["Connection"] = "close"
    return response


def _storage_error(error: StorageError) -> Response:
    return error_response(503, f"Storage is unavailable ({type(error).__name__}); try again shortly.")


def _unexpected(error: Exception) -> Response:
    log.error("Admin view failed", exc_info=error, extra=log_fields(path=request.path))
    return error_response(500, "The admin view failed; see the node's log.")


def create_admin_app(admin: AdminContext) -> Flask:
    """The admin view over ``admin``'s parts; serve it with any WSGI server."""
    app = Flask(__name__, static_folder="static", static_url_path="/static")
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY_BYTES
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_BODY_BYTES
    app.extensions[ADMIN_KEY] = admin
    app.before_request(require_login)
    app.after_request(_secure)
    app.register_error_handler(HTTPException, _http_error)
    app.register_error_handler(StorageError, _storage_error)
    app.register_error_handler(Exception, _unexpected)
    app.add_template_filter(_utc, "utc")
    app.add_template_filter(_age, "age")
    app.register_blueprint(admin_views)
    return app
