"""The package's modules import each other at the top, with dependencies pointing one way: no cycles."""

from __future__ import annotations

import ast
from pathlib import Path

import mixbits

ROOT = Path(mixbits.__file__).parent


def _module_name(path: Path) -> str:
    parts = ("mixbits",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """The mixbits modules ``path`` imports, at the top or inside a function (a late import is still a
    dependency: a cycle hidden in a function body is a cycle)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")
            base = base[: len(base) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:  # `from . import x` may name a submodule
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in modules else target)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("mixbits"))
    # importing a.b.c runs the __init__ of a and a.b first
    closed = set()
    for m in out:
        parts = m.split(".")
        closed.update(".".join(parts[:i]) for i in range(2, len(parts) + 1))
    # a module's own packages are initialising when it runs (a package's __init__ imports its modules):
    # an edge back to them is not a cycle
    parts = name.split(".")
    own = {".".join(parts[:i]) for i in range(1, len(parts) + 1)}
    return {m for m in closed if m in modules and m not in own}


def test_no_import_cycles():
    files = {_module_name(p): p for p in ROOT.rglob("*.py")}
    graph = {name: _imports(path, name, set(files)) for name, path in files.items()}
    assert "mixbits.export.records" in graph["mixbits.space"]  # the walk sees real edges
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)
