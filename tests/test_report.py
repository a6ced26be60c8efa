"""evaluate_run on a tiny study with a fake predictor: metrics.csv, summary.json, report.md.

Grid (z, y, x) = (6, 6, 9) voxels of 2 x 1 x 0.5 mm. Reference: femur (1) a 3x3x3 cube at
[1:4, 1:4, 1:4], tibia (2) a 3x3x3 cube at [1:4, 1:4, 5:8]. Predictions:

- test knee_100: perfect;
- test knee_101: femur moved one slice along z (Dice 2/3, MSSD 37/52 mm, HD95 2 mm, see
  test_metrics.py), tibia perfect;
- validation knee_001: femur perfect, tibia missing (Dice 0, distances missing, RAVD 1).
The training cases knee_000 and knee_002 must not be scored.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from jointseg.data.io import read_image, write_image
from jointseg.data.manifest import DatasetManifest, write_manifest
from jointseg.evaluation.evaluate import COLUMNS, evaluate_run
from jointseg.evaluation.metrics import GeometryMismatchError
from jointseg.evaluation.report import subject_ranking, summarize
from jointseg.runs import DomainEntry, RunInfo, save_run_info
from jointseg.utils.atomic import atomic_write_json

GRID = (6, 6, 9)
SPACING_XYZ = (0.5, 1.0, 2.0)
STRUCTURES = {"femur": 1, "tibia": 2}


def reference() -> np.ndarray:
    label = np.zeros(GRID, dtype=np.uint8)
    label[1:4, 1:4, 1:4] = 1
    label[1:4, 1:4, 5:8] = 2
    return label


def predicted(case: str) -> np.ndarray:
    label = reference()
    if case == "knee_101":
        label[label == 1] = 0
        label[2:5, 1:4, 1:4] = 1
    if case == "knee_001":
        label[label == 2] = 0
    return label


def to_image(array: np.ndarray) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_XYZ)
    image.SetOrigin((-4.0, 2.0, 7.5))
    return image


def scan(index: int) -> np.ndarray:
    """An image that encodes its case index in a corner voxel (for the fake predictor)."""
    image = reference().astype(np.float32) * 100.0 + 10.0
    image[0, 0, 0] = index
    return image


class FakePredictor:
    """Returns the planned label map of the case whose scan it is given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def predict(self, image: sitk.Image, domain: str) -> SimpleNamespace:
        case = f"knee_{int(sitk.GetArrayViewFromImage(image)[0, 0, 0]):03d}"
        self.calls.append((case, domain))
        result = to_image(predicted(case))
        result.CopyInformation(image)
        return SimpleNamespace(label_map=result)


def write_study(root: Path) -> Path:
    folder = root / "data" / "Dataset002_Knee"
    for split, indices in (("Tr", (0, 1, 2)), ("Ts", (100, 101))):
        for index in indices:
            case = f"knee_{index:03d}"
            write_image(to_image(scan(index)), folder / f"images{split}" / f"{case}_0000.nii.gz")
            write_image(to_image(reference()), folder / f"labels{split}" / f"{case}.nii.gz")
    manifest = DatasetManifest(
        name="Knee", channel_names={"0": "MR"}, labels={"background": 0, **STRUCTURES},
        numTraining=3, file_ending=".nii.gz",
    )  # fmt: skip
    write_manifest(folder, manifest)
    return root / "data"


def write_run(root: Path, data_dir: Path) -> Path:
    run = root / "run"
    info = RunInfo(
        scheme="mtmd",
        domains=[DomainEntry(name="knee", folder="Dataset002_Knee", structures=STRUCTURES)],
        models=[],
        data_dir=str(data_dir),
        validation_cases={"knee": ["knee_001"]},
        training_cases={"knee": ["knee_000", "knee_002"]},
    )
    run.mkdir()
    save_run_info(run, info)
    return run


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, FakePredictor]:
    root = tmp_path_factory.mktemp("study")
    run = write_run(root, write_study(root))
    predictor = FakePredictor()
    report = evaluate_run(run, predictor=predictor, progress=False)
    assert report == run / "evaluation" / "report.md"
    return run, predictor


def test_only_unseen_subjects_are_predicted(evaluated: tuple[Path, FakePredictor]) -> None:
    run, predictor = evaluated
    assert sorted(predictor.calls) == [("knee_001", "knee"), ("knee_100", "knee"),
                                       ("knee_101", "knee")]  # fmt: skip
    saved = read_image(run / "evaluation" / "predictions" / "knee" / "knee_101.nii.gz")
    assert np.array_equal(sitk.GetArrayFromImage(saved), predicted("knee_101"))


def test_metrics_csv_rows_and_values(evaluated: tuple[Path, FakePredictor]) -> None:
    run, _ = evaluated
    frame = pd.read_csv(run / "evaluation" / "metrics.csv")
    assert list(frame.columns) == [*COLUMNS]
    assert COLUMNS[:5] == ("scheme", "dataset", "case", "subset", "structure")
    assert COLUMNS[5:] == ("dice", "sensitivity", "specificity", "mssd", "hd95", "ravd")
    assert (
        len(frame) == 6 and set(frame["scheme"]) == {"mtmd"} and set(frame["dataset"]) == {"knee"}
    )
    rows = {(r.case, r.structure): r for r in frame.itertuples()}
    assert rows["knee_100", "femur"].subset == "test"
    assert rows["knee_001", "tibia"].subset == "validation"
    shifted = rows["knee_101", "femur"]
    assert shifted.dice == pytest.approx(2 / 3)
    assert shifted.sensitivity == pytest.approx(2 / 3)
    # 324 voxels; union 36 -> TN 288; reference negatives 324 - 27 = 297.
    assert shifted.specificity == pytest.approx(288 / 297)
    assert shifted.mssd == pytest.approx(37 / 52, rel=1e-6)
    assert shifted.hd95 == pytest.approx(2.0)
    missing = rows["knee_001", "tibia"]
    assert (missing.dice, missing.sensitivity, missing.ravd) == (0.0, 0.0, 1.0)
    assert math.isnan(missing.mssd) and math.isnan(missing.hd95)
    perfect = rows["knee_100", "tibia"]
    assert (perfect.dice, perfect.mssd, perfect.hd95, perfect.ravd) == (1.0, 0.0, 0.0, 0.0)


def test_summary_json(evaluated: tuple[Path, FakePredictor]) -> None:
    run, _ = evaluated
    summary = json.loads((run / "evaluation" / "summary.json").read_text(encoding="utf-8"))
    assert summary["scheme"] == "mtmd" and summary["source"] == "run"
    femur = summary["summary"]["test"]["knee"]["femur"]["dice"]
    assert femur["mean"] == pytest.approx(5 / 6)
    assert femur["sd"] == pytest.approx(math.sqrt(2) / 6)  # two values 1 and 2/3
    assert femur["median"] == pytest.approx(5 / 6)
    tibia = summary["summary"]["validation"]["knee"]["tibia"]["mssd"]
    assert tibia == {"mean": None, "sd": None, "median": None, "n": 0, "missing": 1}


def test_report_has_tables_plots_and_overlays(evaluated: tuple[Path, FakePredictor]) -> None:
    run, _ = evaluated
    text = (run / "evaluation" / "report.md").read_text(encoding="utf-8")
    assert "## Subset `test` (2 subjects)" in text
    assert "## Subset `validation` (1 subject)" in text
    assert "| femur | 0.833 ± 0.236 |" in text
    assert "(1 missing)" in text
    assert "**best**: `knee_100` (test), mean Dice 1.000" in text
    assert "**median**: `knee_101` (test), mean Dice 0.833" in text
    assert "**worst**: `knee_001` (validation), mean Dice 0.500" in text
    for name in ("dice_test.png", "dice_validation.png", "overlay_knee_knee_100.png",
                 "overlay_knee_knee_101.png", "overlay_knee_knee_001.png"):  # fmt: skip
        png = run / "evaluation" / "figures" / name
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert f"figures/{name}" in text


def test_cv_folder_scores_out_of_fold_predictions(tmp_path: Path) -> None:
    data = write_study(tmp_path)
    cv = tmp_path / "cv"
    predictions = {}
    for index in (0, 1, 2):
        case = f"knee_{index:03d}"
        relative = f"fold{index}/{case}.nii.gz"
        write_image(to_image(predicted("knee_101" if index == 2 else case)), cv / relative)
        predictions[case] = relative
    atomic_write_json(cv / "cv.json", {
        "scheme": "full", "data_dir": str(data), "domains": ["knee"],
        "folders": {"knee": "Dataset002_Knee"}, "predictions": {"knee": predictions},
    })  # fmt: skip
    evaluate_run(cv, progress=False)
    frame = pd.read_csv(cv / "evaluation" / "metrics.csv")
    assert set(frame["subset"]) == {"oof"} and set(frame["scheme"]) == {"full"}
    assert sorted(set(frame["case"])) == ["knee_000", "knee_001", "knee_002"]
    dice = frame.set_index(["case", "structure"])["dice"]
    assert dice["knee_002", "femur"] == pytest.approx(2 / 3)
    assert dice["knee_001", "tibia"] == 0.0
    assert (cv / "evaluation" / "predictions" / "knee" / "knee_002.nii.gz").is_file()


def test_prediction_on_another_grid_is_refused(tmp_path: Path) -> None:
    run = write_run(tmp_path, write_study(tmp_path))

    class Shrinking(FakePredictor):
        def predict(self, image: sitk.Image, domain: str) -> SimpleNamespace:
            result = super().predict(image, domain)
            result.label_map.SetSpacing((0.6, 1.0, 2.0))
            return result

    with pytest.raises(GeometryMismatchError, match="spacing"):
        evaluate_run(run, predictor=Shrinking(), progress=False)


def test_missing_data_folder_is_named(tmp_path: Path) -> None:
    run = write_run(tmp_path, tmp_path / "gone")
    with pytest.raises(FileNotFoundError, match="gone.*--data"):
        evaluate_run(run, predictor=FakePredictor(), progress=False)


def test_summarize_and_ranking_on_a_frame() -> None:
    frame = pd.DataFrame({
        "subset": ["oof"] * 4, "dataset": ["ankle"] * 4, "case": ["a", "a", "b", "b"],
        "structure": ["talus", "tibia"] * 2, "dice": [0.8, 0.6, 0.9, math.nan],
    })  # fmt: skip
    summary = summarize(frame, metrics=["dice"])
    assert summary["oof"]["ankle"]["talus"]["dice"]["mean"] == pytest.approx(0.85)
    assert summary["oof"]["ankle"]["tibia"]["dice"]["missing"] == 1
    # Mean Dice: a 0.7, b 0.9 (NaN skipped); with two subjects the median is the lower one.
    assert subject_ranking(frame, "ankle") == [
        ("best", "b", "oof", pytest.approx(0.9)),
        ("median, worst", "a", "oof", pytest.approx(0.7)),
    ]
