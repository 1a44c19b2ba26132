"""What the code emits, read from its syntax tree: metric names with tag keys, log events with fields.

The observability reference in docs/operations.md is checked against this, so a metric or
log field added in code without documentation fails the tests.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "autopush_flask"
METRIC_METHODS = {"increment", "timing", "gauge", "histogram", "timer"}
LOG_METHODS = {"debug", "info", "warning", "error", "critical", "exception"}


def _constants(tree: ast.Module) -> dict[str, str]:
    """Module-level ``NAME = "text"`` assignments, to resolve metric names given by constant."""
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    values[target.id] = node.value.value
    return values


def _names(node: ast.expr, constants: dict[str, str]) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.IfExp):
        return _names(node.body, constants) + _names(node.orelse, constants)
    if isinstance(node, ast.Name) and node.id in constants:
        return [constants[node.id]]
    if isinstance(node, ast.JoinedStr):
        parts = [p.value if isinstance(p, ast.Constant) else "{…}" for p in node.values]
        return ["".join(parts)]
    return []


def _tag_keys(call: ast.Call) -> set[str]:
    for keyword in call.keywords:
        if keyword.arg == "tags" and isinstance(keyword.value, ast.Dict):
            return {k.value for k in keyword.value.keys if isinstance(k, ast.Constant)}
    positional = [a for a in call.args[2:] if isinstance(a, ast.Dict)]
    return {k.value for d in positional for k in d.keys if isinstance(k, ast.Constant)}


def _log_fields(call: ast.Call) -> set[str] | None:
    for keyword in call.keywords:
        if keyword.arg == "extra" and isinstance(keyword.value, ast.Call):
            return {k.arg for k in keyword.value.keywords if k.arg}
    return None


def _calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        constants = _constants(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args:
                yield node, constants


def metrics_in_code() -> dict[str, set[str]]:
    """Metric name → tag keys used with it anywhere."""
    found: dict[str, set[str]] = defaultdict(set)
    for call, constants in _calls():
        if call.func.attr in METRIC_METHODS:
            for name in _names(call.args[0], constants):
                found[name] |= _tag_keys(call)
    return dict(found)


def log_events_in_code() -> dict[str, set[str]]:
    """Log message → structured fields, for log calls that carry fields."""
    found: dict[str, set[str]] = defaultdict(set)
    for call, constants in _calls():
        if call.func.attr in LOG_METHODS:
            fields = _log_fields(call)
            for message in _names(call.args[0], constants):
                if fields is not None:
                    found[message] |= fields
    return dict(found)
