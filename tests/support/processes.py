"""Real helper processes for tests: free ports and the local DynamoDB."""

from __future__ import annotations

import os
import sys
import signal
import random
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Protocol, TypeVar

ROOT = Path(__file__).resolve().parents[2]
LOCAL_DYNAMODB = ROOT / "scripts" / "local-dynamodb"
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
QUIET_PORTS_FROM = 20_000


class Stoppable(Protocol):
    def stop(self) -> None: ...


StoppableT = TypeVar("StoppableT", bound=Stoppable)


@contextmanager
def stopping(resource: StoppableT) -> Iterator[StoppableT]:
    """``contextlib.closing`` for the tests' processes and fake servers, which ``stop``."""
    try:
        yield resource
    finally:
        resource.stop()


def free_port() -> int:
    return free_port_range(1)


def wait_for_port(port: int, host: str = "127.0.0.1", timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {host}:{port} after {timeout} s")


def stop_process(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class LocalDynamoDB:
    """dynalite on a fixed port, started through ``scripts/local-dynamodb``.

    Stopping and starting it again on the same port lets tests take the
    database away from running code and bring it back.
    """

    def __init__(self, path: Path | None = None) -> None:
        self.port = free_port()
        self.path = path
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        command = [str(LOCAL_DYNAMODB), "--port", str(self.port)]
        if self.path:
            command += ["--path", str(self.path)]
        self.process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy()
        )
        wait_for_port(self.port)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


def free_port_range(count: int) -> int:
    """A base port with ``count`` consecutive free ports, below the ephemeral range.

    Nodes bind their ports a moment after the test picked them, and
    re-bind them on restarts. A port from the kernel's ephemeral range can
    meanwhile become the local port of any outgoing connection (clients,
    storage calls, node-to-node requests) and the bind then fails; below the
    range no connection ever takes it.
    """
    low = int(EPHEMERAL_RANGE.read_text().split()[0])
    chooser = random.SystemRandom()
    for _ in range(200):
        base = chooser.randrange(QUIET_PORTS_FROM, low - count)
        if all(_bindable(port) for port in range(base, base + count)):
            return base
    raise RuntimeError(f"no {count} free consecutive ports below {low}")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class GunicornNode:
    """A real gunicorn master serving one of the apps, as an operator starts it."""

    def __init__(
        self, app: str, environ: dict[str, str], workers: int = 1, port: int | None = None,
        tls_ca: Path | None = None,
    ) -> None:
        self.app = app
        self.workers = workers
        self.port = port or free_port()
        self.environ = environ
        self.tls_ca = tls_ca  # the CA of AUTOPUSH_SSL_CERT: the public port serves https
        self.process: subprocess.Popen | None = None
        self.log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.tls_ca else 'http'}://127.0.0.1:{self.port}"

    def start(self, log_path: Path, wait_ports: tuple[int, ...] = ()) -> None:
        gunicorn = Path(sys.executable).parent / "gunicorn"
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.process = subprocess.Popen(
                [str(gunicorn), "-c", "gunicorn.conf.py", "--workers", str(self.workers),
                 "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "10", self.app],
                cwd=ROOT, env=self.environ, stdout=log, stderr=subprocess.STDOUT,
            )
        try:
            for port in (self.port, *wait_ports):
                wait_for_port(port, timeout=30)
            self.wait_ready()
        except Exception:
            # A fixture that fails here never reaches its teardown: don't leave the node running.
            self.stop()
            raise

    def wait_ready(self, timeout: float = 30.0) -> None:
        """The master listens before its workers have booted: wait for an answer."""
        import ssl
        import urllib.request

        context = ssl.create_default_context(cafile=str(self.tls_ca)) if self.tls_ca else None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.url}/__lbheartbeat__", timeout=2, context=context) as response:
                    if response.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError(f"{self.app} not ready after {timeout} s")

    def signal(self, signum: int) -> None:
        self.process.send_signal(signum)

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, timeout=20)
            self.process = None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path and self.log_path.exists() else ""


@contextmanager
def running_node(
    node: GunicornNode, log_path: Path, wait_ports: tuple[int, ...] = ()
) -> Iterator[GunicornNode]:
    """Start ``node`` (waiting for ``wait_ports`` too) and stop it however the block ends."""
    node.start(log_path, wait_ports=wait_ports)  # a node that fails to start stops itself
    with stopping(node):
        yield node
