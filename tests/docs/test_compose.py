"""docker-compose.yml, its env file and the image agree with the code (no Docker engine here).

Each check reads the real sources of truth: the settings schema
(autopush_flask/config.py), the port gunicorn.conf.py binds for a command,
the router port the settings give, deploy/nginx.conf as the compose service
renders it (and real nginx accepts it), the README's commands.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from autopush_flask.config import (
    CONNECTION,
    ENDPOINT,
    NODE_DEFAULTS,
    SettingsError,
    load_settings,
    setting_variables,
)
from autopush_flask.crypto.keys import CryptoKeys
from tests.support.nginx import Nginx, find_nginx
from tests.support.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()
NODE_SERVICES = {CONNECTION: "connection", ENDPOINT: "endpoint"}
APPS = {CONNECTION: "wsgi:connection_app", ENDPOINT: "wsgi:endpoint_app"}
AUTOPUSH_VARIABLE = re.compile(r"\bAUTOPUSH_[A-Z0-9_]+")


def read_env_file(path: Path) -> dict[str, str]:
    """Docker's env-file format: ``NAME=value`` lines, ``#`` comments, no quoting."""
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line and not line.startswith("#"))
    return {name: value for name, value in pairs}


def env_files(service: dict) -> list[tuple[Path, bool]]:
    entries = service.get("env_file", [])
    entries = [entries] if isinstance(entries, str) else entries
    return [
        (ROOT / entry, True) if isinstance(entry, str) else (ROOT / entry["path"], entry.get("required", True))
        for entry in entries
    ]


def node_environment(node_type: str, crypto_key: str | None = None) -> dict[str, str]:
    """What the node's container gets: its required env files, then ``environment``."""
    service = SERVICES[NODE_SERVICES[node_type]]
    environ: dict[str, str] = {}
    for path, required in env_files(service):
        if required:
            environ.update(read_env_file(path))
    environ.update(service.get("environment") or {})
    if crypto_key:
        environ["AUTOPUSH_CRYPTO_KEYS"] = crypto_key
    return environ


def gunicorn_config(command: list[str], environ: dict[str, str]) -> dict:
    """gunicorn.conf.py as gunicorn runs it for ``command`` in a container with ``environ``."""
    saved_argv, saved_environ = sys.argv, dict(os.environ)
    sys.argv = list(command)
    os.environ.clear()
    os.environ.update(environ)
    try:
        return runpy.run_path(str(ROOT / "gunicorn.conf.py"))
    finally:
        sys.argv = saved_argv
        os.environ.clear()
        os.environ.update(saved_environ)


def bound_port(command: list[str], environ: dict[str, str]) -> int:
    [bind] = gunicorn_config(command, environ)["bind"]
    return int(bind.rsplit(":", 1)[1])


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match[1]) * (60 if match[2] == "m" else 1)


def dockerfile_instructions(text: str, name: str) -> list[str]:
    """Instructions with their continuation lines joined, as Docker reads them."""
    joined = re.sub(r"\\\n", "", text)
    return [line.split(None, 1)[1] for line in joined.splitlines() if line.startswith(f"{name} ")]


@pytest.fixture(scope="module")
def crypto_key() -> str:
    return CryptoKeys.generate_key()


# ---- commands and settings ---------------------------------------------------------


@pytest.mark.parametrize("node_type", [CONNECTION, ENDPOINT])
def test_nodes_run_the_readme_commands(node_type: str) -> None:
    command = SERVICES[NODE_SERVICES[node_type]]["command"]
    assert command == ["gunicorn", "-c", "gunicorn.conf.py", APPS[node_type]]
    assert f"`{' '.join(command)}`" in README or f"{' '.join(command)}" in README


def test_every_autopush_variable_is_a_setting() -> None:
    known = setting_variables()
    sources = {
        "docker-compose.yml": (ROOT / "docker-compose.yml").read_text(),
        "Dockerfile": DOCKERFILE,
        "deploy/autopush.env.example": "\n".join(read_env_file(ROOT / "deploy/autopush.env.example")),
    }
    found = {name: set(AUTOPUSH_VARIABLE.findall(text)) for name, text in sources.items()}
    assert found["deploy/autopush.env.example"], "the env file sets no AUTOPUSH_* variable"
    for name, variables in found.items():
        assert variables <= known, f"{name}: {sorted(variables - known)}"


def test_example_env_file_holds_no_key() -> None:
    example = read_env_file(ROOT / "deploy/autopush.env.example")
    assert example["AUTOPUSH_CRYPTO_KEYS"] == ""
    assert "docker compose run --rm --no-deps -T endpoint flask generate-keys" in (
        ROOT / "deploy/autopush.env.example"
    ).read_text()
    [(_, required)] = [entry for entry in env_files(SERVICES["endpoint"]) if "var/" in str(entry[0])]
    assert not required, "the key file must be optional, or `docker compose run` fails before it exists"


@pytest.mark.parametrize("node_type", [CONNECTION, ENDPOINT])
def test_node_settings_load_and_refuse_without_keys(node_type: str, crypto_key: str) -> None:
    settings = load_settings(node_type, node_environment(node_type, crypto_key))
    assert settings.crypto_keys == (crypto_key,)
    with pytest.raises(SettingsError, match="missing setting AUTOPUSH_CRYPTO_KEYS"):
        load_settings(node_type, node_environment(node_type))


def flask(arguments: list[str], environ: dict[str, str]) -> subprocess.CompletedProcess:
    """The image's ``flask`` from its workdir (the repository root here), with only ``environ``."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "flask"), *arguments], cwd=ROOT, capture_output=True, text=True,
        env={"PATH": os.environ.get("PATH", ""), "AWS_CA_BUNDLE": os.environ.get("AWS_CA_BUNDLE", ""), **environ},
        timeout=60,
    )


def test_documented_key_file_makes_both_nodes_start(tmp_path: Path) -> None:
    """``flask generate-keys > var/docker.env``, read after the example file as compose does."""
    keys = flask(["generate-keys"], {})
    assert keys.returncode == 0, keys.stderr
    key_file = tmp_path / "docker.env"
    key_file.write_text(keys.stdout)
    generated = read_env_file(key_file)
    assert set(generated) == {"AUTOPUSH_CRYPTO_KEYS", "AUTOPUSH_AUTH_KEYS"}
    for node_type in (CONNECTION, ENDPOINT):
        settings = load_settings(node_type, {**node_environment(node_type), **generated})
        assert settings.crypto_keys == (generated["AUTOPUSH_CRYPTO_KEYS"],)


def test_tables_service_creates_the_tables(dynalite, table_prefix: str) -> None:
    """The one-shot ``tables`` service's command with the nodes' env file, on a real dynalite."""
    environ = {
        **node_environment(ENDPOINT),
        "AUTOPUSH_DDB_ENDPOINT": dynalite.url,
        "AUTOPUSH_ROUTER_TABLE": f"{table_prefix}_router",
        "AUTOPUSH_MESSAGE_TABLE": f"{table_prefix}_message",
    }
    assert env_files(SERVICES["tables"]) == env_files(SERVICES["endpoint"])
    result = flask(SERVICES["tables"]["command"][1:], environ)
    assert result.returncode == 0, result.stderr
    assert f"{table_prefix}_router" in result.stdout and f"{table_prefix}_message" in result.stdout


# ---- ports -------------------------------------------------------------------------


def test_ports_agree_between_compose_env_gunicorn_and_nginx(crypto_key: str) -> None:
    nginx_environ = SERVICES["nginx"]["environment"]
    for node_type, service_name in NODE_SERVICES.items():
        service = SERVICES[service_name]
        environ = node_environment(node_type, crypto_key)
        port = bound_port(service["command"], environ)
        assert port == load_settings(node_type, environ).port
        assert str(port) in service["expose"]
        upstream = nginx_environ[f"{node_type.upper()}_UPSTREAM"]
        assert upstream == f"{service_name}:{port}"


def test_router_is_announced_by_service_name_and_never_published(crypto_key: str) -> None:
    settings = load_settings(CONNECTION, node_environment(CONNECTION, crypto_key))
    assert settings.node_id(settings.router_port) == f"http://connection:{settings.router_port}"
    assert settings.router_bind == "0.0.0.0"  # reachable from the endpoint container
    assert str(settings.router_port) in SERVICES["connection"]["expose"]
    published = {name for name, service in SERVICES.items() if service.get("ports")}
    assert published == {"nginx"}


def test_public_urls_are_nginx_published_port(crypto_key: str) -> None:
    [published] = SERVICES["nginx"]["ports"]
    host, host_port, container_port = published.split(":")
    assert host == "127.0.0.1"
    assert container_port == SERVICES["nginx"]["environment"]["LISTEN"]
    settings = load_settings(ENDPOINT, node_environment(ENDPOINT, crypto_key))
    assert settings.endpoint_url == f"http://localhost:{host_port}"
    assert settings.proxy_fix
    firefox = f"`dom.push.serverURL` = `ws://localhost:{host_port}/`"
    assert firefox in README


def test_store_is_the_dynamodb_service(crypto_key: str) -> None:
    settings = load_settings(ENDPOINT, node_environment(ENDPOINT, crypto_key))
    url = urlsplit(settings.ddb_endpoint)
    dynamodb = SERVICES["dynamodb"]
    dockerfile = (ROOT / dynamodb["build"]["dockerfile"]).read_text()
    [cmd] = dockerfile_instructions(dockerfile, "CMD")
    command = json.loads(cmd)
    assert url.hostname == "dynamodb"
    assert command[command.index("--port") + 1] == str(url.port)
    assert command[command.index("--host") + 1] == "0.0.0.0"
    assert str(url.port) in dynamodb["expose"]
    assert str(url.port) in " ".join(dynamodb["healthcheck"]["test"])


def test_dynalite_image_uses_the_locked_version() -> None:
    dockerfile = (ROOT / SERVICES["dynamodb"]["build"]["dockerfile"]).read_text()
    copied = [part for copy in dockerfile_instructions(dockerfile, "COPY") for part in copy.split()[:-1]]
    assert set(copied) == {"package.json", "package-lock.json", "scripts/local-dynamodb"}
    assert all((ROOT / source).exists() for source in copied)
    assert any(run.startswith("npm ci") for run in dockerfile_instructions(dockerfile, "RUN"))
    lock = json.loads((ROOT / "package-lock.json").read_text())
    assert lock["packages"]["node_modules/dynalite"]["version"] == "4.0.0"
    assert "dynalite 4.0.0" in (ROOT / "docker-compose.yml").read_text()


# ---- start order and stopping ------------------------------------------------------


def test_start_order_tables_before_nodes_before_nginx() -> None:
    assert SERVICES["tables"]["command"] == ["flask", "maintain-tables"]
    assert SERVICES["tables"]["depends_on"]["dynamodb"]["condition"] == "service_healthy"
    for node in NODE_SERVICES.values():
        assert SERVICES[node]["depends_on"]["tables"]["condition"] == "service_completed_successfully"
        assert SERVICES["nginx"]["depends_on"][node]["condition"] == "service_healthy"


def test_stop_grace_period_outlasts_the_graceful_timeout(crypto_key: str) -> None:
    environ = node_environment(CONNECTION, crypto_key)
    graceful = gunicorn_config(SERVICES["connection"]["command"], environ)["graceful_timeout"]
    for node in NODE_SERVICES.values():
        assert seconds(SERVICES[node]["stop_grace_period"]) >= graceful + 5
    assert dockerfile_instructions(DOCKERFILE, "STOPSIGNAL") == ["SIGTERM"]
    assert f"graceful_timeout ({graceful} s" in DOCKERFILE


def test_worker_heartbeat_file_on_tmpfs(crypto_key: str) -> None:
    environ = node_environment(CONNECTION, crypto_key)
    assert gunicorn_config(SERVICES["connection"]["command"], environ)["worker_tmp_dir"] == "/dev/shm"


# ---- the image's health check ------------------------------------------------------


class Heartbeat(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/__lbheartbeat__" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def heartbeat_server() -> Iterator[int]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Heartbeat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def healthcheck(
    tmp_path: Path, cmdline: list[str], environ: dict[str, str], *extra: str
) -> subprocess.CompletedProcess:
    cmdline_file = tmp_path / "cmdline"
    cmdline_file.write_bytes(b"\0".join(part.encode() for part in cmdline) + b"\0")
    return subprocess.run(
        [sys.executable, str(ROOT / "deploy/healthcheck.py"), "--cmdline", str(cmdline_file), *extra],
        env={"PATH": os.environ.get("PATH", ""), **environ}, capture_output=True, text=True, timeout=30,
    )


def test_image_health_check_runs_the_script() -> None:
    [check] = dockerfile_instructions(DOCKERFILE, "HEALTHCHECK")
    assert check.split("CMD", 1)[1].strip() == '["python", "deploy/healthcheck.py"]'
    assert any(copy.split()[0] == "deploy/healthcheck.py" for copy in dockerfile_instructions(DOCKERFILE, "COPY"))


@pytest.mark.parametrize("node_type", [CONNECTION, ENDPOINT])
@pytest.mark.parametrize("init", [[], ["/sbin/docker-init", "--"]])
def test_health_check_asks_the_port_gunicorn_binds(
    node_type: str, init: list[str], crypto_key: str, tmp_path: Path
) -> None:
    command = SERVICES[NODE_SERVICES[node_type]]["command"]
    base = node_environment(node_type, crypto_key)
    for environ in (base, {**base, "AUTOPUSH_PORT": "9123"}):
        cmdline = [*init, "/usr/local/bin/python3.11", "/usr/local/bin/gunicorn", *command[1:]]
        result = healthcheck(tmp_path, cmdline, environ, "--print-url")
        port = bound_port(command, environ)
        assert result.stdout.strip() == f"http://127.0.0.1:{port}/__lbheartbeat__", result.stderr


def test_health_check_defaults_agree_with_the_settings() -> None:
    defaults = runpy.run_path(str(ROOT / "deploy/healthcheck.py"))["DEFAULT_PORTS"]
    assert defaults == {
        APPS[node].split(":")[1]: int(NODE_DEFAULTS[node]["AUTOPUSH_PORT"]) for node in (CONNECTION, ENDPOINT)
    }


def test_health_check_passes_only_while_the_node_answers(heartbeat_server: int, tmp_path: Path) -> None:
    cmdline = ["gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{heartbeat_server}", "wsgi:endpoint_app"]
    assert healthcheck(tmp_path, cmdline, {}).returncode == 0
    closed = free_port()
    cmdline[4] = f"127.0.0.1:{closed}"
    failed = healthcheck(tmp_path, cmdline, {})
    assert failed.returncode == 1
    assert f"127.0.0.1:{closed}/__lbheartbeat__" in failed.stderr


# ---- version.json ------------------------------------------------------------------


def test_version_json_comes_from_the_build_args(tmp_path: Path) -> None:
    """The image's RUN, executed as Docker would in a copy of what the image holds (no .git)."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts/write-version-json", tmp_path / "scripts")
    shutil.copytree(ROOT / "autopush_flask", tmp_path / "autopush_flask", ignore=shutil.ignore_patterns("__pycache__"))
    [run] = [run for run in dockerfile_instructions(DOCKERFILE, "RUN") if "version" in run]
    args = {"COMMIT": "0123abc", "SOURCE": "https://example.org/autopush-flask", "BUILD": "ci-42"}
    for arg in args:
        assert any(line == f"ARG {arg}" or line.startswith(f"ARG {arg}=") for line in DOCKERFILE.splitlines())
    python_dir = str(Path(sys.executable).parent)
    subprocess.run(
        ["/bin/sh", "-c", run], cwd=tmp_path, check=True,
        env={"PATH": f"{python_dir}:/usr/bin:/bin", **args},
    )
    document = json.loads((tmp_path / "version.json").read_text())
    assert document == {
        "source": args["SOURCE"], "version": runpy.run_path(str(ROOT / "autopush_flask/__init__.py"))["__version__"],
        "commit": args["COMMIT"], "build": args["BUILD"],
    }


# ---- nginx -------------------------------------------------------------------------


def render_nginx(environ: dict[str, str]) -> str:
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "deploy/render-nginx-conf"), str(ROOT / "deploy/nginx.conf")],
        env={"PATH": "/usr/bin:/bin", **environ}, capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def directives(conf: str) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in conf.splitlines() if line.split("#", 1)[0].strip()]


def test_compose_nginx_renders_deploy_nginx_conf() -> None:
    nginx = SERVICES["nginx"]
    render = "sh /etc/autopush/render-nginx-conf /etc/autopush/nginx.conf > /etc/nginx/conf.d/default.conf"
    assert render in nginx["command"][-1]
    assert "./deploy:/etc/autopush:ro" in nginx["volumes"]
    conf = directives(render_nginx(nginx["environment"]))
    assert not any("@" in line for line in conf)
    assert not any(line.startswith("ssl_") or " ssl" in line for line in conf)
    assert f"listen {nginx['environment']['LISTEN']};" in conf
    assert "server connection:8080;" in conf and "server endpoint:8082;" in conf


def test_render_refuses_a_missing_variable() -> None:
    environ = dict(SERVICES["nginx"]["environment"])
    del environ["ENDPOINT_UPSTREAM"]
    result = subprocess.run(
        ["/bin/sh", str(ROOT / "deploy/render-nginx-conf"), str(ROOT / "deploy/nginx.conf")],
        env={"PATH": "/usr/bin:/bin", **environ}, capture_output=True, text=True,
    )
    assert result.returncode != 0
    assert "ENDPOINT_UPSTREAM" in result.stderr


def test_real_nginx_accepts_the_compose_rendering(tmp_path: Path) -> None:
    """Service names do not resolve here: loopback upstreams, everything else as compose renders it."""
    binary = find_nginx()
    if binary is None:
        if os.environ.get("CI"):
            pytest.fail("nginx is not installed; .ci/run installs the Debian package nginx")
        pytest.skip("nginx is not installed")
    port = free_port()
    environ = {
        **SERVICES["nginx"]["environment"], "LISTEN": f"127.0.0.1:{port}",
        "CONNECTION_UPSTREAM": f"127.0.0.1:{free_port()}", "ENDPOINT_UPSTREAM": f"127.0.0.1:{free_port()}",
    }
    server = Nginx(binary, tmp_path / "nginx", render_nginx(environ), port).start()
    try:
        import requests

        # Private router routes stay closed whatever the upstream; the rest is proxied (502: no node here).
        assert requests.put(f"http://127.0.0.1:{port}/push/x", timeout=5).status_code == 404
        assert requests.get(f"http://127.0.0.1:{port}/__lbheartbeat__", timeout=5).status_code == 502
    finally:
        server.stop()
