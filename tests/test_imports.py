"""The import graph of ckptstudy runs one way: no cycles, no internal import hidden in a function,
no metric family importing another, and every module importable on its own."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "ckptstudy"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}
FAMILIES = {m for m in MODULES if m.startswith("ckptstudy.metrics.")}


def internal_imports(path: Path) -> list[tuple[str, bool]]:
    """(imported ckptstudy module, at module level?) for every import statement in the file."""
    tree = ast.parse(path.read_text())
    top = set(map(id, tree.body))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if name.startswith("ckptstudy") and name in MODULES:
                found.append((name, id(node) in top))
    return found


def graph() -> dict[str, set[str]]:
    return {m: {dep for dep, _ in internal_imports(p) if dep != m} for m, p in MODULES.items()}


def test_no_internal_import_inside_a_function():
    hidden = [(m, dep) for m, p in MODULES.items() for dep, top in internal_imports(p) if not top]
    assert hidden == []


def test_import_graph_is_acyclic():
    edges = graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycle = [*trail[trail.index(dep) :], dep] if dep in trail else [node, dep]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if dep not in state:
                visit(dep, [*trail, dep])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])


def test_no_family_imports_another_family():
    edges = graph()
    crossing = {(m, dep) for m in FAMILIES for dep in edges[m] if dep in FAMILIES}
    assert crossing == set()


def test_cycle_detection_sees_a_constructed_cycle(monkeypatch):
    # the check itself can fail: a graph with a -> b -> a is reported
    edges = {"a": {"b"}, "b": {"a"}}
    monkeypatch.setattr(sys.modules[__name__], "graph", lambda: edges)
    with pytest.raises(pytest.fail.Exception, match="import cycle"):
        test_import_graph_is_acyclic()


def test_every_module_imports_alone():
    # one process; before each module, every ckptstudy module is forgotten, so each import starts alone
    script = (
        "import importlib, sys\n"
        "for name in sys.argv[1:]:\n"
        "    for loaded in [m for m in sys.modules if m == 'ckptstudy' or m.startswith('ckptstudy.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as err:\n"
        "        print(f'{name}: {type(err).__name__}: {err}')\n"
    )
    modules = sorted(m for m in MODULES if not m.endswith("__main__"))
    proc = subprocess.run([sys.executable, "-c", script, *modules], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr[-2000:]
