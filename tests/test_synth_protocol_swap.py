"""A joint imaged with another joint's protocol (synth/protocol_swap.py)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.synth.generate import render_case, subject_params
from jointseg.synth.protocol_swap import (
    imaging_protocol,
    protocol_names,
    synthesize_under_protocol,
    under_protocol,
)
from jointseg.synth.subject import PROTOCOLS, SLICE_RANGE
from jointseg.synth.synthesis import synthesize_subject
from jointseg.synth.variants import typical

SCALE = 0.2
ACQUISITION = {"tr", "te", "flip", "thickness", "slices", "snr"}


def test_the_joints_own_protocol_is_the_realistic_rendering_voxel_for_voxel():
    params = subject_params("knee", "test", 0, 3)
    assert under_protocol(params, "knee") is params
    assert imaging_protocol("knee", "knee") == PROTOCOLS["knee"]
    realistic = synthesize_subject(params, SCALE)
    swapped = synthesize_under_protocol(params, "knee", SCALE)
    assert np.array_equal(realistic.image, swapped.image)
    assert np.array_equal(realistic.label, swapped.label)


def test_another_protocol_brings_its_contrast_and_resolution_and_keeps_the_placement():
    placed = imaging_protocol("knee", "shoulder")
    knee, shoulder = PROTOCOLS["knee"], PROTOCOLS["shoulder"]
    assert (placed.sequence, placed.fat_sat, placed.flip) == ("gre", False, shoulder.flip)
    assert (placed.tr, placed.te, placed.matrix) == (shoulder.tr, shoulder.te, shoulder.matrix)
    assert (placed.thickness, placed.snr) == (shoulder.thickness, shoulder.snr)
    assert (placed.plane, placed.fov, placed.coverage) == ("sagittal", knee.fov, knee.coverage)
    assert (placed.center_offset, placed.coil) == (knee.center_offset, knee.coil)


def test_only_the_acquisition_numbers_are_redrawn_within_the_protocols_ranges():
    params = subject_params("ankle", "test", 1, 7)
    for name in protocol_names():
        if name == "ankle":
            continue
        swapped = under_protocol(params, name)
        assert swapped == under_protocol(params, name)  # a pure function of subject and name
        changed = {
            f.name for f in fields(params) if getattr(params, f.name) != getattr(swapped, f.name)
        }
        assert changed <= ACQUISITION, name
        protocol = PROTOCOLS[name]
        for value, (low, high) in [(swapped.tr, protocol.tr), (swapped.te, protocol.te),
                                   (swapped.thickness, protocol.thickness),
                                   (swapped.snr, protocol.snr)]:  # fmt: skip
            assert low - 0.01 <= value <= high + 0.01, name
        assert SLICE_RANGE[0] <= swapped.slices <= SLICE_RANGE[1]
        covered = params.slices * params.thickness
        assert swapped.slices == int(np.clip(round(covered / swapped.thickness), *SLICE_RANGE))
    # two protocols with the same ranges still get draws of their own
    assert under_protocol(params, "elbow").tr != under_protocol(params, "knee_t1").tr


def test_the_contrast_follows_the_protocol():
    """Bone (fatty marrow) is bright under T1 spin echo without fat suppression and dark under
    fat-suppressed proton density and under T2* gradient echo: the mean inside the bones over the
    image mean was 1.44-1.48 against 0.80-0.86 on this knee (scale 0.3) in its typical field
    of view (a long one holds more air, which lowers the image mean)."""
    params = typical(subject_params("knee", "test", 0, 0))
    ratio = {}
    for name in ("knee", "knee_t1", "ankle", "shoulder"):
        volume = synthesize_under_protocol(params, name, SCALE)
        image = volume.image.astype(np.float64)
        ratio[name] = image[volume.label > 0].mean() / image.mean()
    assert min(ratio["knee_t1"], ratio["ankle"]) > 1.2
    assert max(ratio["knee"], ratio["shoulder"]) < 1.0


def test_unknown_protocols_and_randomized_swaps_are_refused(tmp_path):
    params = subject_params("knee", "test", 0, 0)
    with pytest.raises(ValueError, match="unknown protocol 'dixon'.*knee_t1"):
        under_protocol(params, "dixon")
    with pytest.raises(ValueError, match="unknown protocol"):
        imaging_protocol("knee", "dixon")
    with pytest.raises(ValueError, match="randomize or imaging"):
        render_case(params, str(tmp_path), SCALE, randomize=True, imaging="ankle")


def test_render_case_writes_the_swapped_rendering(tmp_path):
    params = subject_params("knee", "test", 2, 1)
    record = render_case(params, str(tmp_path), SCALE, imaging="knee_t1")
    assert record["imaging"] == "knee_t1"
    image = sitk.ReadImage(str(tmp_path / "imagesTs" / "knee_test_002_0000.nii.gz"))
    expected = synthesize_under_protocol(params, "knee_t1", SCALE)
    assert np.array_equal(sitk.GetArrayFromImage(image), expected.image)
    assert image.GetSpacing()[2] == pytest.approx(expected.geometry.spacing[2])
