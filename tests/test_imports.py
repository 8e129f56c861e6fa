"""The package's import graph: no cycles, packages depend only downward, no CLI code in libraries.

Read from the source (``ast``), so the test imports nothing and sees function-level imports too.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from tests.conftest import REPO

PACKAGE = REPO / "pipeline"

LAYERS = (
    ("errors", "units", "quiet"),
    ("config",),
    ("storage", "format", "predicates"),
    ("dataset",),
    ("inspect", "spark", "spark_daemon"),
    ("reader",),
    ("access",),
    ("loader",),
    ("convert", "bench"),
    ("train",),
    ("demo",),
    ("cli",),
)
"""Each top-level module or package of ``pipeline`` may import only those in earlier layers (or
its own layer's ``errors``-like peers listed together)."""

KNOWN_UPWARD = {("reader", "access")}
"""Edges against the layering still to be removed (reported in the issue): the process workers
(``reader/workers_process.py``) open their source through ``pipeline.access.source``."""

LIBRARIES = (
    "access",
    "convert",
    "dataset",
    "format",
    "inspect",
    "loader",
    "reader",
    "storage",
    "train",
    "demo",
)
"""Packages that are library code: no ``argparse``, no ``pipeline.cli``."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, *, top_level_only: bool) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes: list[ast.AST] = []
    if top_level_only:
        for node in tree.body:
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                continue
            nodes.extend(ast.walk(node) if isinstance(node, (ast.If, ast.Try)) else [node])
    else:
        nodes = list(ast.walk(tree))
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _top(name: str) -> str:
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_no_import_cycles_between_modules():
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        deps = set()
        for imported in _imports(path, top_level_only=True):
            parts = imported.split(".")
            # importing a.b.c runs a/__init__ and a/b/__init__ too
            deps.update(
                ".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in MODULES
            )
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycle = [*stack[stack.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_packages_depend_only_downward():
    rank = {name: i for i, layer in enumerate(LAYERS) for name in layer}
    upward: set[tuple[str, str]] = set()
    for name, path in MODULES.items():
        src = _top(name)
        if src == "__init__":
            continue
        for imported in _imports(path, top_level_only=False):
            if imported.startswith("pipeline."):
                dst = _top(imported)
                if dst in rank and dst != src and rank[dst] >= rank[src]:
                    upward.add((src, dst))
    assert set(rank) >= {_top(n) for n in MODULES} - {"__init__", "py"}, "a new package needs a layer"
    assert upward <= KNOWN_UPWARD, f"imports against the layering: {sorted(upward - KNOWN_UPWARD)}"


def test_libraries_never_import_argparse_or_the_cli():
    offenders = defaultdict(set)
    for name, path in MODULES.items():
        if _top(name) in LIBRARIES:
            for imported in _imports(path, top_level_only=False):
                if imported == "argparse" or imported.startswith(("argparse.", "pipeline.cli")):
                    offenders[name].add(imported)
    assert not offenders, dict(offenders)
