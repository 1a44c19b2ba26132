"""Health and version routes (docs/protocol.md#health; checklist 124–126) on a real dynalite."""

from __future__ import annotations

import json

import pytest

from autopush_flask import __version__, health
from autopush_flask.connection.app import create_connection_app
from autopush_flask.endpoint.app import create_endpoint_app


@pytest.fixture
def client(make_settings):
    return create_endpoint_app(make_settings()).test_client()


def test_124_status(client) -> None:
    response = client.get("/status")
    assert response.status_code == 200
    assert response.get_json() == {"status": "OK", "version": __version__}


def test_125_lbheartbeat_is_empty(client) -> None:
    response = client.get("/__lbheartbeat__")
    assert (response.status_code, response.data) == (200, b"")


@pytest.mark.parametrize("path", ["/health", "/__heartbeat__"])
def test_126_health_ok_with_both_tables(client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.get_json() == {
        "status": "OK", "version": __version__, "clients": 0,
        "router_table": {"status": "OK"}, "message_table": {"status": "OK"},
    }


def test_126_health_not_ok_without_message_table(make_settings, table_prefix: str) -> None:
    app = create_endpoint_app(make_settings())
    app.extensions["autopush"].storage.admin.delete_table(f"{table_prefix}_message")
    response = app.test_client().get("/health")
    assert response.status_code == 503
    body = response.get_json()
    assert body["status"] == "NOT OK"
    assert body["message_table"] == {"status": "NOT OK", "error": "Nonexistent table"}
    assert body["router_table"] == {"status": "OK"}


def test_connection_app_serves_health_too(make_settings) -> None:
    app = create_connection_app(make_settings("connection"))
    for flask_app in (app.public_app, app.node_api_app):
        client = flask_app.test_client()
        assert client.get("/status").status_code == 200
        assert client.get("/health").get_json()["clients"] == 0


def test_version_file(client, tmp_path, monkeypatch) -> None:
    document = {"source": "s", "version": "1", "commit": "c", "build": "b"}
    monkeypatch.setattr(health, "VERSION_FILE", tmp_path / "version.json")
    assert client.get("/__version__").status_code == 500
    (tmp_path / "version.json").write_text(json.dumps(document))
    response = client.get("/__version__")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.get_json() == document
