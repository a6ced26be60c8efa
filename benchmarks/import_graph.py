"""Print the package-level import graph of ``jointseg``: each first-level package -> the
packages it imports, with how many module-to-module imports make each edge.

    python benchmarks/import_graph.py            # one line per package
    python benchmarks/import_graph.py --mermaid  # the same graph as a mermaid flowchart

The graph is read with ``ast`` (function-level imports included) by
:mod:`jointseg.utils.imports`, the module ``tests/test_imports.py`` checks the layer order with.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from jointseg.utils.imports import cycles, import_graph, package_of


def package_edges(graph: dict[str, set[str]]) -> dict[str, Counter[str]]:
    """Package -> Counter of the other packages its modules import (module-level edges)."""
    edges: dict[str, Counter[str]] = {package_of(m): Counter() for m in graph}
    for module, targets in graph.items():
        source = package_of(module)
        edges[source].update(package_of(t) for t in targets if package_of(t) != source)
    return edges


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mermaid", action="store_true", help="print a mermaid flowchart")
    args = parser.parse_args(argv)
    graph = import_graph()
    edges = package_edges(graph)
    modules = Counter(package_of(m) for m in graph)
    if args.mermaid:
        sys.stdout.write("flowchart TD\n")
        for source, targets in sorted(edges.items()):
            for target in sorted(targets):
                sys.stdout.write(f"  {source} --> {target}\n")
        return 0
    total = sum(len(t) for t in graph.values())
    sys.stdout.write(f"{len(graph)} modules, {total} imports, {len(cycles(graph))} cycles\n")
    for source, targets in sorted(edges.items()):
        listed = ", ".join(f"{t}({n})" for t, n in sorted(targets.items())) or "-"
        sys.stdout.write(f"{source:12s} [{modules[source]:2d} modules] -> {listed}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
