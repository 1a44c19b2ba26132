"""Real Firefox (Debian's firefox-esr) as a Web Push client, for tests/e2e/test_firefox.py.

* ``PageServer`` serves ``tests/e2e/firefox/`` (the page and its service
  worker) on 127.0.0.1 and collects what the service worker POSTs to
  ``/report``.
* ``Firefox`` starts firefox-esr headless on a profile whose ``user.js``
  points push at the stack's connection node, and drives it with
  ``firefox/driver.mjs`` (puppeteer-core over WebDriver BiDi). Firefox is
  started here, not by puppeteer's launcher: the launcher rolls ``prefs.js``
  back on close, and ``prefs.js`` holds the push UAID (``dom.push.userAgentID``)
  that a restart on the same profile must keep.

Every wait has a deadline, so a browser that misbehaves fails the test and
never hangs the run.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from tests.support.processes import ROOT

FIREFOX_DIR = Path(__file__).resolve().parent / "firefox"
DRIVER = FIREFOX_DIR / "driver.mjs"
FIREFOX_CANDIDATES = ("firefox-esr", "firefox")
BIDI_LISTENING = re.compile(r"WebDriver BiDi listening on (ws://\S+)")
START_TIMEOUT = 40.0
COMMAND_TIMEOUT = 30.0


def find_firefox() -> str | None:
    """``$FIREFOX`` if set, else Debian's firefox-esr (or a ``firefox``) on PATH."""
    if os.environ.get("FIREFOX"):
        return os.environ["FIREFOX"]
    for name in FIREFOX_CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def profile_prefs(push_server_url: str) -> dict[str, Any]:
    """What ``user.js`` sets: push at our connection node, and nothing phoning home."""
    return {
        # Push service: our connection node over plain ws:// on loopback.
        "dom.push.enabled": True,
        "dom.push.serverURL": push_server_url,
        "dom.push.testing.allowInsecureServerURL": True,
        # The remote agent's recommended prefs turn push off: turn it back on.
        "dom.push.connection.enabled": True,
        "dom.push.requestTimeout": 10000,
        "dom.push.retryBaseInterval": 1000,
        "dom.push.maxQuotaPerSubscription": 1000,
        "dom.serviceWorkers.enabled": True,
        "dom.serviceWorkers.testing.enabled": True,
        # Notification permission granted without a prompt.
        "permissions.default.desktop-notification": 1,
        # No first-run pages, updates, telemetry or other network traffic.
        "browser.shell.checkDefaultBrowser": False,
        "browser.startup.homepage_override.mstone": "ignore",
        "browser.startup.page": 0,
        "browser.aboutwelcome.enabled": False,
        "datareporting.policy.dataSubmissionEnabled": False,
        "datareporting.healthreport.uploadEnabled": False,
        "toolkit.telemetry.enabled": False,
        "toolkit.telemetry.unified": False,
        "toolkit.telemetry.reportingpolicy.firstRun": False,
        "app.update.enabled": False,
        "app.update.disabledForTesting": True,
        "app.normandy.enabled": False,
        "app.shield.optoutstudies.enabled": False,
        "messaging-system.rsexperimentloader.enabled": False,
        "network.connectivity-service.enabled": False,
        "network.captive-portal-service.enabled": False,
        "network.dns.disablePrefetch": True,
        "network.prefetch-next": False,
        "network.http.speculative-parallel-limit": 0,
        "network.proxy.type": 0,
        "browser.safebrowsing.malware.enabled": False,
        "browser.safebrowsing.phishing.enabled": False,
        "browser.safebrowsing.downloads.enabled": False,
        "browser.safebrowsing.blockedURIs.enabled": False,
        "browser.search.update": False,
        "extensions.update.enabled": False,
        "extensions.getAddons.cache.enabled": False,
        "media.gmp-manager.updateEnabled": False,
        "services.settings.server": "http://127.0.0.1:9/remote-settings/",
        "browser.sessionstore.resume_from_crash": False,
        "toolkit.startup.max_resumed_crashes": -1,
        "remote.prefs.recommended": True,
    }


def write_user_js(profile: Path, prefs: dict[str, Any]) -> None:
    profile.mkdir(parents=True, exist_ok=True)
    lines = [f"user_pref({json.dumps(name)}, {json.dumps(value)});" for name, value in prefs.items()]
    (profile / "user.js").write_text("\n".join(lines) + "\n")


def profile_uaid(profile: Path) -> str | None:
    """The UAID Firefox saved in ``prefs.js`` (``dom.push.userAgentID``)."""
    prefs = profile / "prefs.js"
    if not prefs.exists():
        return None
    found = re.search(r'user_pref\("dom\.push\.userAgentID",\s*"([^"]*)"\);', prefs.read_text())
    return found.group(1) if found else None


class PageServer:
    """The test page and service worker on http://localhost:PORT, plus ``POST /report``."""

    def __init__(self) -> None:
        self.reports: list[dict] = []
        self._changed = threading.Condition()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802
                name = self.path.split("?")[0].lstrip("/") or "index.html"
                types = {"index.html": "text/html; charset=utf-8", "sw.js": "text/javascript"}
                if name not in types:
                    self.send_error(404)
                    return
                body = (FIREFOX_DIR / name).read_bytes()
                self.send_response(200)
                self.send_header("Content-Type", types[name])
                self.send_header("Cache-Control", "no-store")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                if self.path != "/report":
                    self.send_error(404)
                    return
                with server._changed:
                    server.reports.append(json.loads(body))
                    server._changed.notify_all()
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        # http://localhost is a secure context: service workers and push work there.
        return f"http://localhost:{self.port}/"

    def wait_reports(self, count: int, timeout: float) -> list[dict]:
        with self._changed:
            self._changed.wait_for(lambda: len(self.reports) >= count, timeout)
            return list(self.reports)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class BrowserError(RuntimeError):
    pass


class Firefox:
    """One firefox-esr process on a profile directory, driven by driver.mjs."""

    def __init__(self, binary: str, profile: Path, push_server_url: str, log_dir: Path) -> None:
        self.binary = binary
        self.profile = profile
        self.push_server_url = push_server_url
        self.log_dir = log_dir
        self.process: subprocess.Popen | None = None
        self.driver: subprocess.Popen | None = None
        self.version = ""
        self._answers: queue.Queue = queue.Queue()
        self._next_id = 0
        self._starts = 0
        self._log_path: Path | None = None

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> Firefox:
        write_user_js(self.profile, profile_prefs(self.push_server_url))
        self._starts += 1
        self._log_path = self.log_dir / f"firefox-{self.profile.name}-{self._starts}.log"
        env = {**os.environ, "MOZ_CRASHREPORTER_DISABLE": "1", "MOZ_HEADLESS": "1"}
        env.pop("DISPLAY", None)
        self.process = subprocess.Popen(
            [self.binary, "--headless", "--no-remote", "--profile", str(self.profile),
             "--remote-debugging-port=0", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
        endpoint: queue.Queue = queue.Queue()
        threading.Thread(target=self._pump_firefox, args=(self.process, endpoint), daemon=True).start()
        try:
            bidi_url = endpoint.get(timeout=START_TIMEOUT)
        except queue.Empty:
            self.kill()
            raise BrowserError(f"Firefox printed no BiDi endpoint in {START_TIMEOUT} s:\n{self.log()}")
        if bidi_url is None:
            self.kill()
            raise BrowserError(f"Firefox exited on start:\n{self.log()}")
        self.driver = subprocess.Popen(
            ["node", str(DRIVER), bidi_url], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True,
        )
        self._answers = queue.Queue()
        threading.Thread(target=self._pump_driver, args=(self.driver, self._answers), daemon=True).start()
        ready = self._answer(None, START_TIMEOUT)
        self.version = ready.get("version", "")
        return self

    def close(self, timeout: float = 20.0) -> None:
        """Quit Firefox the way a user would (profile saved), then reap both processes."""
        if self.driver is not None and self.driver.poll() is None:
            try:
                self.command("close", timeout=timeout)
            except BrowserError:
                pass
        if self.process is not None:
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._reap_driver()

    def kill(self) -> None:
        """Last resort: end the process group this object started."""
        for process in (self.process, self.driver):
            if process is not None and process.poll() is None:
                try:
                    os.killpg(process.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                process.wait(5)
        self._reap_driver()

    def _reap_driver(self) -> None:
        if self.driver is not None:
            if self.driver.poll() is None:
                self.driver.stdin.close()
                try:
                    self.driver.wait(5)
                except subprocess.TimeoutExpired:
                    os.killpg(self.driver.pid, signal.SIGKILL)
                    self.driver.wait(5)
            self.driver = None

    # -- driving the page ------------------------------------------------------------

    def command(self, cmd: str, timeout: float = COMMAND_TIMEOUT, **fields: Any) -> Any:
        if self.driver is None or self.driver.poll() is not None:
            raise BrowserError(f"driver not running:\n{self.log()}")
        self._next_id += 1
        ident = self._next_id
        self.driver.stdin.write(json.dumps({"id": ident, "cmd": cmd, **fields}) + "\n")
        self.driver.stdin.flush()
        answer = self._answer(ident, timeout)
        if not answer.get("ok"):
            raise BrowserError(f"{cmd} {fields} failed: {answer.get('error')}\n{self.log()}")
        return answer.get("result")

    def open(self, url: str) -> None:
        self.command("open", url=url)

    def call(self, name: str, *args: Any, timeout: float = COMMAND_TIMEOUT) -> Any:
        return self.command("call", name=name, args=list(args), timeout=timeout)

    def type_text(self, selector: str, text: str) -> None:
        """Type into the page's element ``selector`` (a form field), as a user would."""
        self.command("type", selector=selector, text=text)

    def submit(self, selector: str) -> str:
        """Click ``selector`` (a submit button) and wait for the page it leads to; that page's URL."""
        return self.command("submit", selector=selector)

    def text(self, selector: str) -> str:
        return self.command("text", selector=selector)

    def texts(self, selector: str) -> list[str]:
        return self.command("texts", selector=selector)

    def url(self) -> str:
        return self.command("url")

    def wait_received(self, count: int, timeout: float) -> dict:
        """Poll the page until the service worker has stored ``count`` plaintexts."""
        deadline = time.monotonic() + timeout
        while True:
            received = self.call("received")
            if len(received["stored"]) >= count or time.monotonic() > deadline:
                return received
            time.sleep(0.25)

    def _answer(self, ident: int | None, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            try:
                answer = self._answers.get(timeout=max(remaining, 0.01))
            except queue.Empty:
                raise BrowserError(f"no answer from the driver in {timeout} s:\n{self.log()}") from None
            if answer is None:
                raise BrowserError(f"the driver exited:\n{self.log()}")
            if ident is None and answer.get("ready"):
                return answer
            if answer.get("id") == ident:
                return answer

    # -- output -------------------------------------------------------------------------

    def _pump_firefox(self, process: subprocess.Popen, endpoint: queue.Queue) -> None:
        sent = False
        with open(self._log_path, "ab") as log:
            for raw in process.stdout:
                log.write(raw)
                log.flush()
                found = BIDI_LISTENING.search(raw.decode(errors="replace"))
                if found and not sent:
                    endpoint.put(found.group(1))
                    sent = True
        if not sent:
            endpoint.put(None)

    def _pump_driver(self, driver: subprocess.Popen, answers: queue.Queue) -> None:
        with open(self._log_path, "a") as log:
            for line in driver.stdout:
                try:
                    message = json.loads(line)
                except ValueError:
                    log.write(f"[driver] {line}")
                    log.flush()
                    continue
                answers.put(message)
        answers.put(None)

    def log(self, tail: int = 6000) -> str:
        if self._log_path is None or not self._log_path.exists():
            return ""
        return self._log_path.read_text(errors="replace")[-tail:]


class BrowserSubscription:
    """A Firefox subscription (``PushSubscription.toJSON()``) for ``AppServer.push``."""

    def __init__(self, data: dict) -> None:
        self.data = data
        self.endpoint: str = data["endpoint"]

    def info(self) -> dict:
        return {"endpoint": self.endpoint, "keys": dict(self.data["keys"])}

    @property
    def token(self) -> str:
        return self.endpoint.rsplit("/", 1)[1]


def wait_for(predicate: Callable[[], Any], timeout: float, interval: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)
