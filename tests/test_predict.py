"""End-to-end prediction with a tiny model trained here on an easy two-domain synthetic task
(tests/tiny_model.py; the session-wide `trained_run` fixture is in conftest.py)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from jointseg.models import build_model, save_model
from jointseg.runs import ModelEntry, save_run_info
from tests.tiny_model import (
    DICE_BOUND,
    DOMAINS,
    MODEL,
    OBLIQUE,
    PREPROCESSING,
    SPACING,
    dice,
    make_scan,
    noise_scan,
    same_geometry,
    side_by_side,
    write_dicom_series,
    write_study,
)

# Bounds on a trained model: CI runs these tests under a second CPU-kernel setting too.
pytestmark = pytest.mark.trains

# share of voxels whose label may differ between bfloat16 and float32 inference of one model
AGREEMENT_BOUND = 0.01

# ------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("domain", list(DOMAINS))
def test_predicts_known_labels_in_the_input_geometry(predictor, domain):
    for seed in (0, 1):
        image, truth = make_scan(domain, seed, direction=OBLIQUE)
        prediction = predictor.predict(image, domain="auto")
        assert prediction.domain == domain
        assert prediction.confidence > 0.9
        assert prediction.structures == DOMAINS[domain]
        assert same_geometry(prediction.label_map, image)
        got, want = sitk.GetArrayFromImage(prediction.label_map), sitk.GetArrayFromImage(truth)
        assert set(np.unique(got)) <= {0, *DOMAINS[domain].values()}
        for value in DOMAINS[domain].values():
            assert dice(got, want, value) > DICE_BOUND, (domain, seed, value)


def test_explicit_domain_tta_and_nearest_restoration(trained_run, monkeypatch):
    from jointseg.inference import predictor as module
    from jointseg.models import inferer

    image, truth = make_scan("shoulder", 2)
    want = sitk.GetArrayFromImage(truth)
    tta = module.Predictor.from_run(trained_run, tta=True, batch_size=7)
    assert tta.tta_flips() == [(), (2,), (3,), (2, 3)]
    prediction = tta.predict(image, domain="shoulder", return_probabilities=True)
    assert prediction.confidence is None and prediction.decision is None
    got = sitk.GetArrayFromImage(prediction.label_map)
    assert all(dice(got, want, v) > DICE_BOUND for v in (3, 7))
    probs = prediction.probabilities
    assert probs.GetNumberOfComponentsPerPixel() == 3 and same_geometry(probs, image)
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(probs).sum(-1), 1.0, atol=1e-2)
    # Too little memory for the probability maps: argmax slices, nearest-neighbour restoration.
    monkeypatch.setattr(inferer, "MEMORY_BUDGET", 0)
    plain = module.Predictor.from_run(trained_run)
    prediction = plain.predict(image, domain="shoulder")
    assert prediction.details["smooth_restore"] is False
    got = sitk.GetArrayFromImage(prediction.label_map)
    assert all(dice(got, want, v) > DICE_BOUND for v in (3, 7))


def test_recognition_refuses_noise(predictor):
    from jointseg.recognition.decision import DomainRecognitionError

    with pytest.raises(DomainRecognitionError, match="fits none") as refused:
        predictor.predict(noise_scan(), domain="auto")
    message = str(refused.value)
    assert "(nearest: " in message and "pass --domain NAME" in message and len(message) < 200
    assert {s.name for s in refused.value.decision.scores} == set(DOMAINS)
    decision = predictor.recognize(noise_scan(1), refuse=False)
    assert decision.domain is None and len(decision.scores) == 2


def test_single_domain_run_picks_it_and_refuses_noise(trained_run, tmp_path):
    import shutil

    from jointseg.inference.predictor import Predictor
    from jointseg.recognition.decision import DomainRecognitionError
    from jointseg.runs import load_run_info

    run = tmp_path / "knee_only"
    shutil.copytree(trained_run, run)
    info = load_run_info(run)
    info.domains = [d for d in info.domains if d.name == "knee"]
    save_run_info(run, info)
    predictor = Predictor.from_run(run)
    assert predictor.domains == ["knee"]
    image, truth = make_scan("knee", 4)
    prediction = predictor.predict(image)
    assert prediction.domain == "knee" and prediction.confidence == 1.0
    with pytest.raises(DomainRecognitionError, match="fits none"):
        predictor.predict(noise_scan(2))


def test_predict_folder_writes_every_output_and_reports_the_bad_scan(trained_run, tmp_path):
    import csv
    import json

    import trimesh

    from jointseg.inference.predict import PredictionError, predict_path

    scans = tmp_path / "scans"
    scans.mkdir()
    knee, knee_truth = make_scan("knee", 7, direction=OBLIQUE)
    sitk.WriteImage(knee, str(scans / "k7.nii.gz"))
    shoulder, _ = make_scan("shoulder", 7)
    sitk.WriteImage(shoulder, str(scans / "s7.nrrd"))
    write_dicom_series(make_scan("knee", 8)[0], scans / "dicom_k8")
    (scans / "broken.nii.gz").write_bytes(b"this is not a scan" * 20)
    (scans / "notes.txt").write_text("ignored")
    out = tmp_path / "out"
    with pytest.raises(PredictionError, match=r"1 of 4 scans failed:\n  - .*broken.nii.gz"):
        predict_path(trained_run, scans, out, threads=1)
    # The bad scan left nothing; the others are complete.
    assert not list(out.glob("broken*")) and not (out / "broken").exists()
    seg = sitk.ReadImage(str(out / "k7_seg.nii.gz"))
    assert same_geometry(seg, sitk.ReadImage(str(scans / "k7.nii.gz")))
    assert dice(sitk.GetArrayFromImage(seg), sitk.GetArrayFromImage(knee_truth), 1) > DICE_BOUND
    assert (out / "s7_seg.nrrd").is_file() and (out / "dicom_k8_seg.nii.gz").is_file()
    dicom_seg = sitk.ReadImage(str(out / "dicom_k8_seg.nii.gz"))
    assert dicom_seg.GetSize() == (64, 64, 20)
    for case, structures in (("k7", DOMAINS["knee"]), ("s7", DOMAINS["shoulder"])):
        table = json.loads((out / f"{case}_seg.json").read_text(encoding="utf-8"))
        assert {x["name"]: x["value"] for x in table["labels"][1:]} == structures
        assert (out / f"{case}_seg_itksnap.txt").is_file() and (out / f"{case}_seg.ctbl").is_file()
        assert (out / f"{case}_preview.png").read_bytes()[:4] == b"\x89PNG"
        measured = json.loads((out / f"{case}_measurements.json").read_text(encoding="utf-8"))
        assert set(measured["structures"]) == set(structures)
        scores = measured["domain_scores"]  # --domain auto: every candidate's distances
        assert set(scores) == set(DOMAINS) and measured["refusal_threshold"] > 0
        winner = min(scores, key=lambda name: scores[name]["distance"])
        assert winner == measured["domain"] and not scores[winner]["distance_is_lower_bound"]
        for name in structures:
            mesh = trimesh.load(out / case / f"{name}.stl")
            assert mesh.is_watertight
            assert (out / case / f"{name}.ply").is_file()
    labels = sitk.GetArrayFromImage(seg)
    femur = json.loads((out / "k7_measurements.json").read_text(encoding="utf-8"))["structures"][
        "femur"
    ]
    assert femur["volume_ml"] == pytest.approx((labels == 1).sum() * np.prod(SPACING) / 1000, 1e-3)
    femur_mesh = trimesh.load(out / "k7" / "femur.stl")
    assert femur_mesh.volume / 1000 == pytest.approx(femur["volume_ml"], rel=0.05)
    rows = list(csv.DictReader((out / "measurements.csv").open()))
    assert [(r["case"], r["structure"]) for r in rows] == [
        ("dicom_k8", "femur"), ("dicom_k8", "tibia"), ("k7", "femur"), ("k7", "tibia"),
        ("s7", "humerus"), ("s7", "scapula"),
    ]  # fmt: skip
    assert not [p for p in out.rglob(".*")]  # no temporary files left


def test_a_refused_scan_gets_one_line_and_its_evidence_in_the_outputs_record(
    trained_run, tmp_path, caplog
):
    import json
    import logging

    from typer.testing import CliRunner

    from jointseg.cli import app
    from jointseg.inference.predict import PredictionError, predict_path
    from jointseg.recognition.decision import DomainRecognitionError

    scans = tmp_path / "scans"
    scans.mkdir()
    sitk.WriteImage(noise_scan(4), str(scans / "noise.nii.gz"))
    out = tmp_path / "out"
    with (
        caplog.at_level(logging.DEBUG, logger="jointseg"),
        pytest.raises(DomainRecognitionError) as refused,
    ):
        predict_path(trained_run, scans / "noise.nii.gz", out, meshes=False)
    message = str(refused.value)
    assert message.startswith(f"{scans / 'noise.nii.gz'}: refused: the scan fits none")
    assert "\n" not in message and "pass --domain NAME" in message
    assert refused.value.decision.domain is None
    assert refused.value.decision.describe() in caplog.text  # the full evidence: DEBUG
    record = json.loads((out / "noise_outputs.json").read_text(encoding="utf-8"))
    assert record["domain"] is None and record["outputs"] == []
    assert record["refused"] == message.split(": ", 1)[1]
    assert record["recognition"] == refused.value.decision.to_dict()
    assert list(record["recognition"]["candidates"]) == [
        s.name for s in refused.value.decision.scores
    ]
    assert set(record["recognition"]["candidates"]) == set(DOMAINS)
    # A refusal's record is no complete case: a rerun tries the scan again, and so does a folder.
    knee, _ = make_scan("knee", 5)
    sitk.WriteImage(knee, str(scans / "k5.nii.gz"))
    with pytest.raises(PredictionError, match=r"1 of 2 scans failed:\n  - .*noise.nii.gz: refused"):
        predict_path(trained_run, scans, out, meshes=False)
    assert json.loads((out / "noise_outputs.json").read_text(encoding="utf-8"))["refused"]
    assert json.loads((out / "k5_outputs.json").read_text(encoding="utf-8"))["domain"] == "knee"
    # The CLI shows the one line (and where the evidence is), not every candidate's scores.
    result = CliRunner().invoke(
        app, ["predict", str(trained_run), str(scans / "noise.nii.gz"), "--out", str(out)]
    )
    assert result.exit_code == 1
    assert f"error: {message}" in result.output
    assert "noise_outputs.json" in result.output and "confidence" not in result.output


def test_dicom_folder_input_and_cli(trained_run, tmp_path):
    from typer.testing import CliRunner

    from jointseg.cli import app
    from jointseg.data.io import read_image

    folder = tmp_path / "series"
    write_dicom_series(make_scan("shoulder", 9, direction=OBLIQUE)[0], folder)
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["predict", str(trained_run), str(folder), "--out", str(out), "--no-meshes"]
    )
    assert result.exit_code == 0, result.output
    assert "[predict] series: shoulder (confidence " in result.output  # the CLI shows the log
    assert result.output.count("[predict] series:") == 1  # once
    seg = sitk.ReadImage(str(out / "series_seg.nii.gz"))
    source = read_image(folder)
    assert seg.GetSize() == source.GetSize()
    np.testing.assert_allclose(seg.GetSpacing(), source.GetSpacing(), atol=1e-6)
    np.testing.assert_allclose(seg.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(seg.GetDirection(), source.GetDirection(), atol=1e-6)
    assert set(np.unique(sitk.GetArrayFromImage(seg))) == {0, 3, 7}
    assert not (out / "series").exists()  # --no-meshes
    bad = CliRunner().invoke(
        app, ["predict", str(trained_run), str(folder), "--out", str(out), "--domain", "hip"]
    )
    assert bad.exit_code == 2 and "unknown domain 'hip'" in bad.output
    bad = CliRunner().invoke(
        app, ["predict", str(trained_run), str(folder), "--out", str(out), "--precision", "int8"]
    )
    assert bad.exit_code == 2 and "unknown precision 'int8'" in bad.output


def test_bad_inputs_fail_clearly_without_outputs(trained_run, tmp_path):
    import shutil

    from jointseg.data.io import ScanReadError
    from jointseg.inference.predict import predict_path
    from jointseg.inference.predictor import InputError
    from jointseg.runs import RunError

    out = tmp_path / "out"
    flat = sitk.GetImageFromArray(np.zeros((64, 64), np.float32))
    sitk.WriteImage(flat, str(tmp_path / "flat.nii.gz"))
    with pytest.raises(InputError, match="2D"):
        predict_path(trained_run, tmp_path / "flat.nii.gz", out)
    (tmp_path / "corrupt.nii.gz").write_bytes(b"\x00" * 100)
    with pytest.raises(ScanReadError, match="corrupt.nii.gz"):
        predict_path(trained_run, tmp_path / "corrupt.nii.gz", out)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="empty folder"):
        predict_path(trained_run, tmp_path / "empty", out)
    with pytest.raises(FileNotFoundError):
        predict_path(trained_run, tmp_path / "missing.nii.gz", out)
    (tmp_path / "scan.txt").write_text("x")
    with pytest.raises(ValueError, match="not a supported scan"):
        predict_path(trained_run, tmp_path / "scan.txt", out)
    image, _ = make_scan("knee", 3)
    sitk.WriteImage(image, str(tmp_path / "ok.mha"))
    with pytest.raises(RunError, match="unknown domain 'hip'"):
        predict_path(trained_run, tmp_path / "ok.mha", out, domain="hip")
    no_model = tmp_path / "no_model"
    shutil.copytree(trained_run, no_model)
    shutil.rmtree(no_model / "models")
    with pytest.raises(RunError, match="missing model.json, model.safetensors"):
        predict_path(no_model, tmp_path / "ok.mha", out)
    with pytest.raises(RunError, match="not a run folder"):
        predict_path(tmp_path, tmp_path / "ok.mha", out)
    assert not out.exists() or not any(out.iterdir())


def test_union_head_maps_to_the_domains_labels(trained_run, tmp_path):
    import shutil

    from jointseg.inference.predictor import Predictor
    from jointseg.recognition.calibration import Calibration
    from jointseg.recognition.decision import break_ties, decide
    from jointseg.runs import load_run_info

    run = tmp_path / "shared"
    shutil.copytree(trained_run, run, ignore=shutil.ignore_patterns("models"))
    info = load_run_info(run)
    space = info.label_space()
    torch.manual_seed(0)
    net = build_model(MODEL, [space.num_classes], domain_specific_bn=False)
    save_model(net.eval(), run / "models" / "shared")
    info.scheme = "shared"
    info.models = [
        ModelEntry(name="shared", path="models/shared", domains=list(DOMAINS), label_space="union")
    ]
    save_run_info(run, info)
    predictor = Predictor.from_run(run)
    assert predictor.routes["shoulder"].select == (0, 3, 4)
    prediction = predictor.predict(make_scan("shoulder", 1)[0], domain="shoulder")
    assert set(np.unique(sitk.GetArrayFromImage(prediction.label_map))) <= {0, 3, 7}
    # distinct distances (each domain's own reference) are not overridden by the union head's
    # tie-break, which is for the equal distances of shared BN statistics
    volume = predictor.recognition_volume(make_scan("shoulder", 1)[0])
    for knee, shoulder, expected in ((1.0, 2.0, "knee"), (2.0, 1.0, "shoulder")):
        decision = decide({"knee": knee, "shoulder": shoulder}, Calibration(threshold=10.0))
        classes = predictor.label_space.num_classes
        tie = break_ties(decision, predictor.routes, volume, classes, predictor.device)
        assert tie.domain == expected


@pytest.fixture
def read_only_run(trained_run, tmp_path):
    """A copy of the run whose study is gone, every file and folder read-only (restored after
    the test, so that the temporary folder can be removed)."""
    import os
    import shutil
    import stat

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    write_study(run, tmp_path / "study")
    shutil.rmtree(tmp_path / "study")
    paths = [run, *run.rglob("*")]
    for path in reversed(paths):  # files before their folders
        mode = path.stat().st_mode
        os.chmod(path, mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))
    yield run
    for path in paths:
        os.chmod(path, path.stat().st_mode | stat.S_IWUSR)


def _snapshot(folder) -> list:
    return sorted((str(p), p.stat().st_mode, p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_predict_writes_nothing_into_a_read_only_run_without_its_study(read_only_run, tmp_path):
    from typer.testing import CliRunner

    from jointseg.cli import app
    from jointseg.inference.predictor import Predictor
    from jointseg.runs import RunFolder

    before = _snapshot(read_only_run)
    assert not RunFolder(read_only_run).calibration_file.exists()
    scan = tmp_path / "knee.nii.gz"
    sitk.WriteImage(make_scan("knee", 22)[0], str(scan))
    out = tmp_path / "pred"
    args = ["predict", str(read_only_run), str(scan), "--out", str(out), "--no-meshes"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (out / "knee_seg.nii.gz").is_file()
    assert "no recognition calibration" in result.output
    assert f"jointseg calibrate {read_only_run} --data STUDY" in result.output
    predictor = Predictor.from_run(read_only_run)
    assert predictor.calibration.source == "default"
    assert predictor.predict(make_scan("shoulder", 22)[0]).domain == "shoulder"
    assert _snapshot(read_only_run) == before


def test_calibrate_measures_a_run_on_its_study(trained_run, tmp_path):
    import json
    import shutil

    from typer.testing import CliRunner

    from jointseg.cli import app
    from jointseg.inference.predictor import Predictor
    from jointseg.recognition.calibration import CALIBRATION_FACTOR
    from jointseg.runs import RunFolder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    write_study(run, tmp_path / "study")
    result = CliRunner().invoke(app, ["calibrate", str(run)])
    assert result.exit_code == 0, result.output
    path = RunFolder(run).calibration_file
    assert f"wrote {path}" in result.output
    stored = json.loads(path.read_text(encoding="utf-8"))
    assert {k: len(v) for k, v in stored["in_domain"].items()} == {"knee": 2, "shoulder": 2}
    largest = max(v for vs in stored["in_domain"].values() for v in vs)
    assert stored["threshold"] == pytest.approx(max(CALIBRATION_FACTOR * largest, 0.05))
    predictor = Predictor.from_run(run)
    assert predictor.calibration.source == "file"
    assert predictor.predict(make_scan("knee", 22)[0]).domain == "knee"
    # the study moved: --data names it; without it the command says what to give
    path.unlink()
    moved = shutil.move(tmp_path / "study", tmp_path / "moved")
    result = CliRunner().invoke(app, ["calibrate", str(run)])
    assert result.exit_code == 2 and "--data" in result.output and not path.exists()
    result = CliRunner().invoke(app, ["calibrate", str(run), "--data", str(moved)])
    assert result.exit_code == 0, result.output
    assert json.loads(path.read_text(encoding="utf-8"))["in_domain"] == stored["in_domain"]


def test_fitted_references_recognize_every_domain(trained_run, tmp_path):
    import shutil

    from jointseg.inference.predictor import Predictor
    from jointseg.recognition.fitting import fit_calibration, fit_recognition
    from jointseg.runs import RunFolder

    run = tmp_path / "run"
    folder = RunFolder(run)
    shutil.copytree(trained_run, run)
    plain = Predictor.from_run(run)
    volumes = {
        name: (
            [plain.recognition_volume(make_scan(name, seed)[0]) for seed in (30, 31, 32, 33)],
            [plain.recognition_volume(make_scan(name, seed)[0]) for seed in (34, 35)],
        )
        for name in DOMAINS
    }
    paths = {c.name: c.path for c in plain.candidates()}
    calibration = fit_recognition(run, paths, volumes)
    assert calibration is not None and folder.domain_reference_file.is_file()
    assert folder.calibration_file.is_file()
    assert {k: len(v) for k, v in calibration.in_domain.items()} == {"knee": 2, "shoulder": 2}
    predictor = Predictor.from_run(run)
    assert all(c.reference is not None for c in predictor.candidates())
    for name in DOMAINS:
        for seed in (36, 37):
            decision = predictor.recognize(make_scan(name, seed)[0])
            assert decision.domain == name and decision.confidence > 0.9
    assert predictor.recognize(noise_scan(3), refuse=False).domain is None
    # one training scan is not enough for a reference: nothing is written
    shutil.rmtree(run)
    shutil.copytree(trained_run, run)
    assert fit_recognition(run, paths, {n: (v[0][:1], v[1]) for n, v in volumes.items()}) is None
    assert not folder.domain_reference_file.exists()
    # ... so training calibrates on the BN running statistics instead
    calibration = fit_calibration(run, paths, {n: v[1] for n, v in volumes.items()})
    assert {k: len(v) for k, v in calibration.in_domain.items()} == {"knee": 2, "shoulder": 2}
    predictor = Predictor.from_run(run)
    assert predictor.calibration.source == "file" and not predictor.references
    assert predictor.calibration.threshold == pytest.approx(calibration.threshold)
    for name in DOMAINS:
        assert predictor.recognize(make_scan(name, 36)[0]).domain == name


def test_references_of_an_older_format_are_ignored_with_their_calibration(trained_run, tmp_path):
    import json
    import shutil

    from jointseg.inference.predictor import Predictor
    from jointseg.runs import RunFolder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    old = {
        "format_version": 1,
        "domains": {d: {"scans": 4, "mean": [0.0], "std": [1.0]} for d in DOMAINS},
    }
    RunFolder(run).domain_reference_file.write_text(json.dumps(old), encoding="utf-8")
    RunFolder(run).calibration_file.write_text(json.dumps({"threshold": 1e6}), encoding="utf-8")
    with pytest.warns(UserWarning, match="format 1"):
        predictor = Predictor.from_run(run)
    assert predictor.references == {} and predictor.calibration.source == "default"
    assert all(c.reference is None for c in predictor.candidates())
    assert predictor.recognize(noise_scan(3), refuse=False).domain is None


def test_full_view_grid_covers_scans_wider_than_the_patch(predictor):
    from jointseg.data.preprocess import slice_stack_shape

    wide = sitk.Image([96, 70, 20], sitk.sitkFloat32)
    wide.SetSpacing(SPACING)
    shape = slice_stack_shape(wide.GetSize(), wide.GetSpacing(), wide.GetDirection(), PREPROCESSING)
    assert shape == (20, 70, 96) and predictor.inferer.grid(*shape[1:]) == (96, 96)
    finer = PREPROCESSING.model_copy(update={"target_spacing": 0.5})
    shape = slice_stack_shape(wide.GetSize(), wide.GetSpacing(), wide.GetDirection(), finer)
    assert shape == (20, 154, 192) and predictor.inferer.grid(*shape[1:]) == (160, 192)
    # A scan twice the patch's width (two scans side by side): every bone is found.
    (left, left_truth), (right, right_truth) = make_scan("knee", 11), make_scan("knee", 12)
    image = side_by_side(left, right)
    truth = side_by_side(left_truth, right_truth)
    prediction = predictor.predict(image, domain="knee")
    assert prediction.details["grid"] == [64, 128] and not prediction.details["sliding_window"]
    assert same_geometry(prediction.label_map, image)
    got, want = sitk.GetArrayFromImage(prediction.label_map), sitk.GetArrayFromImage(truth)
    assert all(dice(got, want, v) > DICE_BOUND for v in (1, 2))


THIRD_BOUND = 0.7  # measured: smallest third 0.835 (avx2, 2 threads), 0.894 (SSE4.1, 1 thread)


def test_sliding_window_beyond_the_maximum_view(trained_run, tmp_path):
    import shutil

    from jointseg.inference.predictor import Predictor
    from jointseg.runs import RunFolder

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    folder = RunFolder(run)
    config = folder.config()
    config.inference.max_in_plane = 64
    folder.save_config(config)
    predictor = Predictor.from_run(run)
    # three scans side by side, 64 x 192 voxels: windows of 64 x 64
    scans = [make_scan("knee", seed) for seed in (11, 12, 13)]
    image = side_by_side(side_by_side(scans[0][0], scans[1][0]), scans[2][0])
    truth = side_by_side(side_by_side(scans[0][1], scans[1][1]), scans[2][1])
    prediction = predictor.predict(image, domain="knee")
    assert prediction.details["sliding_window"] and prediction.details["grid"] == [64, 192]
    assert same_geometry(prediction.label_map, image)
    got, want = sitk.GetArrayFromImage(prediction.label_map), sitk.GetArrayFromImage(truth)
    assert all(dice(got, want, v) > DICE_BOUND for v in (1, 2))
    # every third of the view is segmented; a third's bones are cut by window borders, so its
    # bound is lower than the whole view's
    thirds = [
        dice(got[..., 64 * k : 64 * (k + 1)], want[..., 64 * k : 64 * (k + 1)], v)
        for k in range(3)
        for v in (1, 2)
    ]
    assert min(thirds) > THIRD_BOUND, thirds


def test_write_case_again_replaces_the_cases_outputs(tmp_path):
    from jointseg.inference.predictor import Prediction
    from jointseg.inference.writer import write_case

    image, truth = make_scan("knee", 13)
    both = Prediction(label_map=truth, domain="knee", structures=DOMAINS["knee"])
    written = write_case(image, both, tmp_path, "k13")
    assert written[0] == tmp_path / "k13_seg.nii.gz"
    assert sorted(p.name for p in (tmp_path / "k13").iterdir()) == [
        "femur.ply", "femur.stl", "tibia.ply", "tibia.stl",
    ]  # fmt: skip
    femur_only = sitk.Threshold(truth, 0, 1, 0)  # the tibia (2) is gone
    write_case(image, replace(both, label_map=femur_only), tmp_path, "k13")
    assert sorted(p.name for p in (tmp_path / "k13").iterdir()) == ["femur.ply", "femur.stl"]
    rows = (tmp_path / "measurements.csv").read_text(encoding="utf-8").splitlines()
    assert len(rows) == 3 and rows[2].startswith("k13,knee,tibia,2,0.0,0.0")


def test_context_slices_run_predicts_in_the_input_geometry(tmp_path):
    """A run trained with 3 context slices: recognition, TTA and the label map take them."""
    from jointseg.inference.predictor import Predictor
    from tests.tiny_model import train_run

    run = train_run(tmp_path / "run", context_slices=3)
    predictor = Predictor.from_run(run, tta=True, batch_size=5)
    assert predictor.networks["main"].cfg.context_slices == 3
    for domain in DOMAINS:
        image, truth = make_scan(domain, 3, direction=OBLIQUE)
        prediction = predictor.predict(image, domain="auto")
        assert prediction.domain == domain
        assert same_geometry(prediction.label_map, image)
        got, want = sitk.GetArrayFromImage(prediction.label_map), sitk.GetArrayFromImage(truth)
        for value in DOMAINS[domain].values():
            assert dice(got, want, value) > DICE_BOUND, (domain, value)


def test_bfloat16_and_float32_label_maps_of_the_same_weights_agree(trained_run, predictor):
    from jointseg.inference.predictor import Predictor

    bf16 = Predictor.from_run(trained_run, batch_size=8, precision="bf16")
    f32 = Predictor.from_run(trained_run, batch_size=8, precision="32")
    assert (bf16.precision, f32.precision) == ("bf16", "32")
    for domain in DOMAINS:
        for seed in (0, 1):
            image, truth = make_scan(domain, seed, direction=OBLIQUE)
            a = sitk.GetArrayFromImage(bf16.predict(image, domain=domain).label_map)
            b = sitk.GetArrayFromImage(f32.predict(image, domain=domain).label_map)
            want = sitk.GetArrayFromImage(truth)
            # voxels that change label: only at boundaries, where two classes tie within
            # bfloat16's 8 bits of mantissa
            assert (a != b).mean() < AGREEMENT_BOUND, (domain, seed, (a != b).mean())
            for value in DOMAINS[domain].values():
                assert abs(dice(a, want, value) - dice(b, want, value)) < 0.01, (domain, value)
