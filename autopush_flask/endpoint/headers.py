"""CORS and Strict-Transport-Security on every response (docs/protocol.md#response-headers)."""

from __future__ import annotations

from flask import Flask, Response, request

from autopush_flask.config import Settings

ALLOW_HEADERS = "content-encoding,encryption,crypto-key,ttl,encryption-key,content-type,authorization,topic"
EXPOSE_HEADERS = "location,www-authenticate"
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}


def install_response_headers(app: Flask, settings: Settings) -> None:
    sts = f"max-age={settings.sts_max_age};includeSubDomains" if settings.sts_max_age else None

    @app.after_request
    def add_headers(response: Response) -> Response:
        if settings.cors:
            response.headers["Access-Control-Allow-Origin"] = "*"
            response.headers["Access-Control-Allow-Methods"] = _route_methods()
            response.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
            response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        if sts:
            response.headers["Strict-Transport-Security"] = sts
        return response


def _route_methods() -> str:
    rule = request.url_rule
    methods = (rule.methods or set()) - IMPLICIT_METHODS if rule is not None else set()
    return ",".join(sorted(methods))
