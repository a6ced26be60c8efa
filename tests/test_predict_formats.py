"""`jointseg predict --format ... --backend onnxruntime` and `jointseg export`, end to end."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from tests.dicom_series import PIXEL_SPACING, SLICE_STEP, phantom, write_mr_series
from tests.tiny_model import DOMAINS, make_scan


def _invoke(*args: str):
    from jointseg.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def test_dicom_series_to_dicom_seg_and_slicer_with_onnxruntime(trained_run: Path, tmp_path: Path):
    import highdicom as hd
    import nrrd

    series = tmp_path / "series"
    uids = write_mr_series(series, phantom() * 3)
    missing = _invoke("predict", trained_run, series, "--out", tmp_path / "x", "--backend",
                      "onnxruntime", "--onnx", tmp_path / "onnx", "--domain", "knee")  # fmt: skip
    assert missing.exit_code == 2 and "jointseg export RUN" in missing.output
    exported = _invoke("export", trained_run, "--out", tmp_path / "onnx")
    assert exported.exit_code == 0, exported.output
    out = tmp_path / "out"
    result = _invoke("predict", trained_run, series, "--out", out, "--domain", "knee",
                     "--no-meshes", "--format", "dicom-seg", "--format", "seg.nrrd",
                     "--backend", "onnxruntime", "--onnx", tmp_path / "onnx")  # fmt: skip
    assert result.exit_code == 0, result.output
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "series_seg.nii.gz")))
    assert labels.shape == (8, 32, 32)
    assert labels.any()  # the bright discs read as bone: something to compare
    seg = hd.seg.segread(out / "series_seg.dcm")
    numbers = {s.SegmentLabel: int(s.SegmentNumber) for s in seg.SegmentSequence}
    assert numbers == {"femur": 1, "tibia": 2}
    combined = seg.get_pixels_by_source_instance(uids, combine_segments=True)
    back = np.zeros_like(labels)
    for name, number in numbers.items():
        back[combined == number] = DOMAINS["knee"][name]
    np.testing.assert_array_equal(back, labels)
    params = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert f"run={trained_run.resolve().name}" in params.AlgorithmParameters
    assert "domain=knee" in params.AlgorithmParameters
    data, header = nrrd.read(str(out / "series.seg.nrrd"), index_order="C")
    np.testing.assert_array_equal(data, labels)
    assert [header[f"Segment{i}_Name"] for i in range(2)] == ["femur", "tibia"]
    record = json.loads((out / "series_outputs.json").read_text(encoding="utf-8"))
    listed = {item["path"] for item in record["outputs"]}
    assert {"series_seg.nii.gz", "series_seg.dcm", "series.seg.nrrd"} <= listed
    assert record["settings"]["backend"] == "onnxruntime"

    # the default for a DICOM series: DICOM-SEG beside the NIfTI; `--format nifti`: none
    default = _invoke("predict", trained_run, series, "--out", tmp_path / "d", "--domain", "knee",
                      "--no-meshes")  # fmt: skip
    assert default.exit_code == 0, default.output
    assert (tmp_path / "d" / "series_seg.dcm").is_file()
    plain = _invoke("predict", trained_run, series, "--out", tmp_path / "p", "--domain", "knee",
                    "--no-meshes", "--format", "nifti")  # fmt: skip
    assert plain.exit_code == 0, plain.output
    assert not list((tmp_path / "p").glob("*.dcm")) and not list((tmp_path / "p").glob("*.seg.*"))


def test_dicom_seg_of_a_scan_file_is_refused(trained_run: Path, tmp_path: Path):
    scan = tmp_path / "knee.nii.gz"
    sitk.WriteImage(make_scan("knee", 3)[0], str(scan))
    result = _invoke("predict", trained_run, scan, "--out", tmp_path / "out", "--format",
                     "dicom-seg")  # fmt: skip
    assert result.exit_code == 2
    assert "--format dicom-seg needs DICOM series" in result.output
    assert not (tmp_path / "out").exists()
    result = _invoke("predict", trained_run, scan, "--out", tmp_path / "out", "--format", "stl")
    assert result.exit_code == 2 and "unknown --format stl" in result.output


def test_series_without_slice_thickness_and_a_format_that_fails(
    trained_run: Path, tmp_path: Path, monkeypatch, caplog
):
    import highdicom as hd

    from jointseg import __version__

    series = tmp_path / "series"
    write_mr_series(series, phantom() * 3, slice_thickness=None)  # Type 2: may be left out
    out = tmp_path / "out"
    args = ("predict", trained_run, series, "--out", out, "--domain", "knee", "--no-meshes",
            "--format", "dicom-seg", "--format", "seg.nrrd")  # fmt: skip
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    measures = hd.seg.segread(out / "series_seg.dcm").SharedFunctionalGroupsSequence[0]
    measures = measures.PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(SLICE_STEP)  # from the positions
    assert float(measures.SpacingBetweenSlices) == pytest.approx(SLICE_STEP)
    assert [float(v) for v in measures.PixelSpacing] == pytest.approx(PIXEL_SPACING)
    assert (out / "series.seg.nrrd").is_file()
    record = _record(out)
    assert record["jointseg_version"] == __version__ and "format_errors" not in record
    measured = json.loads((out / "series_measurements.json").read_text(encoding="utf-8"))
    assert measured["jointseg_version"] == __version__

    # a format that cannot be written costs no other: warned, recorded, the scan predicted
    def broken(*_args, **_kwargs):
        raise RuntimeError("the Slicer writer broke")

    monkeypatch.setattr("jointseg.inference.formats.write_slicer_segmentation", broken)
    with caplog.at_level(logging.INFO, logger="jointseg"):
        failed = _invoke(*args, "--overwrite")
    assert failed.exit_code == 0, failed.output
    assert "seg.nrrd not written: the Slicer writer broke" in failed.output
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("series: knee" in w and "seg.nrrd not written" in w for w in warnings), warnings
    assert (out / "series_seg.nii.gz").is_file() and (out / "series_seg.dcm").is_file()
    assert not (out / "series.seg.nrrd").exists()  # the earlier prediction's is removed
    record = _record(out)
    assert record["format_errors"] == {"seg.nrrd": "the Slicer writer broke"}
    listed = {item["path"] for item in record["outputs"]}
    assert {"series_seg.nii.gz", "series_seg.dcm"} <= listed and "series.seg.nrrd" not in listed

    # a format asked for is missing: a rerun predicts the case again and writes it
    monkeypatch.undo()
    rerun = _invoke(*args)
    assert rerun.exit_code == 0 and "skipped" not in rerun.output, rerun.output
    assert (out / "series.seg.nrrd").is_file() and "format_errors" not in _record(out)
    assert "skipped" in _invoke(*args).output


def test_default_dicom_seg_that_fails_leaves_a_complete_case(
    trained_run: Path, tmp_path: Path, monkeypatch
):
    from jointseg.inference.dicom_seg import DicomSegError

    def refused(folder, *_args, **_kwargs):
        raise DicomSegError(f"{folder}: no Frame of Reference UID")

    monkeypatch.setattr("jointseg.inference.formats.write_dicom_seg", refused)
    series = tmp_path / "series"
    write_mr_series(series, phantom() * 3)
    out = tmp_path / "out"
    args = ("predict", trained_run, series, "--out", out, "--domain", "knee", "--no-meshes")
    result = _invoke(*args)
    assert result.exit_code == 0, result.output
    assert "dicom-seg not written" in result.output and "no Frame of Reference" in result.output
    assert (out / "series_seg.nii.gz").is_file() and not (out / "series_seg.dcm").exists()
    assert "no Frame of Reference UID" in _record(out)["format_errors"]["dicom-seg"]
    assert "skipped" in _invoke(*args).output  # the default was not asked for: complete


def _record(out: Path) -> dict:
    return json.loads((out / "series_outputs.json").read_text(encoding="utf-8"))
