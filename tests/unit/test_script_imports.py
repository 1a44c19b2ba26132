"""The scripts under scripts/ import names that exist.

They are run by `make run`, `make docs` and the benchmarks, not by the test
suite, so a module moved inside the package would break them silently (a
crypto split once broke `make run` this way).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = sorted(
    path for path in [*(ROOT / "scripts").iterdir(), *(ROOT / "scripts" / "bench").glob("*.py")]
    if path.is_file() and (path.suffix == ".py" or path.read_text().startswith("#!/usr/bin/env python"))
)


def package_imports(path: Path) -> list[tuple[str, str]]:
    """(module, name) of every ``from autopush_flask… import name`` in a script."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("autopush_flask"):
            found += [(node.module, alias.name) for alias in node.names]
    return found


def resolves(module: str, name: str) -> bool:
    loaded = importlib.import_module(module)
    if hasattr(loaded, name):
        return True
    try:
        importlib.import_module(f"{module}.{name}")
    except ImportError:
        return False
    return True


def test_scripts_import_names_that_exist() -> None:
    checked = [(path.name, module, name) for path in SCRIPTS for module, name in package_imports(path)]
    assert len(checked) > 5  # the scripts do import from the package
    missing = [entry for entry in checked if not resolves(entry[1], entry[2])]
    assert missing == []
