"""The admin view (docs/operations.md#admin-view) on a real connection node, over real sockets.

One gunicorn master with two workers and ``AUTOPUSH_ADMIN_TOKEN`` set serves
the module: WebSocket clients connect, register and leave stored messages;
the tests read the view with requests (its JSON twin and its pages) and
with headless Firefox (log in, the worker table, a UAID lookup). What must
never appear (payloads, message versions, the token) is looked for in every
answer and in the node's log. The last test stops the worker serving the
view and sees a sibling take the port over. A second, token-less node shows
that nothing listens then.

The Firefox test skips only when no firefox-esr is installed (``.ci/run``
installs it), like tests/e2e/test_firefox.py.
"""

from __future__ import annotations

import os
import re
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from autopush_flask.config import CONNECTION, load_settings
from autopush_flask.db import Notification, Storage, User, create_storage
from autopush_flask.metrics import NullMetrics
from tests.conftest import store_settings
from tests.e2e.firefox_support import Firefox, find_firefox
from tests.support.connection_nodes import node_environ, router
from tests.support.processes import GunicornNode, free_port, free_port_range, wait_for_port
from tests.support.push_client import PushClient

WORKERS = 2
TOKEN = "k7Qm2vX9pL4sR8tW1yB6nC3dF5gH0jZa"  # 32 bytes, as AUTOPUSH_ADMIN_TOKEN needs
PAYLOAD = "UGF5bG9hZE5ldmVyU2hvd25JbkFkbWlu"
SECRET_VERSION = "gAAAAAversion-never-shown-in-admin"
SECRET_HEADER = "salt=HeaderValueNeverShown"
FIREFOX = find_firefox()
DEADLINE = 10.0

pytestmark = pytest.mark.timeout(120)


@dataclass
class AdminNode:
    gunicorn: GunicornNode
    storage: Storage
    router_port: int
    admin_port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.gunicorn.port}/"

    def api(self, path: str, token: str | None = TOKEN, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=10, allow_redirects=False, **kwargs)

    def overview(self) -> dict:
        response = self.api("/api/overview")
        assert response.status_code == 200, response.text
        return response.json()

    def log(self) -> str:
        return self.gunicorn.log()


def start_node(request: pytest.FixtureRequest, dynalite: Any, log_path: Path, workers: int, **extra: str) -> AdminNode:
    # Room for the 2 × workers router ports the view tours, so that nothing else answers there.
    router_port = free_port_range(2 * workers)
    admin_port = free_port()
    variables = store_settings(request, "dynamodb", dynalite, "adm" + uuid.uuid4().hex[:8])
    environ = node_environ(variables, router_port, AUTOPUSH_ADMIN_PORT=str(admin_port), **extra)
    gunicorn = GunicornNode("wsgi:connection_app", environ, workers=workers)
    gunicorn.start(log_path, wait_ports=tuple(router_port + slot for slot in range(workers)))
    storage = create_storage(load_settings(CONNECTION, environ), NullMetrics())
    return AdminNode(gunicorn, storage, router_port, admin_port)


@pytest.fixture(scope="module")
def node(
    request: pytest.FixtureRequest, dynalite: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AdminNode]:
    log_path = tmp_path_factory.mktemp("admin") / "gunicorn.log"
    running = start_node(request, dynalite, log_path, WORKERS, AUTOPUSH_ADMIN_TOKEN=TOKEN)
    try:
        wait_for_port(running.admin_port)
        yield running
    finally:
        running.gunicorn.stop()


@pytest.fixture
def clients() -> Iterator[list[PushClient]]:
    opened: list[PushClient] = []
    yield opened
    for client in opened:
        client.close()


def subscribed(node: AdminNode, clients: list[PushClient], channels: int = 1) -> tuple[PushClient, str, list[str]]:
    client = PushClient(node.ws_url)
    clients.append(client)
    uaid = client.hello()["uaid"]
    channel_ids = [str(uuid.uuid4()) for _ in range(channels)]
    for channel_id in channel_ids:
        assert client.register(channel_id)["status"] == 200
    return client, uaid, channel_ids


def eventually(check: Callable[[], Any], timeout: float = DEADLINE) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def store_messages(node: AdminNode, uaid: str, channel_id: str) -> None:
    """One timestamp and one topic message with a payload, as an endpoint stores them for an offline UAID."""
    now = int(time.time())
    user = User(uaid=uaid)
    headers = {"encoding": "aes128gcm", "encryption": SECRET_HEADER}
    node.storage.save_message(user, Notification(
        channel_id=channel_id, version=SECRET_VERSION, ttl=600, timestamp=now - 30,
        sortkey_timestamp=int(time.time() * 1_000_000), data=PAYLOAD, headers=headers))
    node.storage.save_message(user, Notification(
        channel_id=channel_id, version=SECRET_VERSION + "2", ttl=600, timestamp=now, topic="weather",
        data=PAYLOAD, headers=headers))


def assert_nothing_secret(text: str) -> None:
    for secret in (PAYLOAD, SECRET_VERSION, SECRET_HEADER, TOKEN):
        assert secret not in text


def logged_in(node: AdminNode) -> requests.Session:
    session = requests.Session()
    response = session.post(f"{node.url}/login", data={"token": TOKEN, "next": "/"}, allow_redirects=False,
                            timeout=10)
    assert response.status_code == 303, response.text
    return session


# ---- the workers -----------------------------------------------------------------------------


def test_overview_counts_the_clients_of_every_worker(node: AdminNode, clients: list[PushClient]) -> None:
    for _ in range(4):
        subscribed(node, clients)
    view = eventually(lambda: (v := node.overview())["totals"]["clients"] == len(clients) and v)
    assert view, node.overview()
    workers = view["workers"]
    assert [w["slot"] for w in workers] == [0, 1]
    assert {w["node_id"] for w in workers} == {f"http://127.0.0.1:{node.router_port + s}" for s in (0, 1)}
    assert len({w["pid"] for w in workers}) == 2
    assert sum(w["clients"] for w in workers) == len(clients) == view["totals"]["clients"]
    assert view["unreachable"] == []
    assert view["absent_slots"] == [2, 3]
    assert view["node"]["worker_count"] == WORKERS
    assert "recent_errors" not in workers[0] and isinstance(view["recent_errors"], list)
    # Leaving clients are counted out.
    for client in clients[:2]:
        client.close()
    assert eventually(lambda: node.overview()["totals"]["clients"] == len(clients) - 2)


def test_answers_are_not_stored_and_cannot_be_framed(node: AdminNode) -> None:
    for response in (node.api("/api/overview"), node.api("/api/overview", token=None),
                     requests.get(f"{node.url}/login", timeout=10)):
        assert response.headers["Cache-Control"] == "no-store"
        assert response.headers["X-Frame-Options"] == "DENY"
        policy = response.headers["Content-Security-Policy"]
        assert "default-src 'none'" in policy and "frame-ancestors 'none'" in policy and "script-src" not in policy


def test_recent_errors_keep_fields_but_never_payloads(node: AdminNode) -> None:
    """A wrong bearer token is a warning of the worker serving the view: it shows, with its fields."""
    requests.get(f"{node.url}/api/overview", headers={"Authorization": "Bearer wrong"}, timeout=10)
    view = eventually(lambda: (v := node.overview())["recent_errors"] and v)
    entry = next(e for e in view["recent_errors"] if e["message"] == "Admin token refused")
    assert entry["level"] == "WARNING" and entry["logger"] == "autopush.admin"
    assert entry["fields"]["path"] == "/api/overview" and entry["slot"] in (0, 1)
    assert "wrong" not in str(view)


# ---- one UAID ----------------------------------------------------------------------------


def test_uaid_shows_channels_and_message_counts_never_payloads(node: AdminNode, clients: list[PushClient]) -> None:
    client, uaid, channel_ids = subscribed(node, clients, channels=2)
    client.close()  # offline: the endpoint stores its messages
    store_messages(node, uaid, channel_ids[0])
    response = node.api(f"/api/uaid/{uaid}")
    assert response.status_code == 200, response.text
    view = response.json()
    assert view["uaid"] == uaid and re.fullmatch(r"[0-9a-f]{16}", view["uaid_hash"])
    assert view["record"]["router_type"] == "webpush"
    assert view["record"]["connected_at"] > 0 and view["record"]["router_data_keys"] == []
    assert view["channels"]["count"] == 2
    assert {c["channel_id"]: c["stored_messages"] for c in view["channels"]["list"]} == {
        channel_ids[0]: 2, channel_ids[1]: 0}
    messages = view["messages"]
    assert messages["topic"]["count"] == 1 and messages["timestamp"]["count"] == 1
    assert messages["timestamp_after_bookmark"]["count"] == 1
    assert 25 <= messages["timestamp"]["oldest_age_seconds"] <= 120
    assert_nothing_secret(response.text)
    # The page: same facts, any UUID spelling of the UAID, nothing secret.
    page = logged_in(node).get(f"{node.url}/uaid/{uuid.UUID(uaid)}", timeout=10)
    assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/html")
    assert all(channel_id in page.text for channel_id in channel_ids)
    assert_nothing_secret(page.text)
    assert_nothing_secret(node.log())
    assert uaid not in node.log()  # the lookup is logged by its uaid_hash


def test_bad_and_unknown_uaids(node: AdminNode) -> None:
    bad = node.api("/api/uaid/not-a-uaid")
    assert bad.status_code == 400 and "Not a UAID" in bad.json()["message"]
    assert node.api(f"/api/uaid/{uuid.uuid4().hex}").status_code == 404
    session = logged_in(node)
    assert session.get(f"{node.url}/uaid/%3Cscript%3E", timeout=10).status_code == 400
    lookup = session.get(f"{node.url}/uaid", params={"uaid": str(uuid.UUID(int=7))}, allow_redirects=False,
                         timeout=10)
    assert (lookup.status_code, lookup.headers["Location"]) == (303, f"/uaid/{uuid.UUID(int=7).hex}")


# ---- who may look ------------------------------------------------------------------------------


def test_api_needs_the_bearer_token(node: AdminNode) -> None:
    for path in ("/api/overview", f"/api/uaid/{uuid.uuid4().hex}", "/api/nothing-here"):
        for token in (None, "wrong", TOKEN + "x", TOKEN[:-1]):
            response = node.api(path, token=token)
            assert response.status_code == 401, (path, token)
            assert response.json()["error"] == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert node.api("/api/overview", token=TOKEN).status_code == 200


def test_pages_need_a_login_whose_cookie_is_not_the_token(node: AdminNode) -> None:
    page = requests.get(f"{node.url}/uaid/{uuid.uuid4().hex}", allow_redirects=False, timeout=10)
    assert page.status_code == 302 and page.headers["Location"].startswith("/login?next=/uaid/")
    refused = requests.post(f"{node.url}/login", data={"token": "wrong"}, timeout=10)
    assert refused.status_code == 401 and "Wrong token" in refused.text
    crossed = requests.post(f"{node.url}/login", data={"token": TOKEN}, headers={"Origin": "http://evil.example"},
                            allow_redirects=False, timeout=10)
    assert crossed.status_code == 403 and "Set-Cookie" not in crossed.headers
    escaping = requests.post(f"{node.url}/login", data={"token": TOKEN, "next": "//evil.example/"},
                             allow_redirects=False, timeout=10)
    assert escaping.status_code == 303 and escaping.headers["Location"] == "/"
    cookie = escaping.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = logged_in(node)
    overview = session.get(f"{node.url}/", timeout=10)
    assert overview.status_code == 200 and 'id="workers"' in overview.text
    forged = requests.get(f"{node.url}/", cookies={"autopush_admin": f"{int(time.time())}.{'0' * 64}"},
                          allow_redirects=False, timeout=10)
    assert forged.status_code == 302
    session.post(f"{node.url}/logout", timeout=10)
    assert session.get(f"{node.url}/", allow_redirects=False, timeout=10).status_code == 302
    assert "Admin login refused" in node.log() and TOKEN not in node.log()


def test_a_large_login_body_is_refused_unread(node: AdminNode) -> None:
    response = requests.post(f"{node.url}/login", data={"token": "x" * 100_000}, timeout=10)
    assert response.status_code == 413


def test_the_worker_route_needs_a_router_signature(node: AdminNode) -> None:
    url = f"http://127.0.0.1:{node.router_port + 1}/admin/worker"
    assert requests.get(url, timeout=5).status_code == 401
    signed = router.get(url, timeout=5)
    assert signed.status_code == 200 and signed.json()["slot"] == 1


def test_listens_on_loopback_only_by_default(node: AdminNode) -> None:
    """The kernel's table of listening TCP sockets: the admin port's is bound to 127.0.0.1 alone."""
    port = f"{node.admin_port:04X}"
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[1].endswith(f":{port}") and line.split()[3] == "0A"]
    assert listening == [f"0100007F:{port}"]
    assert f":{port}" not in " ".join(
        line.split()[1] for line in Path("/proc/net/tcp6").read_text().splitlines()[1:] if line.split()[3] == "0A")


# ---- in a real browser ---------------------------------------------------------------------------


@pytest.mark.skipif(FIREFOX is None, reason="firefox-esr is not installed (.ci/run installs Debian's firefox-esr)")
def test_firefox_logs_in_sees_the_workers_and_looks_up_a_uaid(
    node: AdminNode, clients: list[PushClient], tmp_path: Path
) -> None:
    _, uaid, channel_ids = subscribed(node, clients, channels=2)
    # Firefox's own push connection goes nowhere: the counts are the test's clients only.
    browser = Firefox(FIREFOX, tmp_path / "profile", "ws://127.0.0.1:9/", tmp_path)
    try:
        browser.start()
        browser.open(f"{node.url}/")
        assert "/login?next=/" in browser.url()
        browser.type_text("#token", "not-the-token")
        browser.submit("#login-submit")
        assert browser.text("#login-error") == "Wrong token."
        browser.type_text("#token", TOKEN)
        assert browser.submit("#login-submit") == f"{node.url}/"
        assert [row.split("\t")[0] for row in browser.texts("#workers tr.worker")] == ["0", "1"]
        assert sum(int(count) for count in browser.texts("#workers td.clients")) == int(browser.text("#total-clients"))
        browser.type_text("#uaid", str(uuid.UUID(uaid)))
        assert browser.submit("#lookup button") == f"{node.url}/uaid/{uaid}"
        assert sorted(browser.texts(".channel-id")) == sorted(channel_ids)
        assert browser.text("#uaid-value") == uaid
        assert_nothing_secret(browser.text("body"))
    finally:
        browser.close()
        browser.kill()


# ---- the port changes hands --------------------------------------------------------------------


def test_a_sibling_takes_the_port_when_the_serving_worker_stops(node: AdminNode) -> None:
    """Last in the module: it replaces a worker."""
    before = node.overview()
    serving = before["node"]["served_by_slot"]
    pid = next(w["pid"] for w in before["workers"] if w["slot"] == serving)
    os.kill(pid, signal.SIGTERM)  # a graceful stop; the master replaces the worker in the same slot

    def served_by_another() -> dict | None:
        try:
            view = node.overview()
        except (requests.ConnectionError, AssertionError):
            return None
        served = next((w for w in view["workers"] if w["slot"] == view["node"]["served_by_slot"]), None)
        return view if served and served["pid"] != pid else None

    after = eventually(served_by_another, timeout=20)
    assert after, node.log()[-3000:]
    assert pid not in {w["pid"] for w in after["workers"]}
    assert '"Admin view listening"' in node.log()


def test_no_token_no_listener(request: pytest.FixtureRequest, dynalite: Any, tmp_path: Path) -> None:
    bare = start_node(request, dynalite, tmp_path / "gunicorn.log", workers=1)
    try:
        time.sleep(0.5)  # past the first bind attempt a token would have made
        with pytest.raises(requests.ConnectionError):
            requests.get(f"{bare.url}/login", timeout=2)
        assert router.get(f"http://127.0.0.1:{bare.router_port}/admin/worker", timeout=5).status_code == 404
        assert "Admin view" not in bare.log()
    finally:
        bare.gunicorn.stop()
