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


def _dict_keys(node: ast.expr, dicts: dict[str, set[str]]) -> set[str]:
    """Keys of a dict literal, of a local name assigned one, or of a call to a module function returning one.

    A call given such a dict (``_present(tags)``, a filter) may pass on any of its keys.
    """
    if isinstance(node, ast.Dict):
        return {k.value for k in node.keys if isinstance(k, ast.Constant)}
    if isinstance(node, ast.Name):
        return dicts.get(node.id, set())
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        passed = {key for argument in node.args for key in _dict_keys(argument, dicts)}
        return dicts.get(f"{node.func.id}()", set()) | passed
    return set()


def _tag_keys(call: ast.Call, dicts: dict[str, set[str]] | None = None) -> set[str]:
    dicts = dicts or {}
    for keyword in call.keywords:
        if keyword.arg == "tags":
            return _dict_keys(keyword.value, dicts)
    return {key for argument in call.args[2:] for key in _dict_keys(argument, dicts)}


def _returned_dicts(tree: ast.Module) -> dict[str, set[str]]:
    """``"name()"`` → keys, for module functions that return a dict literal (``_client_tags()``)."""
    found: dict[str, set[str]] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            for child in ast.walk(node):
                if isinstance(child, ast.Return) and isinstance(child.value, ast.Dict):
                    found.setdefault(f"{node.name}()", set()).update(_dict_keys(child.value, {}))
    return found


def _assigned_dicts(function: ast.AST) -> dict[str, set[str]]:
    """Local names assigned a dict literal in a function (``tags = {...}``)."""
    found: dict[str, set[str]] = {}
    for node in ast.walk(function):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    found.setdefault(target.id, set()).update(_dict_keys(node.value, {}))
    return found


def _metric_calls():
    """Metric calls with the dicts their tags may name: local ``tags = {...}`` and ``tags=_helper()``."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text())
        constants = _constants(tree)
        returned = _returned_dicts(tree)
        scopes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)))]
        for scope in scopes:
            dicts = {**returned, **(_assigned_dicts(scope) if scope is not tree else {})}
            for node in ast.walk(scope):
                if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
                        and node.func.attr in METRIC_METHODS):
                    yield node, constants, dicts


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
    for call, constants, dicts in _metric_calls():
        for name in _names(call.args[0], constants):
            found[name] |= _tag_keys(call, dicts)
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
