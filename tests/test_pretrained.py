"""The packaged model: packing a run, the word ``pretrained``, the recorded reference output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.config import load_config
from jointseg.inference.packaged import (
    PRETRAINED_ENV,
    PretrainedModelMissing,
    has_packaged_model,
    packaged_run_dir,
    resolve_run,
)
from jointseg.inference.predictor import Predictor
from jointseg.models.checkpoint import WEIGHTS_FILE
from jointseg.workflows.pretrained import (
    REFERENCE_RECORD,
    TRAINING_RECORD,
    check_reference_output,
    pack_run,
)
from tests.tiny_model import make_scan, train_run

TRAINING = {"config": "tiny", "command": "python -m pytest", "steps": 0, "data_seed": 0}


@pytest.fixture(scope="module")
def packed(tmp_path_factory) -> tuple[Path, Path]:
    """(a tiny untrained run folder, its packed copy): packing and reproduction do not depend
    on training, and the tests stay fast."""
    root = tmp_path_factory.mktemp("pack")
    run = train_run(root / "run", max_steps=0)
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "last.ckpt").write_bytes(b"left behind")
    dest = pack_run(run, root / "pkg" / "model", TRAINING, make_scan("knee", 3)[0])
    return run, dest


def test_pack_writes_the_minimal_layout_with_float16_weights(packed) -> None:
    run, dest = packed
    names = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert names == sorted([
        "config.yaml", "run.json", "models/main/model.json", "models/main/model.safetensors",
        TRAINING_RECORD, REFERENCE_RECORD, "reference_scan.nii.gz", "reference_labels.nii.gz",
    ])  # fmt: skip
    source = load_file(str(run / "models" / "main" / WEIGHTS_FILE))
    with safe_open(str(dest / "models" / "main" / WEIGHTS_FILE), "pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open has no iterator
            tensor = handle.get_tensor(key)
            if not source[key].is_floating_point():
                assert tensor.dtype == source[key].dtype
            elif key.endswith(("running_mean", "running_var")):
                assert torch.equal(tensor, source[key])
            else:
                assert tensor.dtype == torch.float16
                assert torch.equal(tensor, source[key].half())
    info = json.loads((dest / "run.json").read_text(encoding="utf-8"))
    assert info["data_dir"] is None and info["training_cases"] == {}
    record = json.loads((dest / TRAINING_RECORD).read_text(encoding="utf-8"))
    assert record["steps"] == 0 and record["data_seed"] == 0  # as given
    parameters = sum(t.numel() for t in source.values() if t.is_floating_point())
    assert record["packed"]["parameters"] == parameters
    full = (run / "models" / "main" / WEIGHTS_FILE).stat().st_size
    assert record["packed"]["weights_bytes"] < 0.6 * full  # about half: float16


def test_the_packed_model_reproduces_its_recorded_output(packed) -> None:
    _, dest = packed
    assert check_reference_output(dest) == []
    record = json.loads((dest / REFERENCE_RECORD).read_text(encoding="utf-8"))
    assert record["domain"] == "knee" and len(record["probabilities"]) >= 3
    for probe in record["probabilities"]:
        assert sum(probe["values"]) == pytest.approx(1.0, abs=2e-3)  # float16 probabilities


def test_changed_weights_fail_the_reference_check(packed, tmp_path: Path) -> None:
    import shutil

    _, dest = packed
    copy = tmp_path / "model"
    shutil.copytree(dest, copy)
    weights = copy / "models" / "main" / WEIGHTS_FILE
    state = load_file(str(weights))
    for key in state:
        if key.startswith("heads.0") and key.endswith("bias"):
            state[key] = state[key] + torch.tensor([0.0, 3.0, 0.0], dtype=state[key].dtype)
    save_file(state, str(weights))
    problems = check_reference_output(copy)
    assert any("label maps agree" in p for p in problems)
    assert any("probabilities at voxel" in p for p in problems)
    (copy / "stray.ckpt").write_bytes(b"x")
    assert "stray.ckpt: a pickle-based file in a packed model" in check_reference_output(copy)


def test_packed_and_original_predict_alike(packed) -> None:
    run, dest = packed
    scan = make_scan("shoulder", 11)[0]
    original = Predictor.from_run(run).predict(scan, "shoulder", True)
    packed_one = Predictor.from_run(dest).predict(scan, "shoulder", True)
    a = sitk.GetArrayFromImage(original.probabilities)
    b = sitk.GetArrayFromImage(packed_one.probabilities)
    assert np.max(np.abs(a - b)) < 0.02  # float16 weights
    agree = np.mean(
        sitk.GetArrayFromImage(original.label_map) == sitk.GetArrayFromImage(packed_one.label_map)
    )
    assert agree > 0.99


def test_packing_measures_a_missing_calibration_on_the_study(tmp_path: Path) -> None:
    from jointseg.runs import RunFolder
    from tests.tiny_model import write_study

    run = train_run(tmp_path / "run", max_steps=0)
    write_study(run, tmp_path / "study")
    dest = RunFolder(pack_run(run, tmp_path / "pkg" / "model", TRAINING, make_scan("knee", 3)[0]))
    stored = json.loads(dest.calibration_file.read_text(encoding="utf-8"))
    assert {k: len(v) for k, v in stored["in_domain"].items()} == {"knee": 2, "shoulder": 2}
    assert not RunFolder(run).calibration_file.exists()  # the packed model's, not the run's
    assert Predictor.from_run(dest.path).calibration.source == "file"


def test_predict_pretrained_uses_the_packed_folder(
    packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dest = packed
    monkeypatch.setenv(PRETRAINED_ENV, str(dest))
    monkeypatch.chdir(tmp_path)
    assert resolve_run("pretrained") == dest and has_packaged_model()
    assert Predictor.from_run("pretrained").run_dir == dest
    before = sorted((str(p), p.stat().st_mtime_ns) for p in dest.rglob("*"))
    scan = tmp_path / "knee.nii.gz"
    sitk.WriteImage(make_scan("knee", 5)[0], str(scan))
    out = tmp_path / "pred"
    args = ["predict", "pretrained", str(scan), "--out", str(out), "--no-meshes"]
    result = CliRunner().invoke(app, [*args, "--domain", "knee"])
    assert result.exit_code == 0, result.output
    label = sitk.ReadImage(str(out / "knee_seg.nii.gz"))
    assert label.GetSize() == (64, 64, 20)
    outputs = json.loads((out / "knee_outputs.json").read_text(encoding="utf-8"))
    assert outputs["settings"]["run"] == str(dest.resolve())
    # --domain auto runs the packed run's recognition; an untrained network's BN statistics
    # cannot tell its domains apart, so it refuses as any such run would
    auto = CliRunner().invoke(app, [*args, "--domain", "auto", "--overwrite"])
    assert auto.exit_code == 1, auto.output
    assert "refused: the scan fits none of this run's joints (nearest: " in auto.output
    refusal = json.loads((out / "knee_outputs.json").read_text(encoding="utf-8"))
    assert set(refusal["recognition"]["candidates"]) == {"knee", "shoulder"}
    assert sorted((str(p), p.stat().st_mtime_ns) for p in dest.rglob("*")) == before


def test_without_a_packed_model_predict_pretrained_says_how_to_make_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    scan = tmp_path / "knee.nii.gz"
    sitk.WriteImage(make_scan("knee", 5)[0], str(scan))
    with pytest.raises(PretrainedModelMissing, match="no pretrained model in this installation"):
        resolve_run("pretrained")
    result = CliRunner().invoke(app, ["predict", "pretrained", str(scan), "--out", "pred"])
    assert result.exit_code == 2
    assert "none has been trained and packed yet" in result.output
    assert "make pretrained" in result.output and "benchmarks/pretrained.py" in result.output
    assert not (tmp_path / "pred").exists()
    assert resolve_run(tmp_path / "runs" / "x") == tmp_path / "runs" / "x"  # other names as given


def test_a_run_folder_named_pretrained_in_the_working_directory_wins(
    packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    run, _ = packed
    monkeypatch.setenv(PRETRAINED_ENV, str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pretrained").symlink_to(run)
    assert resolve_run("pretrained") == Path("pretrained")


def test_the_shipped_model_reproduces_its_recorded_output(monkeypatch) -> None:
    """Active as soon as a model is packed into the package; skipped before that."""
    monkeypatch.delenv(PRETRAINED_ENV, raising=False)
    folder = packaged_run_dir()
    if not has_packaged_model(folder):
        pytest.skip(
            f"no pretrained model packed into the package yet ({folder}); `make pretrained` "
            "trains and packs it"
        )
    assert check_reference_output(folder) == []
    size = sum(p.stat().st_size for p in folder.rglob("*.safetensors"))
    assert size <= 20e6


def test_the_pretrained_config_trains_four_joints_on_mixed_data() -> None:
    config = load_config("pretrained")
    assert config.domain_names == ["ankle", "knee", "shoulder", "elbow"]
    assert all(d.randomized_folder for d in config.datasets)
    assert config.training.randomized_fraction == 0.5
    assert config.augmentation.histogram_shift_points > 0
    from jointseg.models import build_model

    net = build_model(config.model, [4, 5, 4, 4], True, pretrained=False)
    floats = sum(t.numel() for t in net.state_dict().values() if t.is_floating_point())
    assert 2 * floats <= 20e6  # float16 bytes


def test_pack_carries_the_recognition_files_the_run_has(packed, tmp_path: Path) -> None:
    import shutil

    from jointseg.runs import RunFolder

    run = shutil.copytree(packed[0], tmp_path / "run")
    text = '{"format_version": 1, "domains": {}}'  # no domain: auto decides by appearance
    (run / RunFolder.ANATOMY_REFERENCE).write_text(text, encoding="utf-8")
    dest = pack_run(run, tmp_path / "pkg" / "model", TRAINING, make_scan("knee", 3)[0])
    assert (dest / RunFolder.ANATOMY_REFERENCE).read_text(encoding="utf-8") == text
    assert not (dest / "postprocessing.json").exists()  # the run has none


# ------------------------------------------------------------- the word in every run command
def _study(root: Path) -> Path:
    """The packed run's two datasets, one labelled training and one test scan each."""
    from tests.test_adapt import write_domain
    from tests.tiny_model import DOMAINS

    for i, (domain, structures) in enumerate(DOMAINS.items()):
        scans = lambda seed, d=domain: make_scan(d, seed)  # noqa: E731
        write_domain(root, f"Dataset00{i + 1}_{domain}", structures, scans, [1], [2])
    return root


def _files(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_every_writing_command_needs_out_for_pretrained(
    packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dest = packed
    monkeypatch.setenv(PRETRAINED_ENV, str(dest))
    monkeypatch.chdir(tmp_path)
    before = _files(dest)
    study = _study(tmp_path / "study")
    for command, what in (
        (["evaluate", "pretrained", "--data", str(study)], "evaluation"),
        (["postprocess", "pretrained", "--data", str(study)], "postprocessing decision"),
        (["export", "pretrained"], "ONNX export"),
    ):
        result = CliRunner().invoke(app, command)
        assert result.exit_code == 2, (command, result.output)
        assert "the packaged model" in result.output and "is read-only" in result.output
        assert f"give --out FOLDER for the {what}" in result.output, result.output
    assert _files(dest) == before


def test_evaluate_export_postprocess_and_compare_take_pretrained(
    packed, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, dest = packed
    monkeypatch.setenv(PRETRAINED_ENV, str(dest))
    monkeypatch.chdir(tmp_path)
    before = _files(dest)
    study = _study(tmp_path / "study")
    runner = CliRunner()

    evaluation = tmp_path / "evaluation"
    args = ["evaluate", "pretrained", "--data", str(study), "--out", str(evaluation)]
    result = runner.invoke(app, [*args, "--device", "cpu"])
    assert result.exit_code == 0, result.output
    metrics = (evaluation / "metrics.csv").read_text(encoding="utf-8")
    assert "knee" in metrics and "shoulder" in metrics
    assert "# Evaluation: pretrained" in (evaluation / "report.md").read_text(encoding="utf-8")

    result = runner.invoke(app, ["compare", "pretrained", "pretrained", "--out", "cmp"])
    assert result.exit_code == 2, result.output
    assert "the packaged model holds no evaluation" in result.output
    assert "--out FOLDER` and compare FOLDER" in result.output
    result = runner.invoke(app, ["compare", str(evaluation), str(evaluation), "--out", "cmp"])
    assert result.exit_code == 0, result.output

    result = runner.invoke(app, ["export", "pretrained", "--out", str(tmp_path / "onnx")])
    assert result.exit_code == 0, result.output
    scan = tmp_path / "knee.nii.gz"
    sitk.WriteImage(make_scan("knee", 5)[0], str(scan))
    onnx_args = ["--backend", "onnxruntime", "--domain", "knee", "--no-meshes"]
    result = runner.invoke(app, ["predict", "pretrained", str(scan), "--out", "pred", *onnx_args])
    assert result.exit_code == 2 and "export pretrained --out DIR" in result.output
    onnx_args += ["--onnx", str(tmp_path / "onnx")]
    result = runner.invoke(app, ["predict", "pretrained", str(scan), "--out", "pred", *onnx_args])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "pred" / "knee_seg.nii.gz").is_file()

    # the packed run keeps no validation subjects to decide postprocessing on
    args = ["postprocess", "pretrained", "--data", str(study), "--out", "pp", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    assert "pretrained: the run has no validation subjects" in result.output
    assert _files(dest) == before
