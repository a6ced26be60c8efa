"""Dataset checks: each problem is found, named by file, and all are reported at once."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.data.checks import check_path
from jointseg.data.io import read_image, write_image
from tests.conftest import write_dataset


def _messages(report) -> list[str]:
    return [str(p) for p in report.errors]


def test_clean_dataset_passes(toy_dataset: Path) -> None:
    report = check_path(toy_dataset, progress=False)
    assert report.errors == [] and report.warnings == []
    assert report.cases == 3


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path, cases=6)
    img_dir, lab_dir = folder / "imagesTr", folder / "labelsTr"
    # 0: corrupt image file
    (img_dir / "toy_000_0000.nii.gz").write_bytes(b"garbage")
    # 1: label with another spacing
    label = read_image(lab_dir / "toy_001.nii.gz")
    label.SetSpacing((0.9, 0.8, 3.0))
    write_image(label, lab_dir / "toy_001.nii.gz")
    # 2: undeclared label value 7
    label = read_image(lab_dir / "toy_002.nii.gz")
    array = sitk.GetArrayFromImage(label)
    array[0, 0, 0] = 7
    bad = sitk.GetImageFromArray(array)
    bad.CopyInformation(label)
    write_image(bad, lab_dir / "toy_002.nii.gz")
    # 3: empty label map
    label = read_image(lab_dir / "toy_003.nii.gz")
    empty = sitk.GetImageFromArray(np.zeros_like(sitk.GetArrayFromImage(label)))
    empty.CopyInformation(label)
    write_image(empty, lab_dir / "toy_003.nii.gz")
    # 4: NaN intensities
    image = read_image(img_dir / "toy_004_0000.nii.gz")
    array = sitk.GetArrayFromImage(image)
    array[2, 3, 4] = np.nan
    nan_image = sitk.GetImageFromArray(array)
    nan_image.CopyInformation(image)
    write_image(nan_image, img_dir / "toy_004_0000.nii.gz")
    # 5: missing label (image without its pair), and an orphan label
    (lab_dir / "toy_005.nii.gz").rename(lab_dir / "toy_099.nii.gz")

    report = check_path(folder, progress=False)
    text = "\n".join(_messages(report))
    assert "toy_000_0000.nii.gz: cannot read" in text
    assert "toy_001.nii.gz: geometry differs from its image: spacing" in text
    assert "toy_002.nii.gz: label values [7] are not declared" in text
    assert "toy_003.nii.gz: empty label map" in text
    assert "toy_004_0000.nii.gz: 1 NaN or infinite intensities" in text
    assert "toy_005_0000.nii.gz: training image without a label map" in text
    assert "toy_099.nii.gz: label map without a matching image" in text
    assert len(report.errors) == 7


def test_declared_label_that_never_occurs_is_a_warning(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path)
    manifest = json.loads((folder / "dataset.json").read_text(encoding="utf-8"))
    manifest["labels"]["patella"] = 3
    (folder / "dataset.json").write_text(json.dumps(manifest))
    report = check_path(folder, progress=False)
    assert report.errors == []
    assert any("patella=3 never occurs" in str(w) for w in report.warnings)


def test_bad_manifest_is_an_error(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path)
    (folder / "dataset.json").write_text('{"labels": {"bone": 1}}')
    report = check_path(folder, progress=False)
    assert len(report.errors) == 1 and "dataset.json" in str(report.errors[0])


def test_cli_check_exit_codes(tmp_path: Path) -> None:
    write_dataset(tmp_path, name="Dataset001_A")
    folder_b = write_dataset(tmp_path, name="Dataset002_B")
    runner = CliRunner()
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "checked 2 dataset(s), 6 case(s): 0 error(s)" in result.output
    (folder_b / "labelsTr" / "toy_001.nii.gz").write_bytes(b"junk")
    result = runner.invoke(app, ["check", str(tmp_path)])
    assert result.exit_code == 1
    assert "Dataset002_B/labelsTr/toy_001.nii.gz" in result.output
