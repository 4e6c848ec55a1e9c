"""The layering of the packages, read from the source with ``ast`` (nothing is imported).

* No import cycles: not among module-level imports, and not once the imports inside
  functions (lazy ones) are counted too.
* The core (``audit/`` without the demo application and the CLI entry) imports probe modules
  only through the registry's lazy table (``probes.BUILTIN_PROBES``, read by ``audit.probe``).
* The demo (``audit/demo/``) is an application on top of the core and the probes: only the
  CLI's ``demo`` command imports it.
* The dashboard reads the store and report files; it never imports ``probes``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "probes", "dashboard")
#: Modules of audit/ that are not the core: the CLI entry and the demo application.
NOT_CORE = ("audit.cli", "audit.__main__", "audit.demo")


@dataclass(frozen=True)
class Import:
    source: str  # the importing module
    target: str  # the imported module
    lazy: bool  # inside a function (runs when called, not when the module loads)
    line: int


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(name: str, path: Path, known: set[str]) -> list[Import]:
    """The imports of one module that name a module of ours (``from a import b`` counts as an
    import of ``a.b`` when that is a module, else of ``a``); ``if TYPE_CHECKING:`` blocks skipped."""
    is_package = path.name == "__init__.py"
    out: list[Import] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = name.split(".") if is_package else name.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, lazy: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _type_checking(child):
                for sub in child.orelse:
                    visit_one(sub, lazy)
                continue
            visit_one(child, lazy)

    def add(target: str, lazy: bool, line: int) -> None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.append(Import(name, target, lazy, line))

    def visit_one(node: ast.AST, lazy: bool) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, lazy, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            mod = resolve(node)
            for alias in node.names:
                full = f"{mod}.{alias.name}"
                add(full if full in known else mod, lazy, node.lineno)
        else:
            visit(node, lazy or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(encoding="utf-8")), False)
    return out


@pytest.fixture(scope="module")
def graph() -> list[Import]:
    mods = modules()
    known = set(mods)
    return [imp for name, path in mods.items() for imp in imports_of(name, path, known)]


def cycles(edges: list[Import]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        succ.setdefault(e.source, set()).add(e.target)
        succ.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    import sys

    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(max(limit, 10_000))
    try:
        for v in sorted(succ):
            if v not in index:
                strong(v)
    finally:
        sys.setrecursionlimit(limit)
    return found


def _describe(comp: list[str], edges: list[Import]) -> str:
    inside = [e for e in edges if e.source in comp and e.target in comp]
    return "; ".join(f"{e.source}:{e.line} -> {e.target}{' (lazy)' if e.lazy else ''}" for e in inside)


def is_core(module: str) -> bool:
    return module.split(".")[0] == "audit" and not any(
        module == m or module.startswith(m + ".") for m in NOT_CORE)


# -- the checker itself, on modules written here -------------------------------------------------
def test_the_checker_sees_module_level_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import c\n"
                              "def f():\n    from . import a\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    global ROOT
    saved, ROOT = ROOT, tmp_path
    try:
        edges = [e for n in ("pkg.a", "pkg.b", "pkg.c") for e in imports_of(n, pkg / f"{n[4:]}.py", known)]
    finally:
        ROOT = saved
    assert {(e.source, e.target, e.lazy) for e in edges} == {
        ("pkg.a", "pkg.b", False), ("pkg.b", "pkg.a", True), ("pkg.c", "pkg.a", False)}
    assert cycles([e for e in edges if not e.lazy]) == []
    assert cycles(edges) == [["pkg.a", "pkg.b"]]


# -- the rules --------------------------------------------------------------------------------
def test_graph_is_not_empty(graph):
    assert any(e.source == "audit.runner" and e.target == "audit.spec" for e in graph)
    assert len({e.source for e in graph}) > 50


def test_no_import_cycle_at_module_level(graph):
    eager = [e for e in graph if not e.lazy]
    assert [_describe(c, eager) for c in cycles(eager)] == []


def test_no_import_cycle_counting_lazy_imports(graph):
    assert [_describe(c, graph) for c in cycles(graph)] == []


def test_core_imports_probes_only_through_the_registry_table(graph):
    bad = [e for e in graph if is_core(e.source) and e.target.split(".")[0] == "probes"
           and not (e.source == "audit.probe" and e.target == "probes" and e.lazy)]
    assert [f"{e.source}:{e.line} -> {e.target}" for e in bad] == []


def test_only_the_cli_imports_the_demo(graph):
    bad = [e for e in graph if e.target.startswith("audit.demo") and not e.source.startswith("audit.demo")
           and not (e.source == "audit.cli" and e.lazy)]
    assert [f"{e.source}:{e.line} -> {e.target}" for e in bad] == []


def test_dashboard_never_imports_probes(graph):
    bad = [e for e in graph if e.source.split(".")[0] == "dashboard" and e.target.split(".")[0] == "probes"]
    assert [f"{e.source}:{e.line} -> {e.target}" for e in bad] == []
