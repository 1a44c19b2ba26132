"""CORS and Strict-Transport-Security on every response (docs/protocol.md#response-headers)."""

from __future__ import annotations

from flask import Flask, Response, request
from werkzeug.routing import Rule

from autopush_flask.config import Settings

ALLOW_HEADERS = "content-encoding,encryption,crypto-key,ttl,encryption-key,content-type,authorization,topic"
EXPOSE_HEADERS = "location,www-authenticate"
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


def install_response_headers(app: Flask, settings: Settings) -> None:
    fixed: list[tuple[str, str]] = []
    if settings.cors:
        fixed += [
            ("Access-Control-Allow-Origin", "*"),
            ("Access-Control-Allow-Headers", ALLOW_HEADERS),
            ("Access-Control-Expose-Headers", EXPOSE_HEADERS),
        ]
    if settings.sts_max_age:
        fixed.append(("Strict-Transport-Security", f"max-age={settings.sts_max_age};includeSubDomains"))
    # One entry per URL rule of the app (rules are not hashable), and one for no rule.
    methods: dict[tuple[str, str] | None, str] = {}

    @app.after_request
    def add_headers(response: Response) -> Response:
        # Added rather than set: no view writes these, and ``set`` would scan
        # the response's headers once per name, on every push.
        if settings.cors:
            rule = request.url_rule
            key = (rule.endpoint, rule.rule) if rule is not None else None
            allowed = methods.get(key)
            if allowed is None:
                allowed = methods[key] = _route_methods(rule)
            response.headers.add("Access-Control-Allow-Methods", allowed)
        response.headers.extend(fixed)
        return response


def _route_methods(rule: Rule | None) -> str:
    methods = (rule.methods or set()) - IMPLICIT_METHODS if rule is not None else set()
    return ",".join(sorted(methods))
