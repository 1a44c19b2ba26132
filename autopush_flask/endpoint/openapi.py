"""``/openapi.json``: the public API, generated from the request schemas."""

from __future__ import annotations

from functools import cache
from typing import Any

from apispec import APISpec
from apispec.ext.marshmallow import MarshmallowPlugin
from flask import Blueprint, Response, jsonify

from autopush_flask import __version__
from autopush_flask.endpoint.registration import MAX_BODY as REGISTRATION_MAX_BODY
from autopush_flask.endpoint.schemas import (
    BridgePathSchema,
    ErrorSchema,
    MessageIdPathSchema,
    PushHeadersSchema,
    PushPathSchema,
    RegistrationSchema,
    SubscriptionSchema,
)
from autopush_flask.endpoint.state import endpoint_state

openapi = Blueprint("openapi", __name__)

PUSH_ERRORS = {
    "400": "Invalid headers (errno 110–114; 110 also for an invalid Urgency)",
    "401": "VAPID authentication failed (errno 109)",
    "403": "VAPID missing or signed by a key this server does not allow (errno 120)",
    "404": "Invalid endpoint (errno 102)",
    "408": "Body sent too slowly (errno null)",
    "410": "Subscription gone (errno 103, 105, 106)",
    "413": "Payload too large (errno 104)",
    "429": "Too many pushes to this subscription (errno 121); retry after Retry-After seconds",
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
                "content": {
                    "application/octet-stream": {
                        "schema": {"type": "string", "format": "binary", "maxLength": max_data},
                    }
                },
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


BRIDGE_ERRORS = {
    "400": "Invalid router type (errno 108), app id or body",
    "401": "Bad or missing bearer secret (errno 109)",
    "408": "Body sent too slowly (errno null)",
    "410": "Unknown UAID (errno 103) or channel (errno 106)",
    "413": f"Body larger than {REGISTRATION_MAX_BODY} bytes (errno 104)",
    "503": "Storage unavailable; retry (errno 201, 202)",
}
REGISTRATION = "/v1/{router_type}/{app_id}/registration"
SECRET_HEADER = {
    "in": "header",
    "name": "Authorization",
    "required": True,
    "description": "Bearer <secret from the registration>",
    "schema": {"type": "string"},
}


def _bridge_operation(
    summary: str, path_fields: list[str], body: type | None = None, authenticated: bool = True
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "parameters": [{"in": "path", "schema": BridgePathSchema(only=path_fields)}],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": {"type": "object"}}}},
            **_errors(BRIDGE_ERRORS),
        },
    }
    if authenticated:
        operation["parameters"].append(SECRET_HEADER)
    if body is not None:
        operation["requestBody"] = {"content": {"application/json": {"schema": body}}}
    return operation


def _bridge_paths(spec: APISpec) -> None:
    user = ["router_type", "app_id", "uaid"]
    spec.path(
        path=REGISTRATION,
        operations={
            "post": _bridge_operation(
                "Register a device", ["router_type", "app_id"], RegistrationSchema, authenticated=False
            )
        },
    )
    spec.path(
        path=f"{REGISTRATION}/{{uaid}}",
        operations={
            "get": _bridge_operation("List channels", user),
            "put": _bridge_operation("Update the device token", user, RegistrationSchema),
            "delete": _bridge_operation("Unregister the device", user),
        },
    )
    spec.path(
        path=f"{REGISTRATION}/{{uaid}}/subscription",
        operations={"post": _bridge_operation("Add a channel", user, SubscriptionSchema)},
    )
    spec.path(
        path=f"{REGISTRATION}/{{uaid}}/subscription/{{chid}}",
        operations={"delete": _bridge_operation("Remove a channel", [*user, "chid"])},
    )


@cache
def _document(max_data: int) -> dict[str, Any]:
    spec = APISpec(
        title="autopush-flask push service",
        version=__version__,
        openapi_version="3.0.3",
        plugins=[MarshmallowPlugin()],
    )
    spec.components.schema("Error", schema=ErrorSchema)
    spec.path(path="/wpush/{api_version}/{token}", operations=_push_operation(["api_version", "token"], max_data))
    spec.path(path="/wpush/{token}", operations=_push_operation(["token"], max_data))
    spec.path(
        path="/m/{message_id}",
        operations={
            "delete": {
                "summary": "Cancel a stored message",
                "parameters": [{"in": "path", "schema": MessageIdPathSchema}],
                "responses": {
                    "204": {"description": "Deleted (or already gone)"},
                    **_errors({"400": "Invalid message id", "503": "Storage unavailable; retry"}),
                },
            }
        },
    )
    _bridge_paths(spec)
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
