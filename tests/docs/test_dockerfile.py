"""The Dockerfile runs the commands the README gives (no Docker engine here: read both)."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
README = (ROOT / "README.md").read_text()


def instructions(name: str) -> list[str]:
    return [line.split(None, 1)[1] for line in DOCKERFILE.splitlines() if line.startswith(f"{name} ")]


def test_base_image_is_python_311_slim() -> None:
    assert instructions("FROM") == ["python:3.11-slim"]


def test_default_command_is_the_readme_connection_node_command() -> None:
    [cmd] = instructions("CMD")
    command = " ".join(json.loads(cmd))
    assert command == "gunicorn -c gunicorn.conf.py wsgi:connection_app"
    assert f"The default command is `{command}`" in README


def test_readme_endpoint_command_runs_from_the_image_workdir() -> None:
    commands = re.findall(r"docker run .*? autopush-flask (gunicorn [^\n#]+?)\s+#", README)
    assert commands == ["gunicorn -c gunicorn.conf.py wsgi:endpoint_app"]
    [workdir] = instructions("WORKDIR")
    for needed in ("gunicorn.conf.py", "wsgi.py"):
        assert any(needed in copy and copy.rstrip().endswith("./") for copy in instructions("COPY")), needed
    assert workdir == "/app"


def test_everything_copied_exists_and_requirements_are_installed() -> None:
    for copy in instructions("COPY"):
        *sources, _ = copy.split()
        for source in sources:
            assert (ROOT / source).exists(), source
    assert any("pip install" in run and "requirements.txt" in run for run in instructions("RUN"))
    assert "requirements-dev.txt" not in DOCKERFILE


def test_image_exposes_the_default_ports() -> None:
    [expose] = instructions("EXPOSE")
    assert set(expose.split()) == {"8080", "8081", "8082"}
