"""The errno table of docs/protocol.md matches the errors the code can answer with.

Every ``(status, errno)`` pair written in the code, wherever an error is
built (``ErrorKind``/``PushError`` or the bridge error helpers), must have a
row naming that errno and status; every documented errno must occur in the
code. A new errno without documentation, or a row left behind by a removed
one, fails here.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "autopush_flask"
PROTOCOL = (ROOT / "docs" / "protocol.md").read_text()


def _int_constants() -> dict[str, int]:
    """Module-level ``NAME = <int>`` across the package (errno and status constants)."""
    values: dict[str, int] = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                if type(node.value.value) is int:
                    for target in node.targets:
                        if isinstance(target, ast.Name):
                            values.setdefault(target.id, node.value.value)
    return values


def _value(node: ast.expr, constants: dict[str, int]) -> int | None | str:
    """An int, ``None`` for a literal None, or "?" when not a constant."""
    if isinstance(node, ast.Constant) and (node.value is None or type(node.value) is int):
        return node.value
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return "?"


def errors_in_code() -> dict[int, set[int]]:
    """errno → statuses, from every call passing a 4xx/5xx status followed by an errno."""
    constants = _int_constants()
    found: dict[int, set[int]] = defaultdict(set)
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            values = [_value(arg, constants) for arg in node.args]
            for status, errno in zip(values, values[1:]):
                if isinstance(status, int) and 400 <= status < 600 and isinstance(errno, int):
                    found[errno].add(status)
    return dict(found)


def errno_table() -> dict[int, str]:
    """errno → its Status cell, from the table under ``### errno table``."""
    text = PROTOCOL.split("### errno table", 1)[1].split("\n#", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) >= 3 and cells[0].isdigit():
            rows[int(cells[0])] = cells[1]
    return rows


def test_the_scan_finds_the_errors_it_must() -> None:
    """Guard the scan itself: a refactor that hides every pair must not pass silently."""
    found = errors_in_code()
    assert {102, 103, 104, 106, 109, 201, 202} <= set(found)


def test_every_errno_in_code_is_documented_with_its_status() -> None:
    table = errno_table()
    missing = []
    for errno, statuses in sorted(errors_in_code().items()):
        if errno not in table:
            missing.append(f"errno {errno}")
            continue
        documented = {int(s) for s in table[errno].replace(",", " ").split() if s.isdigit()}
        missing += [f"errno {errno} status {status}" for status in sorted(statuses - documented)]
    assert missing == []


def test_every_documented_errno_exists_in_code() -> None:
    assert set(errno_table()) - set(errors_in_code()) == set()


def close_codes_in_code() -> set[int]:
    """The ``CLOSE_*`` codes the connection node sends."""
    codes = set()
    for path in sorted((PACKAGE / "connection").rglob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and type(node.value.value) is int:
                if any(isinstance(t, ast.Name) and t.id.startswith("CLOSE_") for t in node.targets):
                    codes.add(node.value.value)
    return codes


def test_close_codes_match_the_code() -> None:
    text = PROTOCOL.split("### close codes", 1)[1].split("\n#", 1)[0]
    documented = {int(line.split("|")[1]) for line in text.splitlines() if line.startswith("| 1") or line.startswith("| 4")}
    assert 1000 in close_codes_in_code()
    assert documented == close_codes_in_code()
