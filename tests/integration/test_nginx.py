"""Deployment behind nginx (conformance item 157), with real nginx running deploy/nginx.conf.

nginx terminates TLS for the public host ``push.example.test`` on a loopback
port, in front of a real connection node and endpoint node. The test process
resolves ``push.example.test`` to 127.0.0.1 and trusts the test CA, so the
clients use the public URLs exactly as the service hands them out.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from flask import jsonify, request
from requests.adapters import HTTPAdapter
from werkzeug.serving import make_server

from autopush_flask.config import Settings
from autopush_flask.endpoint.app import create_endpoint_app
from tests.support.nginx import Certificate, Nginx, find_nginx, make_certificate, render, site_values
from tests.support.processes import free_port
from tests.support.push_client import PushClient
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer, Subscription, b64url_decode

PUBLIC_HOST = "push.example.test"
FIREFOX_PING_INTERVAL = 30 * 60  # dom.push.pingInterval (docs/architecture.md#how-a-push-travels)
AUTO_PING_INTERVAL = 300  # AUTOPUSH_AUTO_PING_INTERVAL default
MAX_DATA = 5630  # AUTOPUSH_MAX_DATA default


# ---- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def nginx_binary() -> str:
    binary = find_nginx()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs the Debian package nginx")
        pytest.skip("nginx is not installed (Debian package nginx; .ci/run installs it in CI)")
    return binary


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Certificate:
    return make_certificate(tmp_path_factory.mktemp("tls"), PUBLIC_HOST)


@pytest.fixture(scope="module")
def public_port() -> int:
    return free_port()


@pytest.fixture(scope="module")
def origin(public_port: int) -> str:
    """The public origin: AUTOPUSH_ENDPOINT_URL and the VAPID audience."""
    return f"https://{PUBLIC_HOST}:{public_port}"


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, origin: str) -> Stack:
    return start_stack(request, "stack", AUTOPUSH_ENDPOINT_URL=origin, AUTOPUSH_PROXY_FIX="true")


@pytest.fixture(scope="module")
def public_dns(certificate: Certificate) -> Iterator[None]:
    """``push.example.test`` → 127.0.0.1 in this process; requests trusts the test CA."""
    real_getaddrinfo = socket.getaddrinfo

    def getaddrinfo(host, *args, **kwargs):  # noqa: ANN001, ANN202 - socket's signature
        return real_getaddrinfo("127.0.0.1" if host == PUBLIC_HOST else host, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(socket, "getaddrinfo", getaddrinfo)
        patch.setenv("REQUESTS_CA_BUNDLE", str(certificate.ca))
        patch.setenv("NO_PROXY", PUBLIC_HOST)
        yield


@pytest.fixture(scope="module")
def nginx(nginx_binary: str, stack: Stack, certificate: Certificate, public_port: int,
          tmp_path_factory, public_dns: None) -> Iterator[Nginx]:
    site = render(site_values(
        public_port, PUBLIC_HOST, certificate,
        connection=f"127.0.0.1:{stack.connection.port}", endpoint=f"127.0.0.1:{stack.endpoint_port}",
    ))
    proxy = Nginx(nginx_binary, tmp_path_factory.mktemp("nginx"), site, public_port).start()
    yield proxy
    proxy.stop()


@pytest.fixture(scope="module")
def app_server() -> AppServer:
    return AppServer()


def connect(origin: str, certificate: Certificate, stack: Stack) -> PushClient:
    client = PushClient(f"{origin.replace('https', 'wss', 1)}/", sslopt={"ca_certs": str(certificate.ca)})
    stack.clients.append(client)
    return client


def subscribe(client: PushClient, key: str | None = None) -> tuple[Subscription, str]:
    channel_id = str(uuid.uuid4())
    reply = client.register(channel_id, key=key)
    assert reply["status"] == 200, reply
    return Subscription(reply["pushEndpoint"]), channel_id


def is_nginx_page(response: requests.Response) -> bool:
    """nginx's own error page (HTML), not an answer of the endpoint node (JSON)."""
    return (response.headers.get("Content-Type", "").startswith("text/html")
            and "<center>nginx" in response.text)


# ---- the configuration file itself -------------------------------------------------


def location_block(site: str, head: str) -> str:
    match = re.search(re.escape(head) + r"\s*\{(.*?)\}", site, re.S)
    assert match, f"no {head!r} block"
    return match.group(1)


def seconds(block: str, directive: str) -> int:
    match = re.search(rf"^\s*{directive}\s+(\d+)s;", block, re.M)
    assert match, f"{directive} not set"
    return int(match.group(1))


def size_bytes(site: str, directive: str) -> int:
    value, unit = re.search(rf"^\s*{directive}\s+(\d+)([km]?);", site, re.M).groups()
    return int(value) * {"": 1, "k": 1024, "m": 1024 * 1024}[unit]


def test_157_config_keeps_idle_push_connections_open(certificate: Certificate) -> None:
    """Waiting out nginx's 60 s default in CI is pointless: the rendered file says it."""
    site = render(site_values(8443, PUBLIC_HOST, certificate, "10.0.0.11:8080", "10.0.0.21:8082"))
    websocket = location_block(site, "location = /")
    assert "proxy_pass http://autopush_connection;" in websocket
    assert "proxy_http_version 1.1;" in websocket
    assert re.search(r"proxy_set_header Upgrade\s+\$http_upgrade;", websocket)
    assert re.search(r"proxy_set_header Connection\s+\$connection_upgrade;", websocket)
    assert re.search(r"map \$http_upgrade \$connection_upgrade \{\s*default upgrade;\s*''\s+close;", site)
    for directive in ("proxy_read_timeout", "proxy_send_timeout"):
        assert seconds(websocket, directive) > max(FIREFOX_PING_INTERVAL, AUTO_PING_INTERVAL) + 60


def test_157_config_limits_bodies_and_hides_the_router_routes(certificate: Certificate) -> None:
    site = render(site_values(8443, PUBLIC_HOST, certificate, "10.0.0.11:8080", "10.0.0.21:8082"))
    # Above AUTOPUSH_MAX_DATA, so the endpoint's JSON 413 errno 104 still answers
    # bodies just over it; far below anything unreasonable.
    assert MAX_DATA < size_bytes(site, "client_max_body_size") <= 16 * 1024
    for private in ("/push/", "/notif/"):
        assert f"location ^~ {private}" in site
        assert "return 404;" in location_block(site, f"location ^~ {private}")
    # Only the two upstreams, each a public port; nothing points at a router port.
    assert re.findall(r"^\s*server\s+(\S+);", site, re.M) == ["10.0.0.11:8080", "10.0.0.21:8082"]
    endpoint = location_block(site, "location /")
    for header in ("X-Forwarded-For", "X-Forwarded-Proto", "X-Forwarded-Host"):
        assert re.search(rf"proxy_set_header {header}\s+\$", endpoint), header


def test_157_config_refuses_a_forgotten_placeholder(certificate: Certificate) -> None:
    values = site_values(8443, PUBLIC_HOST, certificate, "10.0.0.11:8080", "10.0.0.21:8082")
    del values["ENDPOINT_UPSTREAM"]
    with pytest.raises(ValueError, match="@ENDPOINT_UPSTREAM@"):
        render(values)


# ---- through real nginx -----------------------------------------------------------


def test_157_hello_register_push_receive_through_nginx(
    nginx: Nginx, stack: Stack, certificate: Certificate, origin: str, app_server: AppServer
) -> None:
    client = connect(origin, certificate, stack)
    assert client.subprotocol == "push-notification"
    assert client.hello()["status"] == 200
    subscription, channel_id = subscribe(client, key=app_server.application_server_key)
    # The public scheme and host (and this test's public port), never the nodes' own.
    assert subscription.endpoint.startswith(f"https://{PUBLIC_HOST}:{nginx.port}/wpush/v2/")
    assert f":{stack.endpoint_port}" not in subscription.endpoint
    # pywebpush signs VAPID with aud = that public origin and posts through nginx.
    response = app_server.push(subscription, "through nginx")
    assert response.status_code == 201, response.text
    assert response.headers["Location"].startswith(f"{origin}/m/")
    notification = client.receive()
    assert notification["channelID"] == channel_id
    assert subscription.decrypt(notification) == b"through nginx"
    client.ack(notification)
    client.send({})
    assert client.receive() == "{}"


def test_157_public_routes_through_nginx(nginx: Nginx, stack: Stack, origin: str) -> None:
    plain = requests.get(f"{origin}/", timeout=5)  # no upgrade: the connection node refuses
    assert not 200 <= plain.status_code < 300
    assert requests.get(f"{origin}/__lbheartbeat__", timeout=5).status_code == 200
    unknown = requests.get(f"{origin}/no/such/path", timeout=5)
    assert unknown.status_code == 404 and unknown.json()["code"] == 404  # the endpoint's JSON


def test_157_router_routes_are_unreachable_through_nginx(
    nginx: Nginx, stack: Stack, certificate: Certificate, origin: str, app_server: AppServer
) -> None:
    client = connect(origin, certificate, stack)
    client.hello()
    subscription, channel_id = subscribe(client, key=app_server.application_server_key)
    forged = {"channelID": channel_id, "version": "forged", "ttl": 60, "data": "forged",
              "headers": {"encoding": "aes128gcm"}, "timestamp": 0}
    for path in (f"/push/{client.uaid}", f"/notif/{client.uaid}", f"/%70ush/{client.uaid}",
                 f"//push/{client.uaid}", "/push", "/notif"):
        response = requests.put(f"{origin}{path}", json=forged, timeout=5)
        assert response.status_code == 404, path
        assert is_nginx_page(response), f"{path} was proxied: {response.text[:200]}"
    # The client saw nothing of it and still works: the next message is the real push.
    response = app_server.push(subscription, "after the forgeries")
    assert response.status_code == 201
    notification = client.receive()
    assert notification["version"] != "forged"
    assert subscription.decrypt(notification) == b"after the forgeries"


def test_157_body_limits_endpoint_json_then_nginx_html(
    nginx: Nginx, stack: Stack, certificate: Certificate, origin: str
) -> None:
    client = connect(origin, certificate, stack)
    client.hello()
    subscription, _ = subscribe(client)  # v1: no VAPID needed to reach the size check
    headers = {"TTL": "60", "Content-Encoding": "aes128gcm"}
    # Over AUTOPUSH_MAX_DATA but within nginx's limit: the endpoint's own JSON answer.
    response = requests.post(subscription.endpoint, data=b"x" * (MAX_DATA + 1), headers=headers, timeout=5)
    assert response.status_code == 413
    assert response.headers["Content-Type"] == "application/json"
    assert (response.json()["code"], response.json()["errno"]) == (413, 104)
    # Over nginx's client_max_body_size: refused by nginx before any node sees it.
    limit = size_bytes(nginx.site, "client_max_body_size")
    response = requests.post(subscription.endpoint, data=b"x" * (limit + 1), headers=headers, timeout=5)
    assert response.status_code == 413
    assert is_nginx_page(response)
    # Exactly MAX_DATA is delivered.
    response = requests.post(subscription.endpoint, data=b"y" * MAX_DATA, headers=headers, timeout=5)
    assert response.status_code == 201
    assert b64url_decode(client.receive()["data"]) == b"y" * MAX_DATA


# ---- X-Forwarded-* and AUTOPUSH_PROXY_FIX ----------------------------------------------


def echo_app(settings: Settings):  # noqa: ANN201 - a Flask app
    """The endpoint app plus a route showing what Flask believes about the request."""
    app = create_endpoint_app(settings)

    @app.get("/__echo__")
    def echo():  # noqa: ANN202
        return jsonify(scheme=request.scheme, host=request.host, remote_addr=request.remote_addr,
                       url_root=request.url_root)

    return app


class SourceAddressAdapter(HTTPAdapter):
    """Connect from another loopback address, so the client differs from nginx."""

    def __init__(self, source: str) -> None:
        self.source = source
        super().__init__()

    def init_poolmanager(self, *args, **kwargs) -> None:  # noqa: ANN002, ANN003
        kwargs["source_address"] = (self.source, 0)
        super().init_poolmanager(*args, **kwargs)


def test_157_proxy_fix_sees_public_scheme_host_and_client(
    nginx_binary: str, public_dns: None, certificate: Certificate,
    make_settings: Callable[..., Settings], tmp_path: Path,
) -> None:
    """Real nginx with this file in front of an endpoint app with AUTOPUSH_PROXY_FIX=true."""
    app = echo_app(make_settings("endpoint", AUTOPUSH_PROXY_FIX="true"))
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    port = free_port()
    site = render(site_values(port, PUBLIC_HOST, certificate, connection="127.0.0.1:9",
                              endpoint=f"127.0.0.1:{server.server_port}"))
    proxy = Nginx(nginx_binary, tmp_path / "nginx", site, port).start()
    try:
        session = requests.Session()
        session.mount("https://", SourceAddressAdapter("127.0.0.2"))
        seen = session.get(f"https://{PUBLIC_HOST}:{port}/__echo__", timeout=5,
                           headers={"X-Forwarded-For": "203.0.113.9"}).json()  # a spoofing client
    finally:
        proxy.stop()
        server.shutdown()
    assert seen == {"scheme": "https", "host": f"{PUBLIC_HOST}:{port}", "remote_addr": "127.0.0.2",
                    "url_root": f"https://{PUBLIC_HOST}:{port}/"}


@pytest.mark.parametrize("enabled", [True, False])
def test_proxy_fix_setting_switches_forwarded_headers(
    make_settings: Callable[..., Settings], enabled: bool
) -> None:
    app = echo_app(make_settings("endpoint", AUTOPUSH_PROXY_FIX=str(enabled).lower()))
    seen = app.test_client().get(
        "/__echo__", base_url="http://10.0.0.21:8082",
        headers={"X-Forwarded-For": "198.51.100.7", "X-Forwarded-Proto": "https",
                 "X-Forwarded-Host": PUBLIC_HOST},
        environ_base={"REMOTE_ADDR": "10.0.0.5"},
    ).get_json()
    if enabled:
        assert seen == {"scheme": "https", "host": PUBLIC_HOST, "remote_addr": "198.51.100.7",
                        "url_root": f"https://{PUBLIC_HOST}/"}
    else:
        assert seen == {"scheme": "http", "host": "10.0.0.21:8082", "remote_addr": "10.0.0.5",
                        "url_root": "http://10.0.0.21:8082/"}
