"""The package's shape, checked from its source with ``ast``: imports inside functions count as much as
those at the top of a module, so nothing hides a dependency from a reader."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lagm_ray"
# The pure-torch core: it must reach neither Ray nor MLflow nor the layers built on top of it.
CORE = ("lagm_ray.trainer", "lagm_ray.gm", "lagm_ray.models", "lagm_ray.data", "lagm_ray.synthetic",
        "lagm_ray.metrics", "lagm_ray.config", "lagm_ray.callbacks", "lagm_ray.errors", "lagm_ray.storage",
        "lagm_ray.seeding", "lagm_ray.evaluation", "lagm_ray.downstream", "lagm_ray.methods", "lagm_ray.datagen")
OUTER = ("lagm_ray.cli", "lagm_ray.quickstart", "lagm_ray.runs", "lagm_ray.tracking", "lagm_ray.report",
         "lagm_ray.distributed")
FORBIDDEN_IN_CORE = ("ray", "mlflow", "optuna")
# Where a command imports what it calls inside its body, so `lagm --help` need not import torch, Ray and MLflow.
DEFERRING_MODULES = {"lagm_ray.cli"}


@dataclass(frozen=True)
class Import:
    importer: str  # dotted module that imports
    target: str  # dotted module imported (for the package's own modules: the deepest existing module)
    line: int
    in_function: bool
    commented: bool  # a comment on (or just above) the import says why it is where it is


def modules(root: Path) -> dict[str, Path]:
    out = {}
    for f in root.rglob("*.py"):
        parts = f.relative_to(root.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(root: Path) -> list[Import]:
    """Every import statement of every module under ``root``, resolved to absolute module names."""
    mods = modules(root)
    found = []
    for name, path in mods.items():
        source = path.read_text()
        lines = source.splitlines()
        tree = ast.parse(source)
        in_function = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
                       for n in ast.walk(f)}
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package[: len(package) - node.level + 1] if node.level else []
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                continue
            # the reason may stand on the line above or on any line of the statement
            commented = any("#" in line for line in lines[max(node.lineno - 2, 0):node.end_lineno])
            for t in targets:
                while t.startswith(root.name) and t not in mods:  # `from .x import name` -> module .x
                    t = t.rpartition(".")[0]
                if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not an edge
                    found.append(Import(name, t, node.lineno, id(node) in in_function, commented))
    return found


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components of more than one module in the package's own import graph."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for imp in imports(root):
        if imp.target in graph:
            graph[imp.importer].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_lagm_ray_has_no_import_cycle():
    assert cycles(PACKAGE) == []


def test_the_cycle_check_finds_a_cycle_through_a_function_level_import(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub.b import f\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n    return g\n")
    (pkg / "c.py").write_text("def g():\n    from pkg import a\n")
    (pkg / "d.py").write_text("from . import a\n")  # imports into the cycle, is not part of it
    assert cycles(pkg) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("def g():\n    pass\n")
    assert cycles(pkg) == []


def core_closure() -> set[str]:
    """The core modules and every module of the package they import, transitively."""
    mods = modules(PACKAGE)
    edges: dict[str, set[str]] = {}
    for imp in imports(PACKAGE):
        if imp.target in mods:
            edges.setdefault(imp.importer, set()).add(imp.target)
    seen = {m for m in mods if m.startswith(CORE)}
    todo = list(seen)
    while todo:
        for t in edges.get(todo.pop(), ()):
            if t not in seen:
                seen.add(t)
                todo.append(t)
    return seen


def test_the_core_reaches_no_ray_mlflow_or_outer_layer():
    closure = core_closure()
    assert not [m for m in closure if m.startswith(OUTER)]
    bad = [f"{i.importer}:{i.line} imports {i.target}" for i in imports(PACKAGE)
           if i.importer in closure and i.target.split(".")[0] in FORBIDDEN_IN_CORE]
    assert bad == []


def test_function_level_imports_say_why():
    """Only the CLI defers its library imports (its module docstring says why); elsewhere an import
    inside a function defers a heavy optional dependency, with the reason on its line."""
    silent = [f"{i.importer}:{i.line} {i.target}" for i in imports(PACKAGE)
              if i.in_function and not i.commented and i.importer not in DEFERRING_MODULES]
    assert silent == []


@pytest.mark.parametrize("name", sorted(modules(PACKAGE)))
def test_no_module_shadows_the_standard_library(name):
    import sys

    assert name.rpartition(".")[2] not in sys.stdlib_module_names


def test_modules_stay_readable_in_length():
    """Over 500 lines only the network definitions, which follow NVlabs' and torchvision's files."""
    allowed = {"lagm_ray/models/segmentors.py", "lagm_ray/models/generator.py"}
    long = {str(p.relative_to(PACKAGE.parent)): n for p in PACKAGE.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert set(long) <= allowed, long
