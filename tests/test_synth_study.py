"""``jointseg synth`` end to end on small volumes: layout, labels, geometry, determinism,
``jointseg check``, and that a global intensity threshold cannot segment the bones."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.data.io import geometry_mismatches
from jointseg.data.manifest import list_cases, load_manifest
from jointseg.synth.generate import synthesize_study
from jointseg.synth.quality import oracle_threshold_dice

SCALE = 0.35  # about 80 x 80 pixels and 10 slices per volume
JOINTS = ["ankle", "knee", "shoulder"]
EXPECTED_LABELS = {
    "Dataset001_Ankle": {"background": 0, "calcaneus": 1, "talus": 2, "tibia": 3},
    "Dataset002_Knee": {"background": 0, "femur": 1, "fibula": 2, "patella": 3, "tibia": 4},
    "Dataset003_Shoulder": {"background": 0, "humerus": 1, "scapula": 2},
}
#: Bone volume in the field of view divided by the cube of the child's scale (adult-equivalent
#: mL): bones seen whole have tight bounds, bones cut by the field of view loose ones.
ADULT_EQUIVALENT_ML = {
    "calcaneus": (25, 75),
    "talus": (8, 30),
    "patella": (8, 35),
    "tibia": (8, 220),
    "femur": (20, 260),
    "fibula": (0.5, 40),
    "humerus": (10, 200),
    "scapula": (4, 90),
}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "study"
    returned = synthesize_study(out, 2, 1, JOINTS, 3, 1, True, scale=SCALE, progress=False)
    assert returned == out
    return out


def _cases(study: Path):
    for folder in sorted(study.glob("Dataset*")):
        for split in ("train", "test"):
            for case in list_cases(folder, split):
                yield folder, case


def test_layout_and_manifests(study: Path) -> None:
    folders = sorted(p.name for p in study.glob("Dataset*"))
    assert folders == sorted(EXPECTED_LABELS)
    for name, labels in EXPECTED_LABELS.items():
        manifest = load_manifest(study / name)
        assert manifest.labels == labels
        assert manifest.channel_names == {"0": "MR"}
        assert manifest.numTraining == 2 and manifest.file_ending == ".nii.gz"
        assert manifest.model_extra["numTest"] == 1 and manifest.name
        assert len(list_cases(study / name, "train")) == 2
        assert len(list_cases(study / name, "test")) == 1
        assert all(c.label is not None for c in list_cases(study / name, "test"))
    record = json.loads((study / "synth.json").read_text(encoding="utf-8"))
    assert record["seed"] == 3 and record["generator_version"] >= 1
    assert len(record["cases"]) == 9
    knee = next(c for c in record["cases"] if c["case_id"] == "knee_001")
    assert 4 <= knee["age"] < 18 and knee["side"] in ("left", "right")
    assert {"knee_angle_r"} == set(knee["angles"]) and knee["tr"] > 1000
    for joint in JOINTS:
        preview = study / f"preview_{joint}.png"
        assert preview.stat().st_size < 300_000
        assert preview.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_every_bone_in_every_case_with_a_plausible_volume(study: Path) -> None:
    record = json.loads((study / "synth.json").read_text(encoding="utf-8"))
    scales = {c["case_id"]: c["scale"] for c in record["cases"]}
    for folder, case in _cases(study):
        structures = load_manifest(folder).structures
        label = sitk.ReadImage(str(case.label))
        array = sitk.GetArrayFromImage(label)
        assert set(np.unique(array)) <= {0, *structures.values()}
        voxel_ml = float(np.prod(label.GetSpacing())) / 1000.0
        for name, value in structures.items():
            volume = (array == value).sum() * voxel_ml / scales[case.case_id] ** 3
            low, high = ADULT_EQUIVALENT_ML[name]
            assert low <= volume <= high, f"{case.case_id} {name}: {volume:.1f} mL"


def test_geometry_matches_between_image_label_and_manifest(study: Path) -> None:
    for _, case in _cases(study):
        image = sitk.ReadImage(str(case.image))
        label = sitk.ReadImage(str(case.label))
        assert geometry_mismatches(image, label) == []
        assert image.GetPixelID() == sitk.sitkInt16 and label.GetPixelID() == sitk.sitkUInt8
        spacing = np.asarray(image.GetSpacing())
        assert np.argmax(spacing) == 2 and spacing[2] > 1.5 * spacing[0]
        direction = np.asarray(image.GetDirection()).reshape(3, 3)
        assert np.allclose(direction @ direction.T, np.eye(3), atol=1e-6)
        assert sitk.GetArrayFromImage(image).max() > 100


def test_global_threshold_cannot_segment_the_bones(study: Path) -> None:
    for folder, case in _cases(study):
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(case.image)))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
        dice = oracle_threshold_dice(image, label)
        assert dice < 0.6, f"{folder.name}/{case.case_id}: oracle threshold Dice {dice:.2f}"


@pytest.mark.skipif(
    importlib.util.find_spec("jointseg.data.checks") is None,
    reason="jointseg.data.checks (jointseg check) is not available",
)
def test_jointseg_check_passes(study: Path) -> None:
    from jointseg.data.checks import check_path

    report = check_path(study, progress=False)
    assert report.errors == [] and report.cases == 9


def test_same_seed_same_bytes_whatever_the_jobs(tmp_path: Path) -> None:
    one = synthesize_study(
        tmp_path / "one", 2, 0, ["knee"], 5, 1, False, scale=0.25, progress=False
    )
    two = synthesize_study(
        tmp_path / "two", 2, 1, ["knee"], 5, 2, False, scale=0.25, progress=False
    )
    files = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    assert len(files) == 4
    for rel in files:  # the held-out subject of "two" changes nothing else
        assert (one / rel).read_bytes() == (two / rel).read_bytes(), rel
    other = synthesize_study(
        tmp_path / "other", 2, 0, ["knee"], 6, 1, False, scale=0.25, progress=False
    )
    rel = files[0]
    assert (one / rel).read_bytes() != (other / rel).read_bytes()


def test_rerun_with_fewer_subjects_removes_stale_cases(tmp_path: Path) -> None:
    out = tmp_path / "study"
    synthesize_study(out, 2, 1, ["knee"], 0, 1, False, scale=0.2, progress=False)
    synthesize_study(out, 1, 0, ["knee"], 0, 1, False, scale=0.2, progress=False)
    names = sorted(p.name for p in out.rglob("*.nii.gz"))
    assert names == ["knee_000.nii.gz", "knee_000_0000.nii.gz"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--joints", "ankle,wrist"], "unknown joint 'wrist'"),
        (["--subjects", "0"], "--subjects must be at least 1"),
        (["--jobs", "0"], "--jobs must be at least 1"),
        (["--test-subjects", "-1"], "--test-subjects must be 0 or more"),
    ],
)
def test_bad_arguments_are_named(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), *args])
    assert result.exit_code == 2
    assert message in result.output
    assert not (tmp_path / "x").exists()


def test_output_path_that_is_a_file_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_text("not a folder")
    result = CliRunner().invoke(app, ["synth", "--out", str(target), "--subjects", "1"])
    assert result.exit_code == 2
    assert "exists and is not a folder" in result.output


def test_typical_variation_is_the_same_subjects_at_their_protocol_view(tmp_path: Path) -> None:
    from jointseg.synth.generate import subject_params
    from jointseg.synth.variants import typical

    wide = subject_params("knee", "train", 3, 7)
    same = subject_params("knee", "train", 3, 7, "typical")
    assert same == typical(wide) and same.fov_factor == 1.0 and same.bone_age_offset == 0.0
    assert (same.age, same.angles, same.snr) == (wide.age, wide.angles, wide.snr)
    with pytest.raises(ValueError, match="unknown variation 'narrow'; choose from wide, typical"):
        subject_params("knee", "train", 3, 7, "narrow")
    out = synthesize_study(tmp_path / "s", 1, 0, ["knee"], 7, 1, False, scale=0.2,
                           progress=False, variation="typical")  # fmt: skip
    record = json.loads((out / "synth.json").read_text())
    assert record["variation"] == "typical"
    assert record["cases"][0]["fov_factor"] == 1.0
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "x"), "--variation", "odd"])
    assert result.exit_code == 2 and "unknown variation 'odd'" in result.output
    assert not (tmp_path / "x").exists()


def test_a_study_is_reused_only_when_it_is_the_same_study(tmp_path: Path) -> None:
    from jointseg.synth.generate import ensure_study, same_study

    out = tmp_path / "s"
    args = (out, 1, 0, ["knee"], 4, 1, False)
    assert ensure_study(*args, scale=0.2, progress=False) is True
    stamp = (out / "synth.json").stat().st_mtime_ns
    assert ensure_study(*args, scale=0.2, progress=False) is False  # the same study: kept
    assert (out / "synth.json").stat().st_mtime_ns == stamp
    assert same_study(out, 1, 0, ["knee"], 4, scale=0.2)
    assert not same_study(out, 1, 0, ["knee"], 5, scale=0.2)  # another seed
    assert not same_study(out, 1, 0, ["knee"], 4, scale=0.2, variation="typical")
    record = json.loads((out / "synth.json").read_text())
    (out / "synth.json").write_text(json.dumps({**record, "generator_version": 2}))
    assert not same_study(out, 1, 0, ["knee"], 4, scale=0.2)  # an older generator's study
    assert ensure_study(*args, scale=0.2, progress=False) is True
