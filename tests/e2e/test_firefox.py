"""Real Firefox as the push client (acceptance suite, item 1).

Debian's firefox-esr runs headless against a running stack (dynalite,
connection node, endpoint node). A page on http://localhost registers a
service worker and calls ``pushManager.subscribe()`` with a VAPID
applicationServerKey; pywebpush sends to the endpoint Firefox got, with the
keys from ``subscription.toJSON()``; Firefox decrypts, and the service
worker hands the plaintext to the page, where the test reads it.

Skipped only when no firefox-esr is installed (``.ci/run`` installs it);
any other failure fails.
"""

from __future__ import annotations

import gc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from pywebpush import WebPushException

from autopush_flask.crypto.endpoints import EndpointToken, parse_endpoint_token
from autopush_flask.crypto.keys import CryptoKeys
from autopush_flask.db import User
from tests.e2e.firefox_support import (
    BrowserSubscription,
    Firefox,
    PageServer,
    find_firefox,
    profile_uaid,
    wait_for,
)
from tests.support.stack import Stack, start_stack
from tests.support.webpush import AppServer

FIREFOX = find_firefox()
DELIVERY_TIMEOUT = 20.0

pytestmark = [
    pytest.mark.skipif(
        FIREFOX is None,
        reason="firefox-esr is not installed (.ci/run installs Debian's firefox-esr when missing)",
    ),
    pytest.mark.timeout(90),
]


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest) -> Stack:
    return start_stack(request, "firefox-stack")


@pytest.fixture(scope="module")
def pages() -> Iterator[PageServer]:
    server = PageServer()
    yield server
    server.stop()


@pytest.fixture
def app_server() -> AppServer:
    return AppServer()


@pytest.fixture
def firefox(stack: Stack, tmp_path: Path) -> Iterator[Callable[[], Firefox]]:
    """Start Firefox on this test's profile; every start is closed (or killed) at teardown."""
    profile = tmp_path / "profile"
    started: list[Firefox] = []

    def start() -> Firefox:
        browser = Firefox(FIREFOX, profile, stack.ws_url, tmp_path)
        started.append(browser)
        return browser.start()

    yield start
    for browser in started:
        browser.kill()


def endpoint_token(stack: Stack, subscription: BrowserSubscription) -> EndpointToken:
    keys = CryptoKeys([stack.environ["AUTOPUSH_CRYPTO_KEYS"]])
    return parse_endpoint_token(keys, subscription.token, "v2")


def subscribe(browser: Firefox, pages: PageServer, stack: Stack, app_server: AppServer) -> BrowserSubscription:
    browser.open(pages.url)
    assert browser.call("permission") == "granted"
    data = browser.call("subscribe", app_server.application_server_key)
    assert data["endpoint"].startswith(f"{stack.endpoint_url}/wpush/v2/")
    assert set(data["keys"]) == {"p256dh", "auth"}
    return BrowserSubscription(data)


def report(capsys: pytest.CaptureFixture, line: str) -> None:
    """The one line a scenario prints, shown even when pytest captures output."""
    with capsys.disabled():
        print(f"\n{line}")


def push_answer(app_server: AppServer, subscription: BrowserSubscription, data: str) -> tuple[int, int | None]:
    """Status and errno of one pywebpush send, whether it succeeded or raised."""
    try:
        response = app_server.push(subscription, data)
    except WebPushException as error:
        response = error.response
    errno = response.json().get("errno") if response.content else None
    return response.status_code, errno


def stored_messages(stack: Stack, uaid: str) -> int:
    """Stored messages not yet acknowledged (those after the UAID's bookmark)."""
    messages = stack.storage.messages()
    bookmark, _ = messages.fetch_topic_messages(uaid)
    return len(messages.fetch_timestamp_messages(uaid, bookmark)[1])


def test_firefox_receives_push_while_online(firefox, pages, stack, app_server, capsys) -> None:
    browser = firefox()
    subscription = subscribe(browser, pages, stack, app_server)
    uaid = endpoint_token(stack, subscription).uaid.hex
    assert stack.storage.get_user(uaid).node_id, "Firefox is not connected to the node"

    plaintext = f"online {uuid.uuid4()}"
    assert app_server.push(subscription, plaintext).status_code == 201
    received = browser.wait_received(1, DELIVERY_TIMEOUT)

    texts = [item["text"] for item in received["stored"]]
    assert texts == [plaintext], f"page read {received}\n{browser.log()}"
    assert [item["text"] for item in received["live"]] == [plaintext]
    assert [item["text"] for item in pages.wait_reports(1, 5)][-1:] == [plaintext]
    browser.close()
    report(capsys, f"firefox: online delivered={len(texts)} plaintext ok ({browser.version}, uaid {uaid[:8]}…)")


def test_firefox_gets_push_sent_while_closed_after_restart(firefox, pages, stack, app_server, capsys) -> None:
    browser = firefox()
    subscription = subscribe(browser, pages, stack, app_server)
    uaid = endpoint_token(stack, subscription).uaid.hex
    connected_before = stack.storage.get_user(uaid).connected_at
    browser.close()
    assert profile_uaid(browser.profile) == uaid, "Firefox did not keep the UAID in its profile"

    plaintext = f"while closed {uuid.uuid4()}"
    assert app_server.push(subscription, plaintext).status_code == 201
    stored = stored_messages(stack, uaid)
    assert stored == 1, "the push sent while Firefox was closed was not stored"

    restarted = firefox()
    restarted.open(pages.url)
    received = restarted.wait_received(1, DELIVERY_TIMEOUT)
    texts = [item["text"] for item in received["stored"]]
    assert texts == [plaintext], f"page read {received}\n{restarted.log()}"
    assert restarted.call("current")["endpoint"] == subscription.endpoint

    user = stack.storage.get_user(uaid)
    assert user is not None and user.node_id, "the same UAID is not connected after the restart"
    assert user.connected_at > connected_before
    assert wait_for(lambda: stored_messages(stack, uaid) == 0, 10), "the stored message was not acked"
    restarted.close()
    assert profile_uaid(restarted.profile) == uaid
    report(capsys, f"firefox: restart stored={stored} delivered={len(texts)} after restart, same UAID {uaid[:8]}… plaintext ok")


def test_firefox_unsubscribe_makes_endpoint_gone(firefox, pages, stack, app_server, capsys) -> None:
    browser = firefox()
    subscription = subscribe(browser, pages, stack, app_server)
    token = endpoint_token(stack, subscription)
    uaid, channel_id = token.uaid.hex, str(token.channel_id)

    assert app_server.push(subscription, "before unsubscribe").status_code == 201
    assert len(browser.wait_received(1, DELIVERY_TIMEOUT)["stored"]) == 1

    assert browser.call("unsubscribe") is True
    assert browser.call("current") is None
    assert wait_for(lambda: channel_id not in stack.storage.get_channels(User(uaid=uaid)), 10), \
        "the node never saw the unregister"
    status, errno = push_answer(app_server, subscription, "after unsubscribe")
    # The error response sits in a reference cycle holding a keep-alive socket,
    # which would keep the endpoint node's graceful stop waiting 10 s.
    gc.collect()
    assert (status, errno) == (410, 106)
    received = browser.wait_received(2, 1.0)
    assert len(received["stored"]) == 1, f"delivered after unsubscribe: {received}"
    browser.close()
    report(capsys, f"firefox: unsubscribe delivered=1 then {status} errno={errno}, delivered after=0")
