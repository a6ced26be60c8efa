"""benchmarks/adapt.py: the report's tables and aim on hand-built cells, the figure, the page
section, and subsets that several processes can share."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import _page  # noqa: E402
import adapt  # noqa: E402


def _cell(radius: float, ulna: float, seconds: float, nearest: str | None = None) -> dict:
    cell = {
        "steps": 300,
        "dice": {"radius": radius, "ulna": ulna},
        "mean_dice": (radius + ulna) / 2,
        "seconds": seconds,
        "train_seconds": seconds - 1,
    }
    return {**cell, "nearest_domain": nearest} if nearest else cell


def _results() -> dict:
    return {
        "elbow|2|adapt-head": _cell(0.5, 0.7, 60, "shoulder"),
        "elbow|2|adapt-norm+head": _cell(0.8, 0.6, 70, "shoulder"),
        "elbow|2|individual": _cell(0.2, 0.4, 300),
        "elbow|8|individual": _cell(0.6, 0.7, 320),
        "elbow|8|adapt-head": _cell(0.9, 0.9, 61, "shoulder"),
    }


def test_aim_compares_the_best_adapt_mode_at_two_with_individual_at_eight() -> None:
    cells = adapt._cells(_results())["elbow"]
    verdict = adapt.aim(cells)
    # best at 2: norm+head, (0.8 + 0.6) / 2 = 0.70 against (0.6 + 0.7) / 2 = 0.65
    assert verdict is not None
    assert "`adapt-norm+head`: 0.700" in verdict
    assert "individual with 8: 0.650" in verdict
    assert "meets the aim (+0.050)" in verdict
    worse = {**_results(), "elbow|8|individual": _cell(0.9, 0.9, 320)}
    assert "falls short of the aim (-0.200)" in adapt.aim(adapt._cells(worse)["elbow"])
    assert adapt.aim(adapt._cells({"elbow|2|individual": _cell(0.1, 0.1, 1)})["elbow"]) is None


def test_report_tables_hold_every_cell_in_method_order() -> None:
    text = adapt.report(_results(), "curves.png")
    assert "nearest domain: shoulder (2, 8 subjects)" in text
    rows = [line for line in text.splitlines() if line.startswith("| adapt-") or
            line.startswith("| individual")]  # fmt: skip
    assert rows[:3] == [
        "| adapt-head | 0.600 (60 s) | 0.900 (61 s) |",
        "| adapt-norm+head | 0.700 (70 s) | - |",
        "| individual | 0.300 (300 s) | 0.650 (320 s) |",
    ]
    assert "| adapt-norm+head | 2 | 0.800 | 0.600 |" in text
    assert "![Learning curves of the new datasets](curves.png)" in text


def test_the_old_domains_table_shows_each_change_and_the_largest() -> None:
    scores = {
        "source": {"ankle": 0.90, "knee": 0.80},
        "knee_t1|2|adapt-all": {"ankle": 0.88, "knee": 0.815},
        "knee_t1|2|adapt-branch": {"ankle": 0.90, "knee": 0.80},
    }
    text = adapt.report(_results(), None, scores)
    assert "| source | 0.900 | 0.800 | |" in text
    assert "| knee_t1 2 adapt-all | 0.880 (-0.020) | 0.815 (+0.015) | -0.020 |" in text
    assert "| knee_t1 2 adapt-branch | 0.900 (+0.000) | 0.800 (+0.000) | +0.000 |" in text
    assert adapt.old_domains_report({"source": {"knee": 0.8}}) == []


def test_curves_figure_is_written(tmp_path: Path) -> None:
    target = adapt.curves_figure(_results(), tmp_path / "curves.png")
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_update_section_replaces_only_its_section(tmp_path: Path) -> None:
    page = tmp_path / "B.md"
    begin, end = _page.markers("adapt")
    p_begin, p_end = _page.markers("paper")
    page.write_text(f"{p_begin}\nkeep\n{p_end}\n{begin}\nold\n{end}\n", encoding="utf-8")
    _page.update_section(page, "adapt", "new")
    assert page.read_text(encoding="utf-8") == f"{p_begin}\nkeep\n{p_end}\n{begin}\nnew\n{end}\n"
    with pytest.raises(ValueError, match="adapt2:begin"):
        _page.update_section(page, "adapt2", "x")


def _manifest(folder: Path, training: int) -> None:
    from jointseg.data.manifest import DatasetManifest, write_manifest

    manifest = DatasetManifest(
        name="Toy",
        channel_names={"0": "MRI"},
        labels={"background": 0, "bone": 1},
        numTraining=training,
        file_ending=".nii.gz",
    )
    write_manifest(folder, manifest)


def test_subset_links_the_first_cases_once(tmp_path: Path) -> None:
    source = tmp_path / "Dataset009_Toy"
    for folder, names in (("imagesTr", ("a", "b", "c")), ("imagesTs", ("t", "u"))):
        for name in names:
            (source / folder).mkdir(parents=True, exist_ok=True)
            (source / folder.replace("images", "labels")).mkdir(parents=True, exist_ok=True)
            (source / folder / f"{name}_0000.nii.gz").write_bytes(b"x")
            (source / folder.replace("images", "labels") / f"{name}.nii.gz").write_bytes(b"y")
    _manifest(source, 3)
    target = adapt.subset(source, tmp_path / "cell" / source.name, 2, 1)
    assert sorted(p.name for p in (target / "imagesTr").iterdir()) == [
        "a_0000.nii.gz",
        "b_0000.nii.gz",
    ]
    assert [p.name for p in (target / "labelsTs").iterdir()] == ["t.nii.gz"]
    assert json.loads((target / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 2
    marker = (target / "imagesTr" / "a_0000.nii.gz").lstat().st_mtime_ns
    assert adapt.subset(source, target, 2, 1) == target  # finished: kept, not rebuilt
    assert (target / "imagesTr" / "a_0000.nii.gz").lstat().st_mtime_ns == marker
    with pytest.raises(SystemExit, match="3 training cases, the curve needs 4"):
        adapt.subset(source, tmp_path / "other" / source.name, 4, 1)


def test_a_study_with_too_few_cases_is_refused_before_training(tmp_path: Path) -> None:
    from jointseg.synth.anatomy import joint_spec

    folder = tmp_path / joint_spec("elbow").folder
    (folder / "imagesTr").mkdir(parents=True)
    _manifest(folder, 0)
    with pytest.raises(
        SystemExit, match="0 training and 0 held-out cases, the curve needs 8 and 4"
    ):
        adapt.ensure_study(tmp_path, ["elbow"], 8, 4, 0)
