"""The admin view's pages and their JSON twins (docs/operations.md#admin-view).

| Page | JSON | What |
|---|---|---|
| ``/`` | ``/api/overview`` | the node's workers: clients, Megaphone versions, recent errors |
| ``/uaid/<uaid>`` | ``/api/uaid/<uaid>`` | a UAID's record, channels, stored messages' counts and ages |

``/uaid?uaid=…`` (the lookup form) redirects to ``/uaid/<uaid>``;
``/login`` and ``/logout`` manage the browser's session (``auth.py``).
Nothing here returns a payload, a message version or a bridge token.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, Response, jsonify, redirect, render_template, request, url_for
from flask.typing import ResponseReturnValue

from autopush_flask.admin.auth import (
    COOKIE_NAME,
    SESSION_SECONDS,
    bearer_matches,
    session_cookie,
    session_valid,
    token_matches,
)
from autopush_flask.admin.context import context, error_response, log, wants_json
from autopush_flask.admin.uaid import uaid_report
from autopush_flask.ids import canonical_uaid
from autopush_flask.logging import log_fields

admin_views = Blueprint("admin", __name__)
OPEN_ENDPOINTS = frozenset({"admin.login_form", "admin.login", "static"})
BAD_UAID = "Not a UAID: give 32 hex digits or a UUID (dashed, braces or urn:uuid:)."


def _signed_in() -> bool:
    return session_valid(request.cookies.get(COOKIE_NAME), context().token)


def require_login() -> ResponseReturnValue | None:
    """Before every request: the login pages and the stylesheet are open, the rest needs the token.

    JSON routes take the bearer token (or the browser's session); pages
    need the session and redirect to ``/login`` without it. Unknown paths
    are treated like pages, so they reveal nothing before login.
    """
    if request.endpoint in OPEN_ENDPOINTS:
        return None
    if _signed_in():
        return None
    if wants_json():
        if bearer_matches(request.headers.get("Authorization"), context().token):
            return None
        if request.headers.get("Authorization"):
            log.warning("Admin token refused", extra=log_fields(remote_addr=request.remote_addr, path=request.path))
        response = jsonify(error=401, message="Send Authorization: Bearer <AUTOPUSH_ADMIN_TOKEN>.")
        response.status_code = 401
        response.headers["WWW-Authenticate"] = 'Bearer realm="autopush admin"'
        return response
    return redirect(url_for("admin.login_form", next=_local_path(request.full_path)))


def _local_path(target: str | None) -> str:
    """``target`` if it is a path on this server, else ``/`` (no open redirect)."""
    if not target:
        return "/"
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target.rstrip("?") or "/"


def _same_origin() -> bool:
    """A browser says who posts (``Origin``, ``Sec-Fetch-Site``): refuse posts from any other origin.

    Clients that send neither (curl, scripts) are not browsers, so not a
    cross-site forgery.
    """
    origin = request.headers.get("Origin")
    site = request.headers.get("Sec-Fetch-Site")
    return (origin is None or origin == request.host_url.rstrip("/")) and site in (None, "same-origin", "none")


# ---- session -------------------------------------------------------------------------------


@admin_views.get("/login")
def login_form() -> Any:
    return render_template("login.html", next=_local_path(request.args.get("next")), error=None)


@admin_views.post("/login")
def login() -> Any:
    if not _same_origin():
        return error_response(403, "Cross-origin login refused.")
    target = _local_path(request.form.get("next"))
    if not token_matches(request.form.get("token"), context().token):
        log.warning("Admin login refused", extra=log_fields(remote_addr=request.remote_addr))
        page = render_template("login.html", next=target, error="Wrong token.")
        return Response(page, status=401, mimetype="text/html")
    log.info("Admin login", extra=log_fields(remote_addr=request.remote_addr))
    response = redirect(target, code=303)
    response.set_cookie(
        COOKIE_NAME,
        session_cookie(context().token),
        max_age=SESSION_SECONDS,
        httponly=True,
        samesite="Strict",
        path="/",
    )
    return response


@admin_views.post("/logout")
def logout() -> Any:
    if not _same_origin():
        return error_response(403, "Cross-origin logout refused.")
    response = redirect(url_for("admin.login_form"), code=303)
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="Strict")
    return response


# ---- overview ------------------------------------------------------------------------------


def overview() -> dict[str, Any]:
    admin = context()
    tour = admin.tour()
    workers = []
    errors = []
    for report in tour["workers"]:
        worker = {key: value for key, value in report.items() if key != "recent_errors"}
        workers.append(worker)
        errors += [{"slot": report.get("slot"), **entry} for entry in report.get("recent_errors", [])]
    errors.sort(key=lambda entry: entry.get("timestamp", 0), reverse=True)
    versions: dict[str, list[str]] = {}
    for worker in workers:
        for broadcast, version in (worker.get("broadcasts") or {}).items():
            if version not in versions.setdefault(broadcast, []):
                versions[broadcast].append(version)
    return {
        "node": {**admin.about, "time": int(time.time())},
        "totals": {
            "workers": len(workers),
            "clients": sum(int(w.get("clients", 0)) for w in workers),
            "connections": sum(int(w.get("connections", 0)) for w in workers),
        },
        "workers": workers,
        "unreachable": tour["unreachable"],
        "absent_slots": tour["absent_slots"],
        # One version per id unless the workers disagree (a poll in between).
        "broadcasts": dict(sorted(versions.items())),
        "recent_errors": errors,
    }


@admin_views.get("/")
def overview_page() -> str:
    return render_template("overview.html", view=overview())


@admin_views.get("/api/overview")
def overview_json() -> Response:
    return jsonify(overview())


# ---- one UAID ------------------------------------------------------------------------------


def _uaid_view(text: str) -> dict[str, Any] | Response:
    try:
        uaid = canonical_uaid(text)
    except ValueError:
        return error_response(400, BAD_UAID)
    admin = context()
    view = uaid_report(admin.storage, uaid, admin.uaid_hash(uaid))
    log.info("Admin UAID lookup", extra=log_fields(uaid_hash=uaid, found=view is not None))
    if view is None:
        return error_response(404, "No router record for this UAID (never registered, dropped or expired).")
    return view


@admin_views.get("/uaid")
def uaid_lookup() -> Any:
    text = request.args.get("uaid", "").strip()
    try:
        uaid = canonical_uaid(text)
    except ValueError:
        return error_response(400, BAD_UAID)
    return redirect(url_for("admin.uaid_page", uaid=uaid), code=303)


@admin_views.get("/uaid/<uaid>")
def uaid_page(uaid: str) -> Any:
    view = _uaid_view(uaid)
    if isinstance(view, Response):
        return view
    return render_template("uaid.html", view=view)


@admin_views.get("/api/uaid/<uaid>")
def uaid_json(uaid: str) -> Any:
    view = _uaid_view(uaid)
    return view if isinstance(view, Response) else jsonify(view)
