"""Router records that outlived AUTOPUSH_ROUTER_TTL_DAYS, on both stores, over real sockets.

An expired record must behave as a missing one at once, whatever the store
has deleted yet (DynamoDB's TTL runs days late, the PostgreSQL purge hourly):
a push answers 410 errno 103 and the browser's next hello gets a new UAID.
The record is aged by writing it through a store whose clock runs 61 days
behind, so it carries the expiry a record written then would.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import requests

from autopush_flask.config import ENDPOINT, load_settings
from autopush_flask.db import create_storage
from autopush_flask.metrics import NullMetrics
from tests.support.postgres import STORES, store_environ
from tests.support.stack import Stack

DAY = 24 * 3600


@pytest.fixture(scope="module", params=STORES)
def stack(request, dynalite, tmp_path_factory) -> Iterator[Stack]:
    store = store_environ(request, request.param)
    running = Stack(dynalite.url, tmp_path_factory.mktemp("expiry"), **store).start()
    yield running
    running.stop()


def subscribed(stack: Stack) -> tuple[str, str]:
    client = stack.client()
    uaid = client.hello()["uaid"]
    reply = client.register(str(uuid.uuid4()))
    assert reply["status"] == 200
    client.close()
    return uaid, reply["pushEndpoint"]


def age_record(stack: Stack, uaid: str, days: int) -> None:
    """Rewrite the record as a store ``days`` in the past would have written it."""
    past = create_storage(load_settings(ENDPOINT, stack.environ), NullMetrics(),
                          clock=lambda: time.time() - days * DAY)
    try:
        record = stack.storage.get_user(uaid)
        assert stack.storage.drop_user(uaid)
        record.node_id = None
        assert past.add_user(record)
    finally:
        past.close()


def test_an_expired_record_answers_410_like_a_missing_one(stack: Stack) -> None:
    uaid, endpoint = subscribed(stack)
    assert requests.post(endpoint, headers={"TTL": "60"}, timeout=10).status_code == 201
    age_record(stack, uaid, days=61)
    response = requests.post(endpoint, headers={"TTL": "60"}, timeout=10)
    assert (response.status_code, response.json()["errno"]) == (410, 103)
    assert stack.storage.get_user(uaid) is None


def test_a_record_within_its_lifetime_still_routes(stack: Stack) -> None:
    uaid, endpoint = subscribed(stack)
    age_record(stack, uaid, days=59)
    assert requests.post(endpoint, headers={"TTL": "60"}, timeout=10).status_code == 201


def test_the_browser_of_an_expired_record_gets_a_new_uaid(stack: Stack) -> None:
    uaid, _ = subscribed(stack)
    age_record(stack, uaid, days=61)
    client = stack.client()
    reply = client.hello(uaid)
    assert reply["status"] == 200 and reply["uaid"] != uaid


def test_hello_pushes_the_expiry_back(stack: Stack) -> None:
    uaid, _ = subscribed(stack)
    age_record(stack, uaid, days=59)
    before = stack.storage.get_user(uaid).expiry
    client = stack.client()
    assert client.hello(uaid)["uaid"] == uaid
    assert stack.storage.get_user(uaid).expiry >= before + 58 * DAY
