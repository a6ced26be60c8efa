"""``jointseg synth`` at its real default size, one subject per joint, through the CLI."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from typer.testing import CliRunner

from jointseg.cli import app
from jointseg.data.manifest import list_cases, load_manifest
from jointseg.synth.quality import oracle_threshold_dice
from jointseg.synth.subject import FOV_FACTOR, MAX_MATRIX, WIDE_SLICE_RANGE


@pytest.fixture(scope="module")
def default_study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth_default") / "data"
    result = CliRunner().invoke(
        app, ["synth", "--out", str(out), "--subjects", "1", "--seed", "11", "--preview"]
    )
    assert result.exit_code == 0, result.output
    return out


def test_default_volumes_have_the_protocol_sizes(default_study: Path) -> None:
    folders = sorted(default_study.glob("Dataset*"))
    assert [f.name for f in folders] == [
        "Dataset001_Ankle",
        "Dataset002_Knee",
        "Dataset003_Shoulder",
    ]
    for folder in folders:
        (case,) = list_cases(folder, "train")
        image = sitk.ReadImage(str(case.image))
        label = sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))
        nx, ny, nz = image.GetSize()
        sx, sy, sz = image.GetSpacing()
        # the protocol's pixel over a field of view from tight to long (subject.FOV_FACTOR)
        assert 160 <= nx == ny <= MAX_MATRIX and WIDE_SLICE_RANGE[0] <= nz <= WIDE_SLICE_RANGE[1]
        assert 0.3 <= sx == sy <= 0.7 and 1.0 <= sz <= 4.0
        assert 80 <= nx * sx <= 165 * FOV_FACTOR[1]  # field of view, mm
        structures = load_manifest(folder).structures
        counts = np.bincount(label.ravel(), minlength=max(structures.values()) + 1)
        for name, value in structures.items():
            assert counts[value] > 500, f"{folder.name}: {name} has {counts[value]} voxels"
        array = sitk.GetArrayFromImage(image)
        assert oracle_threshold_dice(array, label) < 0.6
        assert (default_study / f"preview_{folder.name.split('_')[1].lower()}.png").is_file()


def test_default_study_passes_jointseg_check(default_study: Path) -> None:
    result = CliRunner().invoke(app, ["check", str(default_study)])
    assert result.exit_code == 0, result.output


#: Bones that meet at a joint, and the widest gap (mm) allowed between their labels: the
#: cartilage of a child's joint (thicker at the shoulder, where the model leaves more room).
JOINT_PAIRS = {
    "Dataset001_Ankle": [("talus", "tibia", 5.0), ("talus", "calcaneus", 5.0)],
    "Dataset002_Knee": [
        ("femur", "tibia", 5.0),
        ("femur", "patella", 6.0),
        ("tibia", "fibula", 5.0),
    ],
    "Dataset003_Shoulder": [("humerus", "scapula", 7.5)],
}


def test_bones_that_meet_nearly_touch(default_study: Path) -> None:
    from scipy import ndimage

    for folder, pairs in JOINT_PAIRS.items():
        structures = load_manifest(default_study / folder).structures
        (case,) = list_cases(default_study / folder, "train")
        label_image = sitk.ReadImage(str(case.label))
        label = sitk.GetArrayFromImage(label_image)
        spacing = label_image.GetSpacing()[::-1]
        for a, b, widest in pairs:
            distance = ndimage.distance_transform_edt(label != structures[a], sampling=spacing)
            gap = float(distance[label == structures[b]].min())
            assert 0.0 < gap <= widest, f"{folder}: {a}-{b} gap {gap:.1f} mm"
