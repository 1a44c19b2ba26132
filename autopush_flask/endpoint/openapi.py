"""``/openapi.json``: the public API, generated from the request schemas."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from autopush_flask import __version__
from autopush_flask.endpoint.schemas import ErrorSchema, MessageIdPathSchema, PushHeadersSchema, PushPathSchema
from autopush_flask.endpoint.state import endpoint_state

openapi = Blueprint("openapi", __name__)

PUSH_ERRORS = {
    "400": "Invalid headers (errno 110–114)",
    "401": "VAPID authentication failed (errno 109)",
    "404": "Invalid endpoint (errno 102)",
    "410": "Subscription gone (errno 103, 105, 106)",
    "413": "Payload too large (errno 104)",
    "503": "Storage unavailable; retry (errno 201, 202)",
}
HEALTH_PATHS = {
    "/status": "Liveness and version",
    "/health": "Table checks",
    "/__heartbeat__": "Table checks",
    "/__lbheartbeat__": "Load-balancer liveness",
    "/__version__": "Build information",
}


def _errors(codes: dict[str, str]) -> dict[str, Any]:
    return {
        code: {"description": text, "content": {"application/json": {"schema": "Error"}}}
        for code, text in codes.items()
    }


def _push_operation(path_fields: list[str], max_data: int) -> dict[str, Any]:
    path_schema = PushPathSchema(only=path_fields)
    return {
        "post": {
            "summary": "Send a Web Push message",
            "parameters": [
                {"in": "path", "schema": path_schema},
                {"in": "header", "schema": PushHeadersSchema},
            ],
            "requestBody": {
                "required": False,
                "content": {"application/octet-stream": {
                    "schema": {"type": "string", "format": "binary", "maxLength": max_data},
                }},
            },
            "responses": {
                "201": {
                    "description": "Accepted (delivered, stored or discarded)",
                    "headers": {
                        "Location": {"schema": {"type": "string"}, "description": "URL to cancel the message"},
                        "TTL": {"schema": {"type": "integer"}, "description": "The TTL applied"},
                    },
                },
                **_errors(PUSH_ERRORS),
            },
        }
    }


@cache
def _document(max_data: int) -> dict[str, Any]:
    spec = APISpec(
        title="autopush-flask push service", version=__version__, openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
    )
    spec.components.schema("Error", schema=ErrorSchema)
    spec.path(path="/wpush/{api_version}/{token}", operations=_push_operation(["api_version", "token"], max_data))
    spec.path(path="/wpush/{token}", operations=_push_operation(["token"], max_data))
    spec.path(path="/m/{message_id}", operations={"delete": {
        "summary": "Cancel a stored message",
        "parameters": [{"in": "path", "schema": MessageIdPathSchema}],
        "responses": {"204": {"description": "Deleted (or already gone)"},
                      **_errors({"400": "Invalid message id", "503": "Storage unavailable; retry"})},
    }})
    for path, summary in HEALTH_PATHS.items():
        responses = {"200": {"description": "OK"}}
        if path in ("/health", "/__heartbeat__"):
            responses["503"] = {"description": "A table check failed"}
        spec.path(path=path, operations={"get": {"summary": summary, "responses": responses}})
    return spec.to_dict()


def openapi_document() -> dict[str, Any]:
    return _document(endpoint_state().settings.max_data)


@openapi.get("/openapi.json")
def document() -> Response:
    return jsonify(openapi_document())
