"""The import graph of ``jointseg`` (module -> the jointseg modules it imports), read with ``ast``.

Function-level imports count as well as module-level ones; ``from pkg import name`` counts
``pkg.name`` when that is a module. ``python -m jointseg.utils.imports`` prints the graph by
package, its size and its cycles.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Mapping
from pathlib import Path

PACKAGE = "jointseg"


def module_files(root: Path | None = None) -> dict[str, Path]:
    """Dotted module name -> source file of every module of the package."""
    root = root or Path(__file__).resolve().parents[1]
    result = {}
    for path in sorted(root.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        result[".".join(parts)] = path
    return result


def _imported(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    package = module.split(".") if is_package else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)
    return found


def import_graph(root: Path | None = None) -> dict[str, set[str]]:
    """Module -> the package's modules it imports (anywhere in it)."""
    files = module_files(root)
    graph = {}
    for name, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _imported(tree, name, path.name == "__init__.py")
        graph[name] = {m for m in imported if m in files and m != name}
    return graph


def cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def package_of(module: str) -> str:
    """The first-level room of a module: ``data``, ``models``, ..., or ``jointseg`` itself."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def package_graph(graph: Mapping[str, set[str]]) -> dict[str, set[str]]:
    """First-level package -> the other first-level packages it imports."""
    result: dict[str, set[str]] = {package_of(m): set() for m in graph}
    for module, targets in graph.items():
        result[package_of(module)].update(
            package_of(t) for t in targets if package_of(t) != package_of(module)
        )
    return result


def main() -> int:
    graph = import_graph()
    edges = sum(len(t) for t in graph.values())
    found = cycles(graph)
    sys.stdout.write(f"{len(graph)} modules, {edges} imports, {len(found)} cycles\n")
    for package, targets in sorted(package_graph(graph).items()):
        sys.stdout.write(f"{package:12s} -> {', '.join(sorted(targets)) or '-'}\n")
    for component in found:
        sys.stdout.write(f"cycle: {' <-> '.join(component)}\n")
    return 1 if found else 0


if __name__ == "__main__":
    raise SystemExit(main())
