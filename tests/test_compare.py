"""compare_runs: the table, paired tests with Holm, reference choice, refusal of unpaired runs.

Two schemes on five ankle subjects (Dice):

- talus: full 0.90..0.94, individual 0.89 each -> differences 0.01..0.05, all positive:
  exact two-sided p = 2/32, r = 1, median difference 0.03;
- tibia: differences 0.01, -0.02, 0.03, 0.04, 0.05 -> T- = 2, p = 6/32, r = 11/15, median 0.03.

Holm over the two Dice comparisons: 2 * 2/32 = 0.125, then max(0.125, 6/32) = 0.1875.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from jointseg.config import ExperimentConfig
from jointseg.evaluation.compare import UnpairedRunsError, compare_runs
from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_path

CASES = ["c1", "c2", "c3", "c4", "c5"]
DICE = {
    "full": {"talus": [0.90, 0.91, 0.92, 0.93, 0.94], "tibia": [0.81, 0.80, 0.83, 0.84, 0.85]},
    "individual": {"talus": [0.89] * 5, "tibia": [0.80, 0.82, 0.80, 0.80, 0.80]},
}


def write_metrics(run: Path, scheme: str, cases: list[str] = CASES) -> Path:
    rows = []
    for structure in ("talus", "tibia"):
        for case, dice in zip(cases, DICE[scheme][structure], strict=False):
            rows.append({"scheme": scheme, "dataset": "ankle", "case": case, "subset": "oof",
                         "structure": structure, "dice": dice, "hd95": 1.5})  # fmt: skip
    with atomic_path(run / "evaluation" / "metrics.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    return run


def test_table_tests_and_holm(tmp_path: Path) -> None:
    individual = write_metrics(tmp_path / "ind", "individual")
    full = write_metrics(tmp_path / "full", "full")
    # No config: the default reference scheme ("full") is used although it is not first.
    report = compare_runs([individual, full], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "compare.csv")
    dice = table[(table["metric"] == "dice") & (table["scheme"] == "individual")]
    talus = dice[dice["structure"] == "talus"].iloc[0]
    tibia = dice[dice["structure"] == "tibia"].iloc[0]
    assert talus["reference"] == "full" and talus["n_pairs"] == 5
    assert talus["p_value"] == pytest.approx(2 / 32)
    assert tibia["p_value"] == pytest.approx(6 / 32)
    assert talus["p_holm"] == pytest.approx(0.125)
    assert tibia["p_holm"] == pytest.approx(0.1875)
    assert talus["rank_biserial"] == pytest.approx(1.0)
    assert tibia["rank_biserial"] == pytest.approx(11 / 15)
    assert talus["median_difference"] == pytest.approx(0.03)
    assert tibia["median_difference"] == pytest.approx(0.03)
    reference_row = table[(table["metric"] == "dice") & (table["scheme"] == "full")
                          & (table["structure"] == "talus")].iloc[0]  # fmt: skip
    assert reference_row["mean"] == pytest.approx(0.92)
    assert pd.isna(reference_row["p_value"])
    hd95 = table[(table["metric"] == "hd95") & (table["scheme"] == "individual")]
    assert list(hd95["p_value"]) == [1.0, 1.0]  # identical values: no difference

    text = report.read_text(encoding="utf-8")
    assert report == tmp_path / "out" / "compare.md"
    assert "| Scheme | ankle: talus | ankle: tibia |" in text
    assert "| **full** | 0.920 ± 0.016 | 0.826 ± 0.021 |" in text
    assert "| individual | 0.890 ± 0.000 | 0.804 ± 0.009 |" in text
    assert "p=0.125 (r=+1.00, Δ=+0.030)" in text
    assert "Holm-adjusted across the 2 comparisons" in text
    assert "### HD95 (mm)" in text
    png = tmp_path / "out" / "compare_dice_oof.png"
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_reference_from_config_or_argument(tmp_path: Path) -> None:
    full = write_metrics(tmp_path / "full", "full")
    individual = write_metrics(tmp_path / "ind", "individual")
    config = ExperimentConfig(
        datasets=[{"name": "ankle", "folder": "Dataset001_Ankle"}],
        evaluation={"reference_scheme": "individual"},
    )
    RunFolder(full).save_config(config)
    compare_runs([full, individual], tmp_path / "a")
    table = pd.read_csv(tmp_path / "a" / "compare.csv")
    assert set(table["reference"]) == {"individual"}
    compare_runs([full, individual], tmp_path / "b", reference="full")
    assert set(pd.read_csv(tmp_path / "b" / "compare.csv")["reference"]) == {"full"}
    compare_runs([full, individual], tmp_path / "c", reference="ind")  # a run folder's name
    assert set(pd.read_csv(tmp_path / "c" / "compare.csv")["reference"]) == {"individual"}
    with pytest.raises(ValueError, match="'shared' is none of the runs' schemes"):
        compare_runs([full, individual], tmp_path / "d", reference="shared")


def test_unpaired_runs_are_refused_with_the_differing_subjects(tmp_path: Path) -> None:
    full = write_metrics(tmp_path / "full", "full")
    other = write_metrics(tmp_path / "ind", "individual", ["c1", "c2", "c3", "c4", "c6"])
    with pytest.raises(UnpairedRunsError) as error:
        compare_runs([full, other], tmp_path / "out")
    message = str(error.value)
    assert "different subjects" in message
    assert "only in full: ankle/c5 (oof)" in message
    assert "only in individual: ankle/c6 (oof)" in message
    assert not (tmp_path / "out" / "compare.md").exists()


def test_runs_sharing_a_scheme_are_told_apart(tmp_path: Path) -> None:
    first = write_metrics(tmp_path / "seed0", "full")
    second = write_metrics(tmp_path / "seed1", "full")
    compare_runs([first, second], tmp_path / "out")
    table = pd.read_csv(tmp_path / "out" / "compare.csv")
    assert set(table["scheme"]) == {"full (seed0)", "full (seed1)"}
    assert set(table["reference"]) == {"full (seed0)"}  # "full" itself is no label: first run
    alike = [write_metrics(tmp_path / name / "run", "full") for name in ("a", "b")]
    compare_runs(alike, tmp_path / "alike")
    table = pd.read_csv(tmp_path / "alike" / "compare.csv")
    assert set(table["scheme"]) == {"full (run 1)", "full (run 2)"}


def test_unevaluated_run_and_single_run(tmp_path: Path) -> None:
    full = write_metrics(tmp_path / "full", "full")
    (tmp_path / "raw").mkdir()
    with pytest.raises(FileNotFoundError, match="jointseg evaluate"):
        compare_runs([full, tmp_path / "raw"], tmp_path / "out")
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([full], tmp_path / "out")
