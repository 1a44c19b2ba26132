"""Optional Sentry reporting (AUTOPUSH_SENTRY_DSN) against a local fake Sentry over real HTTP."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import brotli

from tests.support.processes import ROOT

APP_SCRIPT = """
import os, sentry_sdk
from autopush_flask.config import load_settings
from autopush_flask.endpoint.app import create_endpoint_app
app = create_endpoint_app(load_settings("endpoint", os.environ))
assert app.test_client().get("/v1/err/crit").status_code == 418
sentry_sdk.flush(5)
"""


class FakeSentry:
    def __init__(self) -> None:
        self.envelopes: list[list[dict]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server naming
                raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                # sentry-sdk compresses with brotli when it is installed (geventhttpclient
                # brings it), else gzip, as Sentry's own servers accept.
                encoding = self.headers.get("Content-Encoding")
                if encoding == "gzip":
                    raw = gzip.decompress(raw)
                elif encoding == "br":
                    raw = brotli.decompress(raw)
                items = []
                for line in raw.splitlines():
                    try:
                        items.append(json.loads(line))
                    except ValueError:
                        pass
                server.envelopes.append(items)
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def dsn(self) -> str:
        return f"http://publickey@127.0.0.1:{self.httpd.server_address[1]}/42"


def run_app(make_settings, **variables: str) -> None:
    settings = make_settings()
    environ = {
        "AUTOPUSH_DDB_ENDPOINT": settings.ddb_endpoint,
        "AUTOPUSH_ROUTER_TABLE": settings.router_table,
        "AUTOPUSH_MESSAGE_TABLE": settings.message_table,
        "AUTOPUSH_STATSD_HOST": "",
        "AUTOPUSH_CRYPTO_KEYS": settings.crypto_keys[0],
        "PATH": "/usr/bin:/bin",
        **variables,
    }
    subprocess.run([sys.executable, "-c", APP_SCRIPT], cwd=ROOT, env=environ, check=True, timeout=60,
                   capture_output=True)


def test_errors_are_reported_to_sentry_when_a_dsn_is_set(make_settings) -> None:
    sentry = FakeSentry()
    try:
        run_app(make_settings, AUTOPUSH_SENTRY_DSN=sentry.dsn)
        events = [item for envelope in sentry.envelopes for item in envelope if item.get("level")]
        assert any(event.get("logentry", {}).get("message") == "Test Failure" or
                   "Test Failure" in json.dumps(event) for event in events)
        assert all(event.get("environment") == "development" for event in events)
    finally:
        sentry.httpd.shutdown()


def test_nothing_is_sent_without_a_dsn(make_settings) -> None:
    sentry = FakeSentry()
    try:
        run_app(make_settings, SENTRY_DSN=sentry.dsn)  # only AUTOPUSH_SENTRY_DSN switches it on
        assert sentry.envelopes == []
    finally:
        sentry.httpd.shutdown()
