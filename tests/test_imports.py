"""The package's import graph: no cycles, packages depend only downward, no CLI code in libraries.

Read from the source (``ast``), so the test imports nothing and sees function-level imports,
relative imports, names taken from ``pipeline``'s lazy facade (``from pipeline import
open_loader`` is an import of ``pipeline.loader``) and module references in strings
(``importlib.import_module("pipeline.cli.app")``). The checks are plain functions over a source
tree; the last test runs them on a small tree with one violation of each kind, so they can fail.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import REPO

LAYERS = (
    (
        "errors",
        "units",
        "quiet",
        "spark_daemon",
    ),  # spark_daemon: named by pipeline.spark as Spark's worker module
    ("config",),
    ("storage", "format", "predicates"),
    ("dataset",),
    ("inspect", "spark"),
    ("reader",),
    ("access",),
    ("loader",),
    ("convert", "bench"),
    ("train",),
    ("demo",),
    ("cli",),
)
"""Each top-level module or package of ``pipeline`` may import only those in earlier layers;
the members of one layer do not import each other."""

ALLOWED_UPWARD: set[tuple[str, str]] = set()
"""``(importer, imported)`` module pairs allowed against the layering until they are removed:
exact module edges, never a whole package. Empty since the process workers stopped opening their
source through ``pipeline.access`` (issue 13)."""

APPLICATION = ("cli",)
"""The only package that may use ``argparse`` or ``pipeline.cli``; every other one is library code."""

_MODULE_STRING = re.compile(r"pipeline(\.\w+)+(:\w+)?")


@dataclass(frozen=True)
class Tree:
    """The modules of a package on disk: ``name -> path``, plus what its root re-exports."""

    root: Path
    package: str
    modules: dict[str, Path]
    lazy: dict[str, str]
    """``pipeline.__getattr__``'s table: public name -> module that defines it."""
    root_names: set[str]
    """Names bound at the top of the package's ``__init__`` (``__version__``...)."""

    @classmethod
    def read(cls, root: Path, package: str = "pipeline") -> Tree:
        modules = {}
        for path in sorted((root / package).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
        lazy: dict[str, str] = {}
        names: set[str] = set()
        for node in ast.parse(modules[package].read_text(encoding="utf-8")).body:
            targets = node.targets if isinstance(node, ast.Assign) else [getattr(node, "target", None)]
            for target in targets:
                if isinstance(target, ast.Name):
                    names.add(target.id)
                    if target.id == "_LAZY" and node.value is not None:  # type: ignore[union-attr]
                        lazy = ast.literal_eval(node.value)  # type: ignore[union-attr]
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
        return cls(root, package, modules, lazy, names)

    def top(self, module: str) -> str:
        """The layer name of a module: ``pipeline.reader.source`` -> ``reader``; the root -> ``""``."""
        parts = module.split(".")
        return parts[1] if len(parts) > 1 else ""

    def imports(self, name: str, *, top_level_only: bool) -> set[str]:
        """The ``pipeline`` modules (and ``argparse``) that module ``name`` imports.

        Raises:
            AssertionError: An import names something in the package that is not a module, a
                lazy name or a name bound in the package's ``__init__``.
        """
        path = self.modules[name]
        tree = ast.parse(path.read_text(encoding="utf-8"))
        is_package = path.name == "__init__.py"
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
                found.update(self._resolve(alias.name, name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # from . import x / from ..a import b, relative to this module's package
                    package = name.split(".")[: len(name.split(".")) - node.level + (1 if is_package else 0)]
                    base = ".".join([*package, *([base] if base else [])])
                if base.split(".")[0] == "argparse":
                    found.add("argparse")
                if base != self.package and base in self.modules:
                    found.add(base)
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    if full in self.modules:
                        found.add(full)
                    elif base == self.package:
                        found.add(self._resolve(full, name))
                    elif base.startswith(self.package + ".") and base not in self.modules:
                        raise AssertionError(f"{name} imports {base}, which is not a module")
            elif (
                not top_level_only
                and isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and _MODULE_STRING.fullmatch(node.value)
                and node.value.split(":")[0] in self.modules
            ):
                found.add(node.value.split(":")[0])
        return {m for m in found if m == "argparse" or m.startswith(self.package + ".")}

    def _resolve(self, imported: str, importer: str) -> str:
        """``pipeline.NAME`` -> the module it stands for; ``argparse.x`` -> ``argparse``."""
        parts = imported.split(".")
        if parts[0] == "argparse":
            return "argparse"
        if parts[0] != self.package or imported in self.modules:
            return imported
        if len(parts) == 2 and parts[1] in self.lazy:
            return self.lazy[parts[1]]
        if len(parts) == 2 and parts[1] in self.root_names:
            return self.package  # the root's own names (__version__): no package
        raise AssertionError(
            f"{importer} imports {imported}, which is neither a module nor a name of {self.package}"
        )


def import_cycles(tree: Tree) -> list[list[str]]:
    """Cycles among the modules' top-level imports (``import a.b.c`` runs ``a`` and ``a.b`` too)."""
    graph: dict[str, set[str]] = {}
    for name in tree.modules:
        deps = set()
        for imported in tree.imports(name, top_level_only=True):
            parts = imported.split(".")
            deps.update(
                ".".join(parts[:i]) for i in range(2, len(parts) + 1) if ".".join(parts[:i]) in tree.modules
            )
        graph[name] = {d for d in deps if d != name and not name.startswith(d + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return cycles


def upward_imports(tree: Tree, layers: tuple[tuple[str, ...], ...]) -> set[tuple[str, str]]:
    """``(importer, imported)`` module pairs where a package imports one in its own or a later layer."""
    rank = {name: i for i, layer in enumerate(layers) for name in layer}
    unplaced = {tree.top(n) for n in tree.modules} - set(rank) - {""}
    assert not unplaced, f"packages without a layer (add them to LAYERS): {sorted(unplaced)}"
    found = set()
    for name in tree.modules:
        src = tree.top(name)
        if not src:
            continue
        for imported in tree.imports(name, top_level_only=False):
            dst = tree.top(imported)
            if dst and dst != src and imported != "argparse" and rank[dst] >= rank[src]:
                found.add((name, imported))
    return found


def cli_in_libraries(tree: Tree, application: tuple[str, ...]) -> dict[str, set[str]]:
    """Library modules that import ``argparse`` or ``pipeline.cli``: ``module -> imports``."""
    offenders: dict[str, set[str]] = {}
    cli = f"{tree.package}.cli"
    for name in tree.modules:
        if tree.top(name) in application:
            continue
        bad = {
            m
            for m in tree.imports(name, top_level_only=False)
            if m == "argparse" or m == cli or m.startswith(cli + ".")
        }
        if bad:
            offenders[name] = bad
    return offenders


PIPELINE = Tree.read(REPO)


def test_no_import_cycles_between_modules():
    assert import_cycles(PIPELINE) == []


def test_packages_depend_only_downward():
    upward = upward_imports(PIPELINE, LAYERS)
    assert upward <= ALLOWED_UPWARD, f"imports against the layering: {sorted(upward - ALLOWED_UPWARD)}"
    stale = ALLOWED_UPWARD - upward
    assert not stale, f"allowed upward imports that are gone (remove them from ALLOWED_UPWARD): {stale}"


def test_libraries_never_import_argparse_or_the_cli():
    assert cli_in_libraries(PIPELINE, APPLICATION) == {}


def test_the_checks_catch_each_kind_of_violation(tmp_path):
    files = {
        "__init__.py": '__version__ = "0"\n_LAZY: dict[str, str] = {"open_loader": "pipeline.loader"}\n',
        "errors.py": "",
        "reader/__init__.py": "",
        "reader/lazy.py": "def f():\n    from pipeline import open_loader\n",  # upward, through the facade
        "reader/relative.py": "from ..loader import batches\n",  # upward, relative
        "reader/fine.py": "from pipeline import __version__\nfrom pipeline.errors import PipelineError\n",
        "loader/__init__.py": "",
        "loader/batches.py": "import pipeline.loader.prefetch\n",
        "loader/prefetch.py": "from . import batches\n",  # batches <-> prefetch
        "train/__init__.py": "",
        "train/job.py": "import argparse\nimport importlib\n\ndef f():\n"
        '    return importlib.import_module("pipeline.cli.app")\n',
        "cli/__init__.py": "",
        "cli/app.py": "import argparse\nfrom pipeline.train import job\n",
    }
    for rel, text in files.items():
        path = tmp_path / "pipeline" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    tree = Tree.read(tmp_path)
    layers = (("errors",), ("reader",), ("loader",), ("train",), ("cli",))

    assert import_cycles(tree) == [
        ["pipeline.loader.batches", "pipeline.loader.prefetch", "pipeline.loader.batches"]
    ]
    assert upward_imports(tree, layers) == {
        ("pipeline.reader.lazy", "pipeline.loader"),
        ("pipeline.reader.relative", "pipeline.loader"),  # from ..loader import batches runs loader/__init__
        ("pipeline.reader.relative", "pipeline.loader.batches"),
        ("pipeline.train.job", "pipeline.cli.app"),
    }
    assert cli_in_libraries(tree, ("cli",)) == {"pipeline.train.job": {"argparse", "pipeline.cli.app"}}

    (tmp_path / "pipeline" / "reader" / "typo.py").write_text("from pipeline import open_loder\n")
    try:
        upward_imports(Tree.read(tmp_path), layers)
    except AssertionError as exc:
        assert "open_loder" in str(exc)
    else:
        raise AssertionError("an import of a name pipeline does not have went unnoticed")
    (tmp_path / "pipeline" / "reader" / "typo.py").unlink()
    (tmp_path / "pipeline" / "extra.py").write_text("")
    try:
        upward_imports(Tree.read(tmp_path), layers)
    except AssertionError as exc:
        assert "extra" in str(exc)
    else:
        raise AssertionError("a package without a layer went unnoticed")
