"""The shipped model on the real-anatomy failure modes, each reproduced on synthetic knees that
nothing was trained on (synth/variants.py; held-out subjects of their own seed).

Where the previously shipped model failed (a long field up the femoral shaft, the fibula at the
stack's edge, a T1 contrast), each bound sits between its score and the current model's on these
two knees (benchmarks/results/failure_modes/failure_modes.json): the test fails on the old model
and passes on the new one. Where the old model did not fail on the synthetic variant (closed
physes, a large fat pad), the bounds guard the level reached, below both."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.data.dice import dice
from jointseg.data.io import array_to_image
from jointseg.evaluation.regions import far_part_sensitivity, outside_share
from jointseg.inference.packaged import has_packaged_model, resolve_run
from jointseg.inference.postprocess import Postprocessing
from jointseg.inference.predictor import Predictor
from jointseg.synth.generate import subject_params
from jointseg.synth.synthesis import synthesize_subject
from jointseg.synth.variants import variant

SEED = 1234  # benchmarks/failure_modes.py's held-out knees
SUBJECTS = (0, 1)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not has_packaged_model(), reason="no packed model in this checkout"),
]


@pytest.fixture(scope="module")
def predictor() -> Predictor:
    return Predictor.from_run("pretrained")


def _scores(predictor: Predictor, mode: str) -> list[dict[str, float | None]]:
    """Scores of the two knees in ``mode``, postprocessed as ``jointseg predict`` does."""
    steps = Postprocessing.load(resolve_run("pretrained"))
    out = []
    for index in SUBJECTS:
        params, protocol = variant(subject_params("knee", "test", index, SEED), mode)
        volume = synthesize_subject(params, 1.0, protocol)
        g = volume.geometry
        image = array_to_image(volume.image, spacing=g.spacing, origin=g.origin,
                               direction=g.direction.ravel())  # fmt: skip
        result = predictor.predict(image, domain="knee")
        label_map = result.label_map
        if steps is not None:
            label_map = steps.apply_image(label_map, "knee", result.structures)
        predicted, truth = sitk.GetArrayFromImage(label_map), volume.label
        s = result.structures
        scores = {n: dice(predicted == v, truth == v) for n, v in s.items() if (truth == v).any()}
        scores["shaft"] = far_part_sensitivity(predicted, truth, s["femur"])
        scores["patella_outside"] = outside_share(predicted, truth, s["patella"])
        out.append(scores)
    return out


def _mean(scores: list[dict], key: str) -> float:
    return float(np.mean([s[key] for s in scores if s.get(key) is not None]))


#: mode -> measure -> ("min" | "max", bound); measured means over the two knees, previous ->
#: current model, in the comments.
BOUNDS: dict[str, dict[str, tuple[str, float]]] = {
    "long_field": {
        "femur": ("min", 0.86),  # 0.790 -> 0.920
        "tibia": ("min", 0.82),  # 0.687 -> 0.936
        "shaft": ("min", 0.65),  # 0.434 -> 0.825: the femoral shaft found
        "patella_outside": ("max", 0.05),  # 0.130 -> 0.003: no patella in the thigh
    },
    "bone_at_edge": {"fibula": ("min", 0.91)},  # 0.897 -> 0.926
    "foreign_contrast": {
        "fibula": ("min", 0.85),  # 0.775 -> 0.915
        "tibia": ("min", 0.905),  # 0.894 -> 0.915
    },
    "closed_physes": {"femur": ("min", 0.93), "tibia": ("min", 0.94)},  # 0.943/0.952 -> 0.952/0.965
    "large_fat_pad": {
        "patella": ("min", 0.90),  # 0.912 -> 0.929
        "patella_outside": ("max", 0.03),  # 0.018 -> 0.007
    },
}


@pytest.mark.parametrize("mode", sorted(BOUNDS))
def test_the_shipped_model_on_a_failure_mode(predictor: Predictor, mode: str) -> None:
    scores = _scores(predictor, mode)
    for key, (direction, bound) in BOUNDS[mode].items():
        value = _mean(scores, key)
        if direction == "min":
            assert value >= bound, f"{mode}: {key} {value:.3f} < {bound}"
        else:
            assert value <= bound, f"{mode}: {key} {value:.3f} > {bound}"
