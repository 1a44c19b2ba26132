"""The admin view's parts without a node (docs/operations.md#admin-view): its settings, sessions,
recent-errors buffer and bounded message counts. tests/e2e/test_admin_view.py runs it for real."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
from cryptography.fernet import Fernet

from autopush_flask.admin.auth import (
    SESSION_SECONDS,
    bearer_matches,
    session_cookie,
    session_valid,
    token_matches,
)
from autopush_flask.admin.recent import CAPACITY, RecentErrors
from autopush_flask.admin.uaid import COUNT_LIMIT, uaid_report
from autopush_flask.admin.workers import worker_count
from autopush_flask.config import CONNECTION, SettingsError, load_settings
from autopush_flask.db import Notification, User
from autopush_flask.db.memory import MemoryStorage
from autopush_flask.logging import Redactor, log_fields
from autopush_flask.metrics import NullMetrics

KEY = Fernet.generate_key().decode()
TOKEN = "k7Qm2vX9pL4sR8tW1yB6nC3dF5gH0jZa"


def settings(**variables: str):
    return load_settings(CONNECTION, {"AUTOPUSH_CRYPTO_KEYS": KEY, **variables})


# ---- settings ---------------------------------------------------------------------------------


def test_no_token_no_admin_view_and_safe_defaults() -> None:
    loaded = settings()
    assert (loaded.admin_token, loaded.admin_port, loaded.admin_bind) == (None, 8090, "127.0.0.1")
    assert settings(AUTOPUSH_ADMIN_TOKEN=TOKEN).admin_token == TOKEN


@pytest.mark.parametrize(
    ("variables", "problem"),
    [
        ({"AUTOPUSH_ADMIN_TOKEN": "short-token"}, "Must be at least 32 bytes"),
        ({"AUTOPUSH_ADMIN_TOKEN": "x" * 40}, "not a repeated pattern"),
        ({"AUTOPUSH_ADMIN_TOKEN": "changeme" * 5}, "not a repeated pattern"),
        ({"AUTOPUSH_ADMIN_TOKEN": KEY}, "must not be a crypto key"),
        ({"AUTOPUSH_ADMIN_TOKEN": TOKEN, "AUTOPUSH_MEGAPHONE_API_TOKEN": TOKEN}, "must not be a crypto key"),
        ({"AUTOPUSH_ADMIN_TOKEN": TOKEN, "AUTOPUSH_ADMIN_PORT": "8080"}, "AUTOPUSH_ADMIN_PORT"),
        ({"AUTOPUSH_ADMIN_PORT": "0"}, "AUTOPUSH_ADMIN_PORT"),
    ],
)
def test_bad_admin_settings_are_refused_without_echoing_the_token(variables: dict, problem: str) -> None:
    with pytest.raises(SettingsError) as raised:
        settings(**variables)
    assert problem in str(raised.value) and "\n" not in str(raised.value)
    token = variables.get("AUTOPUSH_ADMIN_TOKEN")
    assert token is None or token not in str(raised.value)


def test_the_worker_count_comes_from_the_master() -> None:
    assert worker_count({"AUTOPUSH_WORKER_COUNT": "4"}) == 4
    assert worker_count({}) == worker_count({"AUTOPUSH_WORKER_COUNT": "x"}) == 1
    settings(AUTOPUSH_WORKER_COUNT="4")  # an internal variable, not an unknown setting


# ---- sessions ---------------------------------------------------------------------------------


def test_tokens_compare_exactly() -> None:
    assert token_matches(TOKEN, TOKEN) and bearer_matches(f"Bearer {TOKEN}", TOKEN)
    assert bearer_matches(f"bearer  {TOKEN} ", TOKEN)
    for wrong in (None, "", TOKEN[:-1], TOKEN + "a", TOKEN.upper(), "\udcff" * 40):
        assert not token_matches(wrong, TOKEN)
    for header in (None, TOKEN, f"Basic {TOKEN}", f"Bearer {TOKEN}x", "Bearer " + "a" * 5000):
        assert not bearer_matches(header, TOKEN)


def test_session_cookies_hold_no_token_and_lapse() -> None:
    now = time.time()
    cookie = session_cookie(TOKEN, now)
    assert TOKEN not in cookie and session_valid(cookie, TOKEN, now + 10)
    assert not session_valid(cookie, TOKEN, now + SESSION_SECONDS + 1)
    assert not session_valid(cookie, TOKEN[::-1], now)  # a new token ends every session
    assert not session_valid(session_cookie(TOKEN, now + 3600), TOKEN, now)  # issued in the future
    issued, _, mac = cookie.partition(".")
    for forged in (f"{int(issued) + 1}.{mac}", f"{issued}.{'0' * 64}", issued, "", "x.y", "9" * 200):
        assert not session_valid(forged, TOKEN, now)


# ---- recent errors ------------------------------------------------------------------------------


def test_recent_errors_keep_the_last_warnings_redacted_and_without_payloads() -> None:
    recent = RecentErrors(b"k" * 32)
    logger = logging.getLogger("autopush.test_admin")
    logger.setLevel(logging.DEBUG)
    recent.attach("autopush.test_admin")
    try:
        uaid = uuid.uuid4().hex
        logger.info("not kept")
        for number in range(CAPACITY + 5):
            logger.warning("storage failure %d", number, extra=log_fields(uaid_hash=uaid, code=number))
        logger.error("FCM error", extra=log_fields(body="PAYLOAD", data="PAYLOAD", token="T", request={"body": "x"},
                                                   status=500))
        try:
            raise ValueError(f"bad {uaid}")
        except ValueError:
            logger.exception("unexpected error")
    finally:
        recent.detach("autopush.test_admin")
    logger.warning("after detach")
    entries = recent.entries()
    assert len(entries) == CAPACITY and recent.total == CAPACITY + 7
    assert [e["message"] for e in entries[:2]] == ["unexpected error", "FCM error"]
    assert entries[1]["fields"] == {"status": 500} and entries[1]["level"] == "ERROR"
    assert uaid not in str(entries)
    assert entries[0]["fields"]["error"].startswith("ValueError('bad uaid#")
    warning = entries[2]
    expected_hash = Redactor(b"k" * 32).uaid_hash(uaid)
    assert warning["message"] == f"storage failure {CAPACITY + 4}"
    assert warning["fields"] == {"uaid_hash": expected_hash, "code": CAPACITY + 4}
    assert "PAYLOAD" not in str(entries)


# ---- bounded reads of one UAID -----------------------------------------------------------------


def test_message_counts_stop_at_the_limit_and_show_no_payload() -> None:
    storage = MemoryStorage(settings(), NullMetrics())
    storage.set_up()
    uaid, channel_id = uuid.uuid4().hex, str(uuid.uuid4())
    user = User(uaid=uaid, connected_at=1)
    assert storage.add_user(user)
    storage.add_channel(user, channel_id)
    now = int(time.time())
    for number in range(COUNT_LIMIT + 3):
        storage.save_message(user, Notification(channel_id=channel_id, version=f"v{number}", ttl=86400,
                                                timestamp=now - number, sortkey_timestamp=now * 1_000_000 + number,
                                                data="PAYLOAD", headers={"encoding": "aes128gcm"}))
    view = uaid_report(storage, uaid, "hash", now=now)
    assert view is not None
    assert view["messages"]["timestamp"]["count"] == f"{COUNT_LIMIT}+"
    assert view["messages"]["topic"]["count"] == 0
    assert view["channels"]["count"] == 1
    assert "PAYLOAD" not in str(view) and "aes128gcm" not in str(view) and "'v1'" not in str(view)
    assert uaid_report(storage, uuid.uuid4().hex, "hash") is None
