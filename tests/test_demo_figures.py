"""The demo's figures in README.md and BENCHMARKS.md are what the results file they name holds
(``benchmarks/demo_page.py`` writes them; a page edited by hand or a stale file fails here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jointseg.workflows.demo import headline, results_block

ROOT = Path(__file__).resolve().parents[1]


def _sections(page: Path) -> dict[str, str]:
    """The page's demo sections (``demo``, ``demo-wide``, ...): name -> text."""
    text = page.read_text(encoding="utf-8")
    found = re.findall(r"<!-- (demo[\w-]*):begin -->\n(.*?)\n<!-- \1:end -->", text, re.S)
    return dict(found)


@pytest.mark.parametrize("name", ["README.md", "BENCHMARKS.md"])
def test_the_pages_show_the_results_file_they_name(name):
    page = ROOT / name
    sections = _sections(page)
    assert "demo" in sections, f"{name}: no demo section"
    for section, text in sections.items():
        linked = re.match(r"From \[`([^`]+)`\]", text)
        assert linked, f"{name}: section {section} names no results file"
        results = (page.parent / linked.group(1)).resolve()
        assert results.is_relative_to(ROOT / "benchmarks" / "results" / "demo"), results
        assert results.is_file(), results
        assert text == results_block(results, page), f"{name}: section {section} is stale"


def test_the_headline_states_each_bone_and_marks_empty_predictions():
    results = {
        "date": "2026-01-02", "jointseg_version": "0.1.0", "generator_version": 3,
        "variation": "typical", "subjects": 10, "test_subjects": 4, "seconds": 600.4,
        "machine": {"cpu": "CPU X", "threads": 2, "kernels": "AVX2"},
        "test": {
            "full": {"knee": {"femur": {"dice": 0.9512, "hd95": 2.04, "empty": 0},
                              "fibula": {"dice": 0.5, "hd95": 3.0, "empty": 1}}},
            "individual": {"knee": {"femur": {"dice": 0.9, "hd95": 2.5, "empty": 0},
                                    "fibula": {"dice": 0.0, "hd95": None, "empty": 4}}},
        },
    }  # fmt: skip
    text = headline(results)
    assert "Measured 2026-01-02 on CPU X (2 threads, AVX2 kernels)" in text
    assert "the demo took 600 s (10.0 min) without the install" in text
    assert "| knee: femur | 0.951 (2.0) | 0.900 (2.5) |" in text
    assert "| knee: fibula | 0.500 (3.0, 1 empty*) | 0.000 (-, 4 empty*) |" in text
    assert "no prediction of the bone" in text
