"""The generator's coverage of real joints: fields of view, skeletal maturity, fat pads, marrow
changes, and the controlled variants that isolate each (synth/variants.py)."""

from __future__ import annotations

import numpy as np
import pytest

from jointseg.synth import subject as sj
from jointseg.synth.generate import subject_params
from jointseg.synth.phantom import CORTEX, MARROW, MUSCLE, PHYSIS, marrow_changes
from jointseg.synth.subject import PROTOCOLS, subject_matrix
from jointseg.synth.synthesis import build_phantom
from jointseg.synth.variants import LONG_FIELD_FACTOR, typical, variant

SCALE = 0.25  # small volumes: the anatomy is the same at any matrix


def _draws(joint: str = "knee", n: int = 60) -> list[sj.SubjectParams]:
    return [subject_params(joint, "train", i, 3) for i in range(n)]


def test_fields_of_view_range_from_tight_to_long_at_the_protocols_pixel() -> None:
    draws = _draws()
    factors = np.array([p.fov_factor for p in draws])
    assert factors.min() >= sj.FOV_FACTOR[0] and factors.max() <= sj.FOV_FACTOR[1]
    assert factors.min() < 1.0 and factors.max() > 1.5  # tight and long fields both drawn
    for p in draws:
        matrix = subject_matrix(PROTOCOLS["knee"], p)
        typical_pixel = (p.fov / p.fov_factor) / PROTOCOLS["knee"].matrix
        if matrix < sj.MAX_MATRIX:  # the pixel is the protocol's
            assert p.fov / matrix == pytest.approx(typical_pixel, rel=0.01)
        assert sj.WIDE_SLICE_RANGE[0] <= p.slices <= sj.WIDE_SLICE_RANGE[1]
        assert abs(p.view_shift_mm[2]) <= sj.LONG_AXIS_SHIFT * p.fov + 1e-6


def test_maturity_and_soft_tissue_variants_are_drawn_in_range() -> None:
    draws = _draws()
    offsets = np.array([p.bone_age_offset for p in draws])
    assert np.abs(offsets).max() <= 2 * sj.BONE_AGE_SD + 1e-9 and offsets.std() > 0.5
    scars = [p.scar_mm for p in draws]
    assert 0.5 < np.mean([s > 0 for s in scars]) < 1.0
    assert all(s == 0 or sj.SCAR_MM[0] <= s <= sj.SCAR_MM[1] for s in scars)
    pads = np.array([p.fat_pad_scale for p in draws])
    assert pads.min() >= sj.FAT_PAD_SCALE[0] and pads.max() <= sj.FAT_PAD_SCALE[1]
    changed = [p.marrow_change for p in draws if p.marrow_change > 0]
    assert 0 < len(changed) < len(draws)
    p = draws[0]
    assert p.bone_age == pytest.approx(p.age + p.bone_age_offset)


def test_variants_change_only_what_they_name() -> None:
    params = subject_params("knee", "test", 0, 5)
    base = typical(params)
    assert base.fov_factor == 1.0 and base.bone_age_offset == 0.0 and base.scar_mm == 0.0
    assert base.age == params.age and base.angles == params.angles
    assert base.fov == pytest.approx(params.fov / params.fov_factor, abs=0.01)
    long, protocol = variant(params, "long_field")
    assert protocol is PROTOCOLS["knee"]
    assert long.fov == pytest.approx(base.fov * LONG_FIELD_FACTOR, abs=0.01)
    assert long.view_shift_mm[2] > 0  # up the femoral shaft
    closed, _ = variant(params, "closed_physes")
    assert closed.bone_age == pytest.approx(19.0) and closed.scar_mm > 0
    _, foreign = variant(params, "foreign_contrast")
    assert foreign is PROTOCOLS["knee_t1"]
    edge, _ = variant(params, "bone_at_edge")
    assert abs(edge.view_shift_mm[0]) > 0
    with pytest.raises(ValueError, match="sagittal"):
        variant(subject_params("elbow", "test", 0, 5), "bone_at_edge")
    with pytest.raises(ValueError, match="unknown variant"):
        variant(params, "nope")


def test_closed_physes_leave_a_scar_and_no_plate() -> None:
    params = subject_params("knee", "test", 1, 5)
    young = variant(params, "typical")[0]
    young = type(young)(**{**young.to_dict(), "age": 8.0, "bone_age_offset": 0.0})
    open_phantom = build_phantom(young, SCALE)[0]
    assert (open_phantom.tissue == PHYSIS).sum() > 100
    closed = variant(young, "closed_physes")[0]
    closed_phantom = build_phantom(closed, SCALE)[0]
    assert (closed_phantom.tissue == PHYSIS).sum() == 0
    # The scar: cortex-like tissue deep inside the ossified bone, where there was none.
    inner = closed_phantom.bone & (closed_phantom.tissue == CORTEX)
    unscarred = type(closed)(**{**closed.to_dict(), "scar_mm": 0.0})
    plain = build_phantom(unscarred, SCALE)[0]
    assert inner.sum() > (plain.bone & (plain.tissue == CORTEX)).sum() + 50
    # The label (the bone) is the same with or without the scar.
    assert np.array_equal(closed_phantom.label, plain.label)


def test_marrow_changes_lower_fat_only_in_marrow() -> None:
    tissue = np.full((6, 40, 40), MUSCLE, np.uint8)
    tissue[:, 10:30, 10:30] = MARROW
    fat = np.full(tissue.shape, 0.8, np.float32)
    before = fat.copy()
    marrow_changes(tissue, fat, 0.5, seed=7, sub=2)
    marrow = tissue == MARROW
    assert np.array_equal(fat[~marrow], before[~marrow])
    assert (fat[marrow] <= 0.8 + 1e-6).all() and fat[marrow].min() < 0.6
    assert fat[marrow].min() >= 0.8 - 0.5 - 1e-6
    again = before.copy()
    marrow_changes(tissue, again, 0.5, seed=7, sub=2)
    assert np.array_equal(again, fat)  # its own stream: deterministic per seed
