"""A throw-away PostgreSQL cluster for the tests, and a fresh schema per test.

The cluster lives in a temporary directory (data and unix socket), listens
on a free loopback port and runs with ``fsync=off``: nothing in it has to
survive a crash. Every test gets its own schema through the URL's
``search_path``, so the backend's unqualified table names land there and
tests never see each other's rows. Root cannot run ``postgres``: as root
(CI, containers) the binaries run as the ``postgres`` system user.

Without PostgreSQL binaries the tests that need them skip locally, but fail
in CI (``CI=true``), where a skipped backend would pass for a tested one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from tests.support.processes import free_port

BINARY_GLOB = "/usr/lib/postgresql/*/bin"
SYSTEM_USER = "postgres"
SUPERUSER = "postgres"
START_TIMEOUT_SECONDS = 30
# Settings for a cluster whose contents may be lost: no flushes to disk.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c listen_addresses=127.0.0.1 -c max_connections=200"
)


class PostgresMissing(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_binaries() -> Path:
    """The newest ``/usr/lib/postgresql/<version>/bin`` holding initdb and pg_ctl."""
    candidates = [
        Path(path) for path in sorted(Path("/").glob(BINARY_GLOB.lstrip("/")), key=_major_version)
        if (Path(path) / "initdb").exists() and (Path(path) / "pg_ctl").exists()
    ]
    if not candidates:
        raise PostgresMissing(f"no PostgreSQL server binaries under {BINARY_GLOB} (apt-get install postgresql)")
    return candidates[-1]


def _major_version(path: Path) -> int:
    match = re.search(r"/(\d+)/bin$", str(path))
    return int(match.group(1)) if match else 0


class LocalPostgres:
    """One PostgreSQL cluster in a temporary directory, on a fixed port.

    ``stop`` and ``start`` again keep the port and the data, so a test can
    take the database away from running code and bring it back.
    """

    def __init__(self, binaries: Path | None = None) -> None:
        self.binaries = binaries or find_binaries()
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="autopush-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self.running = False
        self._as_system_user = os.geteuid() == 0
        if self._as_system_user:
            shutil.chown(self.root, SYSTEM_USER, SYSTEM_USER)

    def url(self, schema: str | None = None) -> str:
        """A connection URL; with ``schema``, its unqualified names resolve there."""
        url = f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/postgres"
        if schema:
            url += "?options=" + quote(f"-c search_path={schema}", safe="")
        return url

    def start(self) -> None:
        if not self.data.exists():
            self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                      "--encoding=UTF8", "--locale=C", "--no-sync")
        options = f"-p {self.port} -k {self.root} {SERVER_OPTIONS}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", str(START_TIMEOUT_SECONDS), "start")
        self.running = True

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as when a server goes down."""
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")
            self.running = False

    def restart(self) -> None:
        self.stop()
        self.start()

    def destroy(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def schema_url(self, schema: str) -> str:
        """A URL on a new, empty schema (left behind: the cluster is thrown away with the run)."""
        self.execute(f"CREATE SCHEMA {schema}")
        return self.url(schema)

    def execute(self, statement: str) -> None:
        """Run one statement as the superuser (schemas for the tests)."""
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as connection:
            connection.execute(statement)

    def _run(self, program: str, *arguments: str) -> None:
        command = [str(self.binaries / program), *arguments]
        if self._as_system_user:
            command = ["runuser", "-u", SYSTEM_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.root)
        if result.returncode != 0:
            log = self.log.read_text()[-2000:] if self.log.exists() else ""
            raise RuntimeError(
                f"{program} failed ({result.returncode}): {result.stderr.strip()}\n{log}"
            )


def new_cluster() -> LocalPostgres:
    """A cluster not started yet; skips the test where PostgreSQL is missing (fails it in CI)."""
    try:
        return LocalPostgres()
    except PostgresMissing as error:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI: {error}")
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[LocalPostgres]:
    """One PostgreSQL cluster for the whole run; tests use their own schemas."""
    cluster = new_cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def postgres_url(postgres_cluster: LocalPostgres) -> Iterator[str]:
    """A URL whose ``search_path`` is a schema of this test's own, dropped afterwards."""
    schema = "t" + uuid.uuid4().hex[:12]
    postgres_cluster.execute(f"CREATE SCHEMA {schema}")
    yield postgres_cluster.url(schema)
    if not postgres_cluster.running:  # a fault test that failed before bringing it back
        postgres_cluster.start()
    postgres_cluster.execute(f"DROP SCHEMA {schema} CASCADE")


STORES = ("dynamodb", "postgres")


def store_environ(request: pytest.FixtureRequest, backend: str) -> dict[str, str]:
    """What a stack of any fixture scope adds to run on ``backend``: nothing for DynamoDB
    (its tables are named by the stack), a fresh schema's URL for PostgreSQL."""
    if backend != "postgres":
        return {}
    cluster = request.getfixturevalue("postgres_cluster")
    return {"AUTOPUSH_DB_URL": cluster.schema_url("s" + uuid.uuid4().hex[:12])}
