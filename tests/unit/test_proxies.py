"""HTTP proxies (docs/operations.md#http-proxies): DynamoDB's item path takes boto3's, or the start is refused.

The item calls take the proxy botocore would pick for the same URL, so the
choice is checked against botocore's own reading of the same environment;
a proxy geventhttpclient cannot speak to stops a real gunicorn start with
one line naming the variable, never its value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from botocore.utils import get_environ_proxies

from autopush_flask.config import ENDPOINT, SettingsError, load_settings
from autopush_flask.proxies import Proxy, ProxyRefused, proxy_for
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
KEY = "TLYBAd7UWeEvm5d7JF4Iy9m7YvEaprubuzOpKc4R5aU="
PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "NO_PROXY", "REQUEST_METHOD")


@pytest.mark.parametrize(
    ("environ", "url", "expected"),
    [
        ({}, "https://dynamodb.eu-west-1.amazonaws.com", None),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "https://dynamodb.eu-west-1.amazonaws.com",
         Proxy("proxy.corp", 3128)),
        ({"HTTPS_PROXY": "http://proxy.corp:3128"}, "http://127.0.0.1:8000", None),
        ({"HTTP_PROXY": "proxy.corp:8080"}, "http://dynalite:8000", Proxy("proxy.corp", 8080)),
        ({"https_proxy": "http://u%40x:p%3Aw@lower:1", "HTTPS_PROXY": "http://upper:2"}, "https://ddb",
         Proxy("lower", 1, "u@x", "p:w")),
        ({"ALL_PROXY": "http://everything"}, "https://ddb", Proxy("everything", 80)),
        ({"HTTPS_PROXY": "http://proxy.corp:3128", "NO_PROXY": ".amazonaws.com,localhost"},
         "https://dynamodb.eu-west-1.amazonaws.com", None),
        ({"HTTPS_PROXY": "http://proxy.corp:3128", "no_proxy": "*"}, "https://ddb", None),
        ({"HTTP_PROXY": "http://proxy.corp:3128", "REQUEST_METHOD": "GET"}, "http://ddb", None),
    ],
    ids=["none", "https", "other-scheme", "no-scheme", "lower-case-wins", "all", "no-proxy-suffix",
         "no-proxy-star", "cgi"],
)
def test_the_proxy_is_the_one_botocore_picks(
    monkeypatch: pytest.MonkeyPatch, environ: dict[str, str], url: str, expected: Proxy | None
) -> None:
    assert proxy_for(url, environ) == expected
    for name in [*PROXY_VARIABLES, *(name.lower() for name in PROXY_VARIABLES)]:
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    theirs = get_environ_proxies(url)
    picked = theirs.get(url.partition(":")[0]) or theirs.get("all")
    assert (picked is None) == (expected is None)


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("HTTPS_PROXY", "https://user:s3cret@proxy.corp:3128", "'https' proxy is not supported"),
        ("https_proxy", "socks5://user:s3cret@proxy.corp:1080", "'socks5' proxy is not supported"),
        ("HTTPS_PROXY", "http://user:s3cret@proxy.corp:port", "not a proxy URL"),
        ("ALL_PROXY", "http://", "not a proxy URL"),
    ],
)
def test_a_proxy_the_item_path_cannot_use_is_refused_naming_the_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(ProxyRefused) as raised:
        proxy_for("https://dynamodb.eu-west-1.amazonaws.com", {variable: value})
    message = str(raised.value)
    assert message.startswith(f"invalid environment variable {variable}: ") and says in message
    assert "s3cret" not in message and "\n" not in message


def test_settings_refuse_an_unusable_proxy_only_for_dynamodb() -> None:
    base = {"AUTOPUSH_CRYPTO_KEYS": KEY}
    with pytest.raises(SettingsError, match="HTTPS_PROXY"):
        load_settings(ENDPOINT, {**base, "HTTPS_PROXY": "https://proxy.corp:3128"})
    # a local http endpoint: HTTPS_PROXY does not apply, HTTP_PROXY does
    local = {**base, "AUTOPUSH_DDB_ENDPOINT": "http://127.0.0.1:8000", "HTTPS_PROXY": "https://proxy.corp:3128"}
    assert load_settings(ENDPOINT, local).ddb_endpoint == "http://127.0.0.1:8000"
    with pytest.raises(SettingsError, match="HTTP_PROXY"):
        load_settings(ENDPOINT, {**local, "HTTP_PROXY": "socks5://proxy.corp:1080"})
    assert load_settings(ENDPOINT, {**local, "NO_PROXY": "127.0.0.1", "HTTP_PROXY": "socks5://p:1"}).ddb_endpoint
    # PostgreSQL: no DynamoDB calls, nothing to refuse
    postgres = {**base, "AUTOPUSH_DB_URL": "postgresql://autopush@localhost/autopush",
                "HTTPS_PROXY": "https://proxy.corp:3128"}
    assert load_settings(ENDPOINT, postgres).db_url


def test_gunicorn_start_with_an_unusable_proxy_stops_with_one_line() -> None:
    environ = {
        **{name: value for name, value in os.environ.items() if not name.lower().endswith("_proxy")},
        "AUTOPUSH_CRYPTO_KEYS": KEY,
        "AUTOPUSH_STATSD_HOST": "",
        "HTTPS_PROXY": "https://user:s3cret@proxy.corp:3128",
    }
    result = subprocess.run(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{free_port()}",
         "wsgi:endpoint_app"], cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "invalid environment variable HTTPS_PROXY: a 'https' proxy is not supported" in result.stderr
    assert "s3cret" not in result.stderr
    assert "Listening at" not in result.stderr
