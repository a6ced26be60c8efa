"""The demo's table in README.md and BENCHMARKS.md, from the results file a demo run wrote.

    jointseg demo --out demo                        # writes demo/results.json
    cp demo/results.json benchmarks/results/demo/DATE.json
    python benchmarks/demo_page.py benchmarks/results/demo/DATE.json [--section demo]

fills the ``demo`` sections (or ``--section``'s) of both pages
(:func:`jointseg.workflows.demo.results_block`); ``tests/test_demo_figures.py`` fails when a
page differs from the file it names.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from _page import update_section  # noqa: E402

from jointseg.workflows.demo import results_block  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("results", type=Path, help="a demo's results.json, kept in the repository")
    parser.add_argument("--section", default="demo", help="the pages' section to fill")
    parser.add_argument("--pages", default="README.md,BENCHMARKS.md", help="comma-separated")
    args = parser.parse_args()
    for name in args.pages.split(","):
        page = ROOT / name
        update_section(page, args.section, results_block(args.results, page))
        print(f"updated {name}")


if __name__ == "__main__":
    main()
