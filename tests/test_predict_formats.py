"""`jointseg predict --format ... --backend onnxruntime` and `jointseg export`, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import SimpleITK as sitk
from typer.testing import CliRunner

from tests.dicom_series import phantom, write_mr_series
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
