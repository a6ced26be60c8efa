"""Robustness: every fault scenario run once; prints each outcome and ``N of N handled``.

    python benchmarks/robustness.py              # every scenario (a few minutes on the CPU)
    python benchmarks/robustness.py --only disk  # scenarios whose name contains "disk"

A scenario is a function returning what happened, or raising ``Unhandled`` (any other error
counts as unhandled too). Groups of scenarios are listed in ``SCENARIOS``; add a list there.
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Callable

from robustness_faults import FAULTS
from robustness_inputs import BAD_INPUTS, SCANS

SCENARIOS: dict[str, list[Callable[[], str]]] = {
    "faults": FAULTS,
    "inputs": BAD_INPUTS,
    "scans": SCANS,
}


def run(scenario: Callable[[], str]) -> tuple[bool, str]:
    """(handled, outcome) of one scenario."""
    try:
        return True, scenario()
    except Exception as error:  # any failure is an unhandled fault, reported by name
        return False, f"NOT HANDLED: {type(error).__name__}: {error}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", default="", help="run the scenarios whose name contains this")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    handled = total = 0
    for group, scenarios in SCENARIOS.items():
        for scenario in scenarios:
            if args.only not in scenario.__name__:
                continue
            began = time.perf_counter()
            ok, outcome = run(scenario)
            seconds = time.perf_counter() - began
            handled, total = handled + ok, total + 1
            print(f"[{group}] {scenario.__name__} ({seconds:.0f} s): {outcome}", flush=True)
    print(f"{handled} of {total} handled")


if __name__ == "__main__":
    main()
