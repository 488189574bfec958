"""The package layout (issue 18): no import cycle among captum_rap's modules; the command
line's entry points (``python -m captum_rap``, the ``captum-rap`` script, the names that
``captum_rap.__main__`` exported before ``captum_rap.cli``) keep working."""

from __future__ import annotations

import ast
import importlib
import os
import subprocess
import sys
from typing import Dict, List, Set

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, "captum_rap")


def _modules() -> Dict[str, str]:
    out = {}
    for folder, _, files in os.walk(PACKAGE):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(folder, f)
                name = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                out[name[:-len(".__init__")] if name.endswith(".__init__") else name] = path
    return out


def _imports(name: str, path: str, modules: Dict[str, str]) -> Set[str]:
    """Modules of the package that ``name`` imports: every import statement, also inside
    functions (a lazy import is still a dependency), except under ``if TYPE_CHECKING:``."""
    package = name if path.endswith("__init__.py") else name.rsplit(".", 1)[0]
    found: Set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.dump(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for a in node.names:  # `from pkg import module` depends on the module
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    with open(path, encoding="utf-8") as fh:
        visit(ast.parse(fh.read()))
    return {m for m in found if m in modules and m != name}


def _cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    out: List[List[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_in_the_package():
    modules = _modules()
    assert "captum_rap.cli.main" in modules and "captum_rap._engine.mode" in modules
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    # the finder sees the edges it must (lazy and relative imports included)
    assert "captum_rap.insights.server" in graph["captum_rap.insights.visualizer"]
    assert "captum_rap.cli.common" in graph["captum_rap.quantus"]
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_old_main_names_and_entry_points():
    main_module = importlib.import_module("captum_rap.__main__")
    from captum_rap.cli import main as cli_main

    for name in main_module.__all__:
        assert hasattr(main_module, name), name
    assert main_module.main is cli_main.main
    tomllib = pytest.importorskip("tomllib")  # Python >= 3.11
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        scripts = tomllib.load(fh)["project"]["scripts"]
    module, func = scripts["captum-rap"].split(":")
    assert getattr(importlib.import_module(module), func) is cli_main.main


def test_python_dash_m_help():
    proc = subprocess.run([sys.executable, "-m", "captum_rap", "--help"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "captum-rap demo" in proc.stdout and "{demo,explain,insights,attribute-dataset,evaluate-dataset}" in proc.stdout.replace("\n", "").replace(" ", "")
