"""Postprocessing of label maps: the operations on constructed maps, the decision rule on
validation Dice, postprocessing.json, and its use by evaluate and predict."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import SimpleITK as sitk

from jointseg.evaluation.evaluate import RAW_METRICS_FILE, evaluate_run
from jointseg.evaluation.postprocessing import decide_postprocessing, decide_steps
from jointseg.inference.postprocess import (
    Postprocessing,
    PostprocessingError,
    StructureSteps,
    fill_holes,
    keep_components,
    postprocess_labels,
    remove_components,
)
from jointseg.runs import RunFolder
from tests.test_report import reference, scan, to_image, write_run, write_study

KNEE = {"femur": 1, "tibia": 2}


def two_islands(small: int = 2) -> np.ndarray:
    """Femur (1): a 4x6x6 block and a ``small``-sided cube apart from it; tibia (2) beside."""
    labels = np.zeros((10, 12, 16), np.uint8)
    labels[1:5, 1:7, 1:7] = 1  # 144 voxels
    labels[7 : 7 + small, 8 : 8 + small, 12 : 12 + small] = 1
    labels[1:5, 1:7, 9:12] = 2
    return labels


def test_the_small_island_goes_with_largest_and_stays_above_the_share() -> None:
    labels = two_islands(small=3)  # 27 voxels: 0.19 of the largest
    cleaned = remove_components(labels, 1, "largest")
    assert (cleaned == 1).sum() == 144
    assert (cleaned[7:10, 8:11, 12:15] == 0).all()  # removed voxels become background
    np.testing.assert_array_equal(cleaned == 2, labels == 2)  # the tibia is untouched
    assert (remove_components(labels, 1, "share", share=0.1) == 1).sum() == 144 + 27
    assert (remove_components(labels, 1, "share", share=0.25) == 1).sum() == 144


def test_two_halves_of_equal_size_both_stay_with_the_share_rule() -> None:
    mask = np.zeros((6, 8, 20), bool)
    mask[1:5, 1:7, 1:8] = True
    mask[1:5, 1:7, 11:18] = True
    assert keep_components(mask, "share", 0.1).sum() == mask.sum()
    assert keep_components(mask, "largest").sum() == mask.sum() // 2


def test_corner_contact_is_one_component() -> None:  # 26-connectivity
    mask = np.zeros((4, 4, 4), bool)
    mask[1, 1, 1] = mask[2, 2, 2] = True
    assert keep_components(mask, "largest").sum() == 2


def test_an_enclosed_hole_is_filled() -> None:
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[3:6, 3:6, 3:6] = 0  # a 27-voxel cavity
    labels[0, 0, 0] = 2
    filled = fill_holes(labels, 1)
    assert (filled[1:8, 1:8, 1:8] == 1).all()
    assert filled[0, 0, 0] == 2 and (filled == 0).sum() == (labels == 0).sum() - 27


def test_a_hole_holding_another_structure_keeps_it() -> None:
    labels = np.zeros((9, 9, 9), np.uint8)
    labels[1:8, 1:8, 1:8] = 1
    labels[2:7, 2:7, 2:7] = 0  # a 125-voxel cavity
    labels[4, 4, 4] = 2  # another structure inside it
    filled = fill_holes(labels, 1)
    assert filled[4, 4, 4] == 2  # never overwritten
    assert (filled == 1).sum() == (labels == 1).sum() + 124
    # a cavity open to the outside is not a hole
    labels[4, 4, 0:3] = 0
    assert (fill_holes(labels, 1) == labels).all()


def test_components_run_before_fills_and_only_listed_structures_change() -> None:
    labels = two_islands()
    labels[2:4, 3:5, 3:5] = 0  # a hole in the femur block
    steps = {"femur": StructureSteps("largest", True)}
    result = postprocess_labels(labels, KNEE, steps)
    expected = labels.copy()
    expected[1:5, 1:7, 1:7] = 1
    expected[7:9, 8:10, 12:14] = 0
    np.testing.assert_array_equal(result, expected)
    assert (postprocess_labels(labels, KNEE, {}) == labels).all()


# ------------------------------------------------------------------------- the decision rule
def test_a_step_that_lowers_validation_dice_is_not_kept_and_one_that_helps_is() -> None:
    truth = two_islands()  # the femur truly has a small second piece
    truth[2:4, 3:5, 3:5] = 0  # and a true cavity
    truth[1:5, 1:7, 9:12] = 0
    truth[1:6, 1:7, 9:14] = 2
    truth[2:4, 3:5, 10:12] = 0  # the tibia is solid: the cavity here is a prediction error
    predicted = truth.copy()
    predicted[7:9, 0:2, 0:4] = 2  # a spurious 16-voxel tibia island: above 0.1 x 142 voxels
    solid_tibia = truth.copy()
    solid_tibia[2:4, 3:5, 10:12] = 2
    decision = decide_steps(
        {"knee": [(predicted, solid_tibia), (truth.copy(), solid_tibia)]}, {"knee": KNEE}
    )
    femur, tibia = decision.steps["knee"]["femur"], decision.steps["knee"]["tibia"]
    # femur: removing the true piece or filling the true cavity lowers Dice: neither is kept
    assert femur == StructureSteps(None, False)
    measured = decision.measured["knee"]["femur"]
    assert measured["components_dice"]["largest"] < measured["components_dice"]["without"]
    assert measured["fill_holes_dice"]["with"] < measured["fill_holes_dice"]["without"]
    # tibia: removing the island (only "largest" does) and filling the cavity both help
    assert tibia == StructureSteps("largest", True)
    measured = decision.measured["knee"]["tibia"]
    assert measured["dice_with"] == 1.0 > measured["dice_without"] and measured["cases"] == 2


def test_a_tie_keeps_the_step_and_share_wins_over_largest() -> None:
    clean = np.zeros((6, 6, 6), np.uint8)
    clean[1:4, 1:4, 1:4] = 1
    decision = decide_steps({"knee": [(clean, clean)], "other": []}, {"knee": {"femur": 1}})
    assert decision.steps == {"knee": {"femur": StructureSteps("share", True)}}


def test_json_round_trip_and_errors(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # the 8-voxel piece is above 0.05 x the femur's 144: only "largest" removes it
    decision = decide_steps({"knee": [(two_islands(), two_islands(0))]}, {"knee": KNEE}, 0.05)
    decision.cases = {"knee": ["knee_001"]}
    path = decision.save(tmp_path)
    assert path == RunFolder(tmp_path).postprocessing_file
    document = json.loads(path.read_text(encoding="utf-8"))
    assert document["connectivity"] == 26 and document["share"] == 0.05
    assert document["domains"]["knee"]["femur"]["components"] == "largest"
    loaded = Postprocessing.load(tmp_path)
    assert loaded == decision
    path.write_text('{"format": 1, "domains": {"knee": {"femur": {"components": "most"}}}}')
    with pytest.raises(PostprocessingError, match=f"{path}: not a valid postprocessing file"):
        Postprocessing.load(tmp_path)
    path.unlink()
    with caplog.at_level(logging.WARNING):
        assert Postprocessing.load(tmp_path) is None
    assert "no postprocessing.json; label maps are not postprocessed" in caplog.text


# ------------------------------------------------------------ decided on a run, used by evaluate
ISLAND = (5, slice(4, 6), slice(7, 9))  # 4 femur voxels away from both reference cubes


class IslandPredictor:
    """Predicts the reference with a spurious femur island (and a femur hole in knee_001)."""

    def predict(self, image: sitk.Image, domain: str) -> SimpleNamespace:
        index = int(sitk.GetArrayViewFromImage(image)[0, 0, 0])
        label = reference()
        label[ISLAND] = 1
        if index == 1:
            label[2, 2, 2] = 0  # the centre of the 3x3x3 femur cube
        result = to_image(label)
        result.CopyInformation(image)
        return SimpleNamespace(label_map=result)


@pytest.fixture
def island_run(tmp_path: Path) -> Path:
    return write_run(tmp_path, write_study(tmp_path))


def test_decided_on_the_validation_subjects_then_applied_by_evaluate(island_run: Path) -> None:
    decision = decide_postprocessing(island_run, predictor=IslandPredictor(), progress=False)
    assert decision is not None and decision.cases == {"knee": ["knee_001"]}
    assert decision.steps["knee"]["femur"] == StructureSteps("largest", True)
    assert Postprocessing.load(island_run) == decision
    report = evaluate_run(island_run, predictor=IslandPredictor(), progress=False)
    out = island_run / "evaluation"
    metrics, raw = pd.read_csv(out / "metrics.csv"), pd.read_csv(out / RAW_METRICS_FILE)
    femur = metrics["structure"] == "femur"
    assert (metrics.loc[femur, "dice"] == 1.0).all()
    assert (raw.loc[femur, "dice"] < 1.0).all()
    assert raw.loc[femur, "hd95"].max() > metrics.loc[femur, "hd95"].max()
    saved = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "predictions/knee/knee_100.nii.gz")))
    np.testing.assert_array_equal(saved, reference())
    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["postprocessing"]["steps"]["knee"]["femur"] == "largest component, fill holes"
    text = report.read_text(encoding="utf-8")
    assert "## Postprocessing" in text and "| Dice without | Dice with |" in text
    assert "| femur | largest component, fill holes |" in text
    # --no-postprocess: scored as predicted, no second table
    evaluate_run(island_run, predictor=IslandPredictor(), progress=False, postprocess=False)
    again = pd.read_csv(out / "metrics.csv")
    assert (again.loc[femur, "dice"] < 1.0).all() and not (out / RAW_METRICS_FILE).exists()
    assert "## Postprocessing" not in report.read_text(encoding="utf-8")


def test_a_run_without_the_file_is_evaluated_as_before(
    island_run: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        report = evaluate_run(island_run, predictor=IslandPredictor(), progress=False)
    assert "no postprocessing.json" in caplog.text
    out = island_run / "evaluation"
    assert not (out / RAW_METRICS_FILE).exists()
    assert json.loads((out / "summary.json").read_text())["postprocessing"] is None
    assert (pd.read_csv(out / "metrics.csv").query("structure == 'femur'")["dice"] < 1).all()
    assert "## Postprocessing" not in report.read_text(encoding="utf-8")


def test_cli_decides_and_reports(island_run: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from jointseg import cli
    from jointseg.inference import predictor as module

    monkeypatch.setattr(module.Predictor, "from_run", lambda *a, **k: IslandPredictor())
    result = CliRunner().invoke(cli.app, ["postprocess", str(island_run), "--share", "0.5"])
    assert result.exit_code == 0, result.output
    assert "components above the share, fill holes" in result.output  # a tie with "largest"
    assert Postprocessing.load(island_run).share == 0.5
    bad = CliRunner().invoke(cli.app, ["postprocess", str(island_run), "--share", "2"])
    assert bad.exit_code == 2 and "--share must be in (0, 1]" in bad.output


def test_no_validation_subjects_decides_nothing(island_run: Path) -> None:
    info = json.loads((island_run / "run.json").read_text())
    info["validation_cases"] = {}
    (island_run / "run.json").write_text(json.dumps(info))
    assert decide_postprocessing(island_run, predictor=IslandPredictor()) is None
    assert not RunFolder(island_run).postprocessing_file.exists()


def test_scan_encodes_its_case() -> None:  # the fake predictors rely on it
    assert scan(101)[0, 0, 0] == 101


# -------------------------------------------------------------------------------- predict
@pytest.mark.trains
def test_predict_applies_the_runs_postprocessing(
    trained_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from jointseg.inference import predictor as module
    from jointseg.inference.predict import predict_path
    from tests.tiny_model import make_scan

    original = module.Predictor.predict_checked  # what predict_path calls per scan

    def with_island(self, image, domain="auto", return_probabilities=False, started=None):
        prediction = original(self, image, domain, return_probabilities, started)
        array = sitk.GetArrayFromImage(prediction.label_map)
        array[0:2, 0:3, 0:3] = 1  # a femur island in a corner, far from the bones
        labels = sitk.GetImageFromArray(array)
        labels.CopyInformation(prediction.label_map)
        prediction.label_map = labels
        return prediction

    monkeypatch.setattr(module.Predictor, "predict_checked", with_island)
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    scan_path = tmp_path / "k3.nii.gz"
    sitk.WriteImage(make_scan("knee", 3)[0], str(scan_path))

    def femur_components(out: Path) -> int:
        measured = json.loads((out / "k3_measurements.json").read_text(encoding="utf-8"))
        return measured["structures"]["femur"]["components"]

    predict_path(run, scan_path, tmp_path / "old", domain="knee", meshes=False)
    assert femur_components(tmp_path / "old") >= 2  # a run without the file: as predicted
    steps = {"knee": {"femur": StructureSteps("largest"), "tibia": StructureSteps("largest")}}
    Postprocessing(steps).save(run)
    out = tmp_path / "new"
    predict_path(run, scan_path, out, domain="knee")
    assert femur_components(out) == 1
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "k3_seg.nii.gz")))
    assert (seg[0:2, 0:3, 0:3] == 0).all()
    measured = json.loads((out / "k3_measurements.json").read_text(encoding="utf-8"))
    assert measured["postprocessing"]["femur"] == "largest component"
    record = json.loads((out / "k3_outputs.json").read_text(encoding="utf-8"))
    assert record["settings"]["postprocessing"]["knee"]["femur"] == "largest component"
    predict_path(run, scan_path, out, domain="knee", postprocess=False)  # other settings: redone
    assert femur_components(out) >= 2
