"""``/openapi.json`` stays in sync with the endpoint app (docs/protocol.md#endpoint-routes).

The document is generated from the request schemas, but its paths are listed
by hand in ``autopush_flask/endpoint/openapi.py``: a route added to the app
(e.g. the bridge API) without a document entry, or the other way round, fails
here.
"""

from __future__ import annotations

import re

import pytest
import schemathesis
from flask import Flask

from autopush_flask.endpoint.app import create_endpoint_app
from autopush_flask.endpoint.schemas import PushHeadersSchema

# Flask adds HEAD to every GET rule and OPTIONS to every rule (CORS preflight, docs/protocol.md#response-headers).
IMPLICIT_METHODS = {"HEAD", "OPTIONS"}
# Not part of the public API document:
#  * /openapi.json describes the API; it is not an operation of it.
#  * The log-check routes of docs/protocol.md#health (/v1/err, /v1/err/<kind>, /__error__) exist to prove
#    that errors reach the log pipeline; openapi.py does not list them (adding them there is
#    the alternative to this exclusion).
#  * Flask's implicit static route (endpoint "static"): see test_no_flask_static_route.
UNDOCUMENTED_RULES = {"/openapi.json", "/v1/err", "/v1/err/<kind>", "/__error__"}
UNDOCUMENTED_ENDPOINTS = {"static"}
PUSH_PATHS = ("/wpush/{api_version}/{token}", "/wpush/{token}")
FLASK_VARIABLE = re.compile(r"<(?:[^<>:]+:)?([^<>:]+)>")  # <name> or <converter:name>
TEMPLATE_VARIABLE = re.compile(r"{([^{}]+)}")


@pytest.fixture
def app(make_settings) -> Flask:
    return create_endpoint_app(make_settings())


@pytest.fixture
def document(app: Flask) -> dict:
    response = app.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    return response.get_json()


def openapi_path(rule: str) -> str:
    return FLASK_VARIABLE.sub(r"{\1}", rule)


def app_operations(app: Flask) -> dict[str, set[str]]:
    operations: dict[str, set[str]] = {}
    for rule in app.url_map.iter_rules():
        if rule.rule in UNDOCUMENTED_RULES or rule.endpoint in UNDOCUMENTED_ENDPOINTS:
            continue
        operations.setdefault(openapi_path(rule.rule), set()).update(
            method.lower() for method in (rule.methods or set()) - IMPLICIT_METHODS
        )
    return operations


def document_operations(document: dict) -> dict[str, set[str]]:
    return {path: set(item) - {"parameters", "summary", "description", "servers"}
            for path, item in document["paths"].items()}


def test_openapi_path_conversion() -> None:
    assert openapi_path("/wpush/<api_version>/<token>") == "/wpush/{api_version}/{token}"
    assert openapi_path("/static/<path:filename>") == "/static/{filename}"


def test_every_route_is_documented_and_every_documented_operation_exists(app: Flask, document: dict) -> None:
    routes, documented = app_operations(app), document_operations(document)
    assert routes, "no routes found"
    assert {p: m for p, m in routes.items() if documented.get(p) != m} == {}, "routes missing from /openapi.json"
    assert {p: m for p, m in documented.items() if routes.get(p) != m} == {}, "documented but not served"


def test_every_documented_path_parameter_is_declared(document: dict) -> None:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            declared = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert declared == set(TEMPLATE_VARIABLE.findall(path)), f"{method.upper()} {path}"
            assert all(p["required"] for p in operation.get("parameters", []) if p["in"] == "path")


@pytest.mark.parametrize("path", PUSH_PATHS)
def test_push_header_parameters_are_the_header_schema(document: dict, path: str) -> None:
    fields = PushHeadersSchema().fields.values()
    parameters = [p for p in document["paths"][path]["post"]["parameters"] if p["in"] == "header"]
    assert sorted(p["name"] for p in parameters) == sorted(field.data_key for field in fields)
    required = {p["name"] for p in parameters if p.get("required")}
    assert required == {field.data_key for field in fields if field.required} == {"TTL"}


def test_document_is_valid_openapi_3_0(document: dict) -> None:
    # openapi-spec-validator is not installed; schemathesis validates against the
    # OpenAPI 3.0 meta-schema (raises jsonschema_rs.ValidationError when invalid).
    assert document["openapi"].startswith("3.0.")
    schemathesis.openapi.from_dict(document).validate()


def test_no_flask_static_route(app: Flask) -> None:
    assert [rule.rule for rule in app.url_map.iter_rules() if rule.endpoint == "static"] == []
