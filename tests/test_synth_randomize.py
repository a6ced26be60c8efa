"""Domain-randomized synthesis: deterministic per seed, the realistic mode's anatomy and labels,
random contrasts and acquisitions, and the study on disk (small volumes)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.data.manifest import load_manifest
from jointseg.synth import phantom as ph
from jointseg.synth.anatomy import joint_spec
from jointseg.synth.generate import subject_params, synthesize_study
from jointseg.synth.randomize import (
    MAX_FINE_VOXELS,
    RECORD,
    randomized_folder,
    sample_rendering,
    synthesize_randomized,
)
from jointseg.synth.synthesis import build_phantom, synthesize_subject

SCALE = 0.2


def test_rendering_is_deterministic_per_seed_and_subject() -> None:
    params = subject_params("knee", "train", 0, 11)
    first, again = sample_rendering(params), sample_rendering(params)
    assert first == again
    assert sample_rendering(subject_params("knee", "train", 0, 12)) != first
    assert sample_rendering(subject_params("knee", "train", 1, 11)) != first
    # the anatomy's draws are untouched: the subject is the realistic mode's
    assert subject_params("knee", "train", 0, 11) == params
    volume = synthesize_randomized(params, first, SCALE)
    repeat = synthesize_randomized(params, again, SCALE)
    assert np.array_equal(volume.image, repeat.image)
    assert np.array_equal(volume.label, repeat.label)


@pytest.mark.parametrize("joint", ["ankle", "knee"])
def test_labels_equal_the_realistic_mode_with_the_protocol_geometry(joint: str) -> None:
    params = subject_params(joint, "train", 2, 4)
    rendering = sample_rendering(params, geometry=False)
    assert rendering.plane == "protocol"
    randomized = synthesize_randomized(params, rendering, SCALE)
    realistic = synthesize_subject(params, SCALE)
    assert np.array_equal(randomized.label, realistic.label)
    assert set(np.unique(realistic.label)) == set(joint_spec(joint).labels.values())
    assert not np.array_equal(randomized.image, realistic.image)
    # the contrast draws do not depend on the geometry's
    moved = sample_rendering(params)
    assert (moved.water, moved.fat, moved.snr) == (rendering.water, rendering.fat, rendering.snr)


def test_the_image_is_the_drawn_intensities_without_artefacts() -> None:
    """Noise-free, unblurred, flat: a voxel whose sub-slices are all fat (fat fraction 0.93) or
    all cortex (none) reads gain x (water (1 - f) + fat f) of the drawn intensities."""
    params = subject_params("knee", "train", 0, 3)
    rendering = dataclasses.replace(
        sample_rendering(params, geometry=False),
        texture=[0.0] * len(ph.TISSUE_NAMES),
        blur=0.0,
        bias=0.0,
        snr=1e7,
        motion=0.0,
        coil=None,
        gain=1000.0,
    )
    volume = synthesize_randomized(params, rendering, SCALE)
    phantom, geometry, _, _ = build_phantom(params, SCALE)
    tissue = phantom.tissue.reshape(volume.image.shape[0], geometry.sub, *volume.image.shape[1:])
    checked = 0
    for kind in (ph.FAT, ph.CORTEX):
        pure = (tissue == kind).all(axis=1)
        assert pure.sum() > 10
        f = float(ph.FAT_FRACTION[kind])
        fat = rendering.fat if kind == ph.FAT else 0.0
        expected = 1000.0 * (rendering.water[kind] * (1.0 - f) + fat * f)
        assert np.abs(volume.image[pure] - expected).max() <= 1.0
        checked += 1
    assert checked == 2


def test_contrasts_and_acquisitions_differ_across_subjects() -> None:
    renderings = [sample_rendering(subject_params("knee", "train", i, 0)) for i in range(12)]
    for tissue in (ph.FAT, ph.MARROW, ph.FLUID, ph.CORTEX, ph.MUSCLE, ph.CARTILAGE, ph.PHYSIS):
        values = [r.water[tissue] for r in renderings]
        assert max(values) - min(values) > 0.5
    fat_f, muscle_f = ph.FAT_FRACTION[ph.FAT], 0.03
    brighter = [
        r.water[ph.FAT] * (1 - fat_f) + r.fat * fat_f
        > r.water[ph.MUSCLE] * (1 - muscle_f) + r.fat * muscle_f
        for r in renderings
    ]
    assert any(brighter) and not all(brighter)  # fat bright in some, dark in others
    assert {r.plane for r in renderings} == {"sagittal", "coronal", "axial"}
    assert any(r.oblique for r in renderings)
    pixels = [r.pixel_mm for r in renderings]
    thicknesses = [r.thickness_mm for r in renderings]
    assert 0.3 <= min(pixels) and max(pixels) <= 1.0 and max(pixels) - min(pixels) > 0.3
    assert 1.0 <= min(thicknesses) and max(thicknesses) <= 6.0
    assert all(t > p for t, p in zip(thicknesses, pixels, strict=True))
    for r in renderings:
        sub = int(np.ceil(r.thickness_mm / 1.5 - 1e-6))
        matrix = round(r.fov_mm / r.pixel_mm)
        assert matrix * matrix * r.slices * sub <= MAX_FINE_VOXELS or r.slices == 8


def test_randomized_geometry_follows_the_rendering() -> None:
    params = subject_params("ankle", "train", 1, 0)
    rendering = dataclasses.replace(
        sample_rendering(params), plane="axial", oblique=False, tilt_deg=[0.0, 0.0, 0.0]
    )
    volume = synthesize_randomized(params, rendering, 0.5)
    direction = volume.geometry.direction
    assert np.allclose(np.abs(direction[:, 2]), [0.0, 0.0, 1.0])  # axial: slices along S-I
    assert volume.geometry.spacing[0] == pytest.approx(rendering.fov_mm / volume.image.shape[2])
    assert volume.label.shape == volume.image.shape
    assert set(np.unique(volume.label)) <= set(joint_spec("ankle").labels.values())
    assert (volume.label > 0).any()


def test_randomized_study_on_disk(tmp_path) -> None:
    out = synthesize_study(
        tmp_path / "study", 1, 1, ["knee"], 5, 1, False, scale=SCALE, progress=False, randomize=True
    )
    folder = out / randomized_folder("knee")
    assert folder.name == "Dataset102_KneeRandomized"
    assert not (out / "synth.json").exists() and not (out / "Dataset002_Knee").exists()
    record = json.loads((out / RECORD).read_text(encoding="utf-8"))
    assert record["randomized"] is True
    assert [c["case_id"] for c in record["cases"]] == ["knee_000", "knee_test_000"]
    manifest = load_manifest(folder)
    assert manifest.labels == joint_spec("knee").labels
    params = subject_params("knee", "train", 0, 5)
    rendering = sample_rendering(params)
    assert record["cases"][0]["rendering"] == json.loads(json.dumps(rendering.to_dict()))
    expected = synthesize_randomized(params, rendering, SCALE)
    image = sitk.ReadImage(str(folder / "imagesTr" / "knee_000_0000.nii.gz"))
    label = sitk.ReadImage(str(folder / "labelsTr" / "knee_000.nii.gz"))
    assert np.array_equal(sitk.GetArrayFromImage(image), expected.image)
    assert np.array_equal(sitk.GetArrayFromImage(label), expected.label)
    assert np.allclose(image.GetSpacing(), expected.geometry.spacing)
