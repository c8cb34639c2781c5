"""The jobs package has no import cycle (16: manager <-> worker was one).

Every import of a ``callannotate.jobs`` module counts, also those inside functions (a lazy
import still ties the modules together).
"""

from __future__ import annotations

import ast
from pathlib import Path

import callannotate.jobs

PACKAGE = "callannotate.jobs"
ROOT = Path(callannotate.jobs.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def imports_of(path: Path, modules: set[str]) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found.update(name for name in names if name in modules)
    return found


def test_jobs_modules_import_no_cycle() -> None:
    paths = {module_name(p): p for p in ROOT.rglob("*.py")}
    modules = set(paths)
    graph = {name: imports_of(path, modules) - {name} for name, path in paths.items()}
    # Packages' __init__ are imported with their submodules anyway: ignore edges to them.
    packages = {name for name, path in paths.items() if path.name == "__init__.py"}
    graph = {name: deps - packages for name, deps in graph.items()}
    assert "callannotate.jobs.manager" not in graph["callannotate.jobs.worker"]

    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        assert name not in visiting, "import cycle: " + " -> ".join([*visiting, name])
        visiting.append(name)
        for dep in sorted(graph[name]):
            visit(dep)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)
