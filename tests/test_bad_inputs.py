"""Unreadable scans: every command names each bad file and its problem, and exits with status 1.

Each kind of damage is made from a valid file: a copy cut short, an empty file, a gzip stream with
a wrong checksum, a NIfTI header promising more voxels than the file holds, and DICOM series with
a missing or a duplicated slice.
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import SimpleITK as sitk
import yaml
from typer.testing import CliRunner

import jointseg
from jointseg.cli import app
from jointseg.data.io import ScanReadError, read_image, verify_scan
from tests.conftest import make_volume_pair, write_dataset
from tests.test_training import tiny_config
from tests.tiny_model import DOMAINS, train_run, write_dicom_series


# ------------------------------------------------------------------------------- damages
def cut_short(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * 0.6)])


def empty(path: Path) -> None:
    path.write_bytes(b"")


def bad_checksum(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-8] ^= 0xFF  # the gzip trailer's CRC-32
    path.write_bytes(bytes(data))


def more_slices_in_header(path: Path) -> None:
    """Double dim[3] of the NIfTI-1 header: the header promises twice the voxels present."""
    with gzip.open(path, "rb") as stream:
        data = bytearray(stream.read())
    (slices,) = struct.unpack_from("<h", data, 46)
    struct.pack_into("<h", data, 46, 2 * slices)
    path.write_bytes(gzip.compress(bytes(data)))


DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "cut short": (cut_short, "the file is cut short"),
    "empty": (empty, "an empty file (0 bytes)"),
    "bad checksum": (bad_checksum, "CRC check failed"),
    "header": (more_slices_in_header, "the header promises 32x32x16 voxels"),
}
SECOND = "an empty file (0 bytes)"  # the other problem every damaged study has


def test_each_damage_is_named_by_the_reader(tmp_path: Path) -> None:
    image, _ = make_volume_pair()
    for name, (damage, message) in DAMAGES.items():
        path = tmp_path / f"{name.replace(' ', '_')}.nii.gz"
        sitk.WriteImage(image, str(path), useCompression=True)
        read_image(path)
        damage(path)
        with pytest.raises(ScanReadError, match=re.escape(message)) as caught:
            read_image(path)
        assert str(caught.value).startswith(f"{path}: ")


def test_uncompressed_nifti_cut_short_or_with_a_wrong_header(tmp_path: Path) -> None:
    image, _ = make_volume_pair()
    path = tmp_path / "scan.nii"
    sitk.WriteImage(image, str(path))
    whole = path.read_bytes()
    path.write_bytes(whole[: int(len(whole) * 0.6)])
    with pytest.raises(ScanReadError, match=r"scan.nii: the header promises 32x32x8 voxels"):
        read_image(path)
    edited = bytearray(whole)
    struct.pack_into("<h", edited, 44, 64)  # dim[2]: 32 rows become 64
    path.write_bytes(bytes(edited))
    with pytest.raises(ScanReadError, match=r"promises 32x64x8 voxels .* holds only 32768 bytes"):
        read_image(path)


def dicom_series(folder: Path) -> Path:
    image, _ = make_volume_pair()
    write_dicom_series(image, folder)
    return folder


def test_dicom_series_with_a_missing_or_duplicated_slice(tmp_path: Path) -> None:
    whole = dicom_series(tmp_path / "whole")
    assert read_image(whole).GetSize() == (32, 32, 8)
    gap = tmp_path / "gap"
    shutil.copytree(whole, gap)
    (gap / "slice003.dcm").unlink()
    with pytest.raises(ScanReadError, match="gap: missing slices") as caught:
        read_image(gap)
    assert "slice002.dcm (8.5 mm) and slice004.dcm (14.5 mm)" in str(caught.value)
    double = tmp_path / "double"
    shutil.copytree(whole, double)
    shutil.copy(double / "slice005.dcm", double / "slice005_copy.dcm")
    with pytest.raises(ScanReadError, match="double: duplicated slices: slice005.dcm and "):
        read_image(double)


# ------------------------------------------------------------------------- the commands
@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A complete run folder of the two test domains (its network is not trained)."""
    return train_run(tmp_path_factory.mktemp("untrained"), max_steps=0)


@pytest.fixture(scope="module")
def clean_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("study")
    for index, (domain, structures) in enumerate(DOMAINS.items()):
        write_dataset(
            root, f"Dataset00{index + 1}_{domain}", cases=3, test_cases=2, structures=structures
        )
    config = tiny_config()
    config["datasets"] = [
        {"name": domain, "folder": f"Dataset00{index + 1}_{domain}"}
        for index, domain in enumerate(DOMAINS)
    ]
    (root / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    return root


def damaged_study(clean: Path, tmp_path: Path, damage: Callable[[Path], None]) -> dict:
    """A copy of the study with two bad files in each split of the knee dataset."""
    study = tmp_path / "study"
    shutil.copytree(clean, study)
    knee = study / "Dataset001_knee"
    bad = {
        "train": (knee / "imagesTr" / "toy_001_0000.nii.gz", knee / "labelsTr" / "toy_002.nii.gz"),
        "test": (knee / "imagesTs" / "toy_100_0000.nii.gz", knee / "labelsTs" / "toy_101.nii.gz"),
    }
    for damaged, emptied in bad.values():
        damage(damaged)
        empty(emptied)
    return {"study": study, "config": study / "config.yaml", **bad}


def run_cli(args: list[str]) -> str:
    result = CliRunner().invoke(app, [str(a) for a in args])
    output = result.output
    assert result.exit_code == 1, output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # no escaped error
    assert "Traceback" not in output and "Aborted" not in output
    return output


def assert_named(output: str, path: Path, message: str) -> None:
    lines = [line for line in output.splitlines() if str(path) in line]
    assert any(message in line for line in lines), (path, message, output)


@pytest.mark.parametrize("kind", list(DAMAGES))
def test_every_command_names_every_bad_file(
    kind: str, clean_study: Path, untrained_run: Path, tmp_path: Path
) -> None:
    damage, message = DAMAGES[kind]
    case = damaged_study(clean_study, tmp_path, damage)
    train_bad, test_bad = case["train"], case["test"]

    output = run_cli(["check", case["study"]])
    for damaged, emptied in (train_bad, test_bad):
        assert_named(output, damaged, message)
        assert_named(output, emptied, SECOND)

    for command in (["preprocess"], ["train", "--out", tmp_path / "run"]):
        output = run_cli([*command, "-c", case["config"], "-d", case["study"]])
        assert "2 unreadable files" in output
        assert_named(output, train_bad[0], message)
        assert_named(output, train_bad[1], SECOND)
    assert not (tmp_path / "run" / "run.json").exists()

    run = tmp_path / "evaluated"
    shutil.copytree(untrained_run, run)
    output = run_cli(["evaluate", run, "--data", case["study"]])
    assert "2 unreadable files" in output
    assert_named(output, test_bad[0], message)
    assert_named(output, test_bad[1], SECOND)

    scans = test_bad[0].parent
    out = tmp_path / "predicted"
    output = run_cli(
        ["predict", untrained_run, scans, "-o", out, "--domain", "knee", "--no-meshes"]
    )
    assert "1 of 2 scans failed" in output
    assert_named(output, test_bad[0], message)
    assert (out / "toy_101_0000_seg.nii.gz").is_file()  # the good scan is still segmented
    output = run_cli(["predict", untrained_run, test_bad[0], "-o", out, "--domain", "knee"])
    assert_named(output, test_bad[0], message)


def test_predict_names_dicom_series_with_missing_or_duplicated_slices(
    untrained_run: Path, tmp_path: Path
) -> None:
    scans = tmp_path / "scans"
    gap, double = dicom_series(scans / "gap"), dicom_series(scans / "double")
    (gap / "slice003.dcm").unlink()
    shutil.copy(double / "slice005.dcm", double / "slice005_copy.dcm")
    output = run_cli(["predict", untrained_run, scans, "-o", tmp_path / "out", "--domain", "knee"])
    assert "2 of 2 scans failed" in output
    assert_named(output, gap, "missing slices")
    assert_named(output, double, "duplicated slices: slice005.dcm and slice005_copy.dcm")


def test_check_of_a_cut_short_file_in_a_real_process(clean_study: Path, tmp_path: Path) -> None:
    """The reported bug: ``jointseg check`` printed a bare "Aborted." for a cut-short file."""
    case = damaged_study(clean_study, tmp_path, cut_short)
    done = subprocess.run(
        [sys.executable, "-m", "jointseg.cli", "check", str(case["study"])],
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(Path(jointseg.__file__).parents[1])},
    )
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    assert "Traceback" not in output and "Aborted" not in output
    assert_named(output, case["train"][0], "the file is cut short")
    assert "4 error(s)" in output


def test_verify_scan_accepts_what_it_reads(clean_study: Path) -> None:
    image = clean_study / "Dataset001_knee" / "imagesTr" / "toy_000_0000.nii.gz"
    header = verify_scan(image)
    assert header.size == read_image(image).GetSize() and header.components == 1
