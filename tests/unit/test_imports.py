"""The package's import graph keeps its architecture: no cycles, no import from a layer above.

Every module under ``autopush_flask/`` is parsed with ``ast``, never
imported, so the check costs no start-up and sees imports a run would not
reach (function-level ones, ``if TYPE_CHECKING:`` blocks).

What counts as an import:

* For **layering**, every import of an ``autopush_flask`` module: at module
  level, inside functions, and inside ``if TYPE_CHECKING:``. A type-only
  import still says that the lower module knows about the higher one, which
  is what layering forbids.
* For **runtime cycles**, only imports run when the module is imported:
  module level, outside ``if TYPE_CHECKING:``. An import inside a function
  runs later (``db.create_storage`` loads its backend on demand), and a
  type-only import never runs. Importing ``a.b.c`` also runs the packages
  ``a.b`` and ``a``, so those are edges too (unless they are the importer's
  own parents, which are already being imported).

Layers, lowest first, follow the architecture in the README: values and
helpers everything uses; storage; the catalogue of push errors; delivery
(routers) to nodes and bridges; per-worker services; the two nodes, which
must not import each other; the command line. A module may import from its
own layer and from the layers below.

``KNOWN_VIOLATIONS`` lists the edges the code has today against this
layering, while the refactors removing them are under way. A new violation
fails the test; so does an entry that no longer occurs, so the set shrinks
with the code and is empty once the refactors have landed.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "autopush_flask"
PACKAGE_DIR = Path(__file__).resolve().parents[2] / PACKAGE

# Lowest first. "name" is the module (or package) itself, "name.*" its submodules.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("foundation", (
        "autopush_flask", "autopush_flask.config", "autopush_flask.metrics", "autopush_flask.logging",
        "autopush_flask.http_client", "autopush_flask.json_codec", "autopush_flask.proxies", "autopush_flask.node_auth", "autopush_flask.ids", "autopush_flask.urgency", "autopush_flask.tracking",
        "autopush_flask.crypto", "autopush_flask.crypto.*",
        "autopush_flask.db.models", "autopush_flask.db.errors", "autopush_flask.db.interface",
    )),
    # The ``db`` package itself picks the backend (``create_storage``), so it sits with them.
    ("storage", ("autopush_flask.db", "autopush_flask.db.*")),
    ("push errors", ("autopush_flask.push_errors",)),
    ("delivery", ("autopush_flask.routers", "autopush_flask.routers.*")),
    ("services", ("autopush_flask.services", "autopush_flask.health")),
    # The admin view: served by connection nodes, knowing nothing of them.
    ("admin", ("autopush_flask.admin", "autopush_flask.admin.*")),
    ("nodes", (
        "autopush_flask.endpoint", "autopush_flask.endpoint.*",
        "autopush_flask.connection", "autopush_flask.connection.*",
    )),
    ("entry points", ("autopush_flask.cli",)),
]

# Components of one layer that must not import each other (either way).
SEPARATE = [("autopush_flask.endpoint", "autopush_flask.connection")]

# (importer, imported) edges against the layering that a refactor in progress removes.
# Emptied once routers raised ``push_errors`` instead of ``endpoint.errors``; add an
# entry only with the refactor that removes it under way.
KNOWN_VIOLATIONS: set[tuple[str, str]] = set()


@dataclass(frozen=True)
class Edge:
    importer: str
    imported: str
    line: int
    runtime: bool  # run when the importer is imported (module level, not TYPE_CHECKING)


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the package."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def known_module(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` refers to: itself, or the module defining it (``db.User`` → ``db``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_names(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool) -> list[str]:
    """The dotted names one import statement refers to (``from a import b`` → ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        anchor = importer.split(".") if is_package else importer.split(".")[:-1]
        anchor = anchor[: len(anchor) - (node.level - 1)]
        base = ".".join([*anchor, *([node.module] if node.module else [])])
    return [f"{base}.{alias.name}" for alias in node.names]


def edges_of(importer: str, source: str, is_package: bool, modules: dict[str, Path]) -> list[Edge]:
    """The package-internal imports in ``source``, the text of module ``importer``."""
    edges: list[Edge] = []

    def visit(node: ast.AST, runtime: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for name in imported_names(child, importer, is_package):
                    target = known_module(name, modules)
                    if target and name.startswith(PACKAGE) and target != importer:
                        edges.append(Edge(importer, target, child.lineno, runtime))
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                visit(child, runtime=False)
            elif isinstance(child, ast.If) and is_type_checking(child.test):
                for statement in child.body:
                    visit(ast.Module(body=[statement], type_ignores=[]), runtime=False)
                for statement in child.orelse:
                    visit(ast.Module(body=[statement], type_ignores=[]), runtime=runtime)
            else:
                visit(child, runtime)

    visit(ast.parse(source), runtime=True)
    return edges


def import_edges() -> list[Edge]:
    modules = module_files()
    return [
        edge for name, path in modules.items()
        for edge in edges_of(name, path.read_text(), path.name == "__init__.py", modules)
    ]


def runtime_graph(edges: list[Edge]) -> dict[str, set[str]]:
    """Import-time edges, with the parent packages an import runs along the way."""
    graph: dict[str, set[str]] = {}
    for edge in edges:
        if not edge.runtime:
            continue
        targets = graph.setdefault(edge.importer, set())
        parts = edge.imported.split(".")
        for depth in range(1, len(parts) + 1):
            target = ".".join(parts[:depth])
            if target != edge.importer and not edge.importer.startswith(target + "."):
                targets.add(target)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path (first node repeated at the end), or None. Depth-first, three colours."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def walk(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state and (cycle := walk(target)):
                return cycle
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := walk(node)):
            return cycle
    return None


def layer_of(module: str) -> int | None:
    """Index in ``LAYERS``: an exact entry wins over ``name.*``, a longer ``name.*`` over a shorter one."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for index, (_, patterns) in enumerate(LAYERS):
        for pattern in patterns:
            if pattern == module:
                specificity = 10_000
            elif pattern.endswith(".*") and module.startswith(pattern[:-1]):
                specificity = len(pattern)
            else:
                continue
            if best is None or specificity > best[0]:
                best = (specificity, index)
    return best[1] if best else None


def component(module: str) -> str | None:
    for pair in SEPARATE:
        for root in pair:
            if module == root or module.startswith(root + "."):
                return root
    return None


def violations(edges: list[Edge]) -> dict[tuple[str, str], Edge]:
    found: dict[tuple[str, str], Edge] = {}
    for edge in edges:
        low, high = layer_of(edge.importer), layer_of(edge.imported)
        mine, theirs = component(edge.importer), component(edge.imported)
        upward = low is not None and high is not None and high > low
        across = mine is not None and theirs is not None and mine != theirs and any(
            {mine, theirs} == set(pair) for pair in SEPARATE)
        if upward or across:
            found.setdefault((edge.importer, edge.imported), edge)
    return found


def describe(edge: Edge) -> str:
    importer, imported = layer_of(edge.importer), layer_of(edge.imported)
    kind = "" if edge.runtime else " (not at import time)"
    return (f"{edge.importer} [{LAYERS[importer][0]}] line {edge.line} imports "
            f"{edge.imported} [{LAYERS[imported][0]}]{kind}")


# ---- the checks ---------------------------------------------------------------------------


def test_every_module_has_a_layer() -> None:
    unplaced = [name for name in module_files() if layer_of(name) is None]
    assert not unplaced, f"add these modules to LAYERS in {Path(__file__).name}: {unplaced}"


SAMPLE = """
from typing import TYPE_CHECKING
import autopush_flask.config
from autopush_flask.db import Storage
from . import models
from autopush_flask.crypto import keys as crypto_keys
import json

if TYPE_CHECKING:
    from autopush_flask.services import Services

def later():
    from autopush_flask.metrics import NullMetrics
"""


def test_the_parser_sees_every_kind_of_import() -> None:
    modules = {name: Path() for name in (
        "autopush_flask", "autopush_flask.config", "autopush_flask.db", "autopush_flask.db.models",
        "autopush_flask.db.sample", "autopush_flask.crypto", "autopush_flask.crypto.keys",
        "autopush_flask.services", "autopush_flask.metrics")}
    edges = {(edge.imported, edge.runtime) for edge in edges_of("autopush_flask.db.sample", SAMPLE, False, modules)}
    assert edges == {
        ("autopush_flask.config", True), ("autopush_flask.db", True), ("autopush_flask.db.models", True),
        ("autopush_flask.crypto.keys", True),
        ("autopush_flask.services", False),  # type-only: layering, not cycles
        ("autopush_flask.metrics", False),  # inside a function: layering, not cycles
    }


def test_the_real_graph_is_read() -> None:
    """Guards the checks below against passing on an empty graph."""
    pairs = {(edge.importer, edge.imported, edge.runtime) for edge in import_edges()}
    assert ("autopush_flask.endpoint.app", "autopush_flask.services", True) in pairs
    assert ("autopush_flask.db", "autopush_flask.db.dynamodb.storage", False) in pairs  # loaded on demand


def test_layering_catches_an_upward_and_a_sideways_import() -> None:
    edges = [Edge("autopush_flask.routers.fcm", "autopush_flask.endpoint.errors", 1, True),
             Edge("autopush_flask.connection.node", "autopush_flask.endpoint.state", 2, False),
             Edge("autopush_flask.endpoint.state", "autopush_flask.routers.fcm", 3, True)]
    assert set(violations(edges)) == {
        ("autopush_flask.routers.fcm", "autopush_flask.endpoint.errors"),
        ("autopush_flask.connection.node", "autopush_flask.endpoint.state"),
    }


def test_cycle_finder_reports_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(graph) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_importing_a_submodule_runs_its_parent_packages() -> None:
    edges = [Edge("x.a", "x.b.c", 1, True), Edge("x.b", "x.a", 2, True)]
    graph = runtime_graph(edges)
    assert graph["x.a"] == {"x.b", "x.b.c"}  # not "x": the importer's own parent is already running
    assert find_cycle(graph) == ["x.a", "x.b", "x.a"]


def test_no_import_cycle_at_import_time() -> None:
    cycle = find_cycle(runtime_graph(import_edges()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_from_a_layer_above_it() -> None:
    new = {pair: edge for pair, edge in violations(import_edges()).items() if pair not in KNOWN_VIOLATIONS}
    assert not new, "imports against the layering:\n" + "\n".join(describe(edge) for edge in new.values())


def test_known_violations_still_occur() -> None:
    """Once a refactor removes an edge, its entry goes too, so it cannot come back unnoticed."""
    gone = KNOWN_VIOLATIONS - set(violations(import_edges()))
    assert not gone, f"no longer imported, remove from KNOWN_VIOLATIONS: {sorted(gone)}"
