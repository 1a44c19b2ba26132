"""The 201's ``Location`` skips werkzeug's IRI conversion, so it must already be what that conversion gives."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from flask import Response
from werkzeug.test import EnvironBuilder

from autopush_flask.endpoint.state import EndpointState
from autopush_flask.endpoint.webpush import Created

# A Fernet message id: url-safe base64 with its padding.
MESSAGE_ID = "gAAAAABnZ-x_9Q" + "Az09-_" * 20 + "=="


@pytest.mark.parametrize(
    "endpoint_url",
    [
        "https://push.example.com",
        "https://PUSH.Example.com:8443",
        "https://bücher.example/push path",
        "http://[::1]:8082/prefix",
    ],
)
def test_location_is_what_werkzeug_would_write(endpoint_url: str) -> None:
    state = EndpointState(SimpleNamespace(settings=SimpleNamespace(endpoint_url=endpoint_url)), None, None)  # type: ignore[arg-type]
    environ = EnvironBuilder(method="POST", path="/wpush/v1/x").get_environ()
    headers = [("Location", f"{endpoint_url}/m/{MESSAGE_ID}"), ("TTL", "60")]
    expected = Response(b"", status=201, headers=headers).get_wsgi_headers(environ)
    created = Created(b"", status=201, headers=[("Location", state.location_prefix + MESSAGE_ID), ("TTL", "60")])
    written = created.get_wsgi_headers(environ)
    assert written["Location"] == expected["Location"]
    assert sorted(written.items()) == sorted(expected.items())
