"""The anatomy check of joint recognition: statistics of training labels, the plausibility of a
predicted anatomy, and the anatomy rule through the predictor on the tiny fixture run."""

from __future__ import annotations

import json
import logging
import math
import shutil
from dataclasses import replace
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from jointseg.data.io import write_image
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import DatasetManifest, write_manifest
from jointseg.data.preprocess import preprocess_case
from jointseg.inference.predictor import Predictor
from jointseg.recognition.anatomy import (
    LOG_VOLUME_FLOOR,
    Z_LIMIT,
    Z_LIMIT_MAX,
    Z_MARGIN,
    AnatomyReference,
    AnatomyScore,
    load_anatomy,
    measure_anatomy,
)
from jointseg.recognition.calibration import Calibration
from jointseg.recognition.decision import (
    DomainRecognitionError,
    decide,
    decide_by_anatomy,
    refusal_message,
)
from jointseg.recognition.fitting import fit_anatomy
from jointseg.runs import RunError, RunFolder, load_run_info, save_run_info
from jointseg.synth.nonjoint import abdomen_like, brain_like
from jointseg.workflows.anatomy import fit_run_anatomy_from_study
from tests.tiny_model import DOMAINS, PREPROCESSING, SHAPE, SPACING, make_scan, noise_scan

STACK_SPACING = (2.0, 1.0, 0.5)  # S, H, W mm: 1 mm^3 = 0.001 ml per voxel


def constructed_labels() -> np.ndarray:
    """Structure 1: a 2 x 5 x 4 box (40 voxels); structure 2: a 2 x 5 x 4 box and a separate
    1 x 2 x 2 piece (44 voxels, 2 components)."""
    labels = np.zeros((4, 10, 10), np.uint8)
    labels[0:2, 0:5, 0:4] = 1
    labels[2:4, 5:10, 5:9] = 2
    labels[0:1, 8:10, 0:2] = 2
    return labels


def test_measure_anatomy_of_a_constructed_label_map() -> None:
    measure = measure_anatomy(constructed_labels(), STACK_SPACING, 2)
    np.testing.assert_allclose(measure.volume_ml, [0.040, 0.044])
    np.testing.assert_array_equal(measure.components, [1, 2])
    np.testing.assert_allclose(measure.stray, [0.0, 4 / 44])
    np.testing.assert_allclose(measure.share, [40 / 84, 44 / 84])
    first = np.array([0.5, 2.0, 1.5]) * STACK_SPACING
    second = (40 * np.array([2.5, 7.0, 6.5]) + 4 * np.array([0.0, 8.5, 0.5])) / 44 * STACK_SPACING
    expected = np.linalg.norm(first - second) / 84 ** (1 / 3)  # size: cbrt(84 mm^3)
    np.testing.assert_allclose(measure.distance, [expected])


def test_measure_anatomy_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="label map"):
        measure_anatomy(np.zeros((4, 4), np.uint8), STACK_SPACING, 1)
    with pytest.raises(ValueError, match="voxel sizes"):
        measure_anatomy(np.zeros((2, 4, 4), np.uint8), (1.0, 0.0, 1.0), 1)


def two_bones(size: int = 8, gap: int = 4, pieces: int = 1, shape=(12, 40, 40)) -> np.ndarray:
    """Two boxes side by side; the second cut into ``pieces`` separated parts along x."""
    labels = np.zeros(shape, np.uint8)
    labels[2:10, 4 : 4 + size, 10:30] = 1
    y = 4 + size + gap
    if pieces == 1:
        labels[2:10, y : y + size, 10:30] = 2
    else:
        for k in range(pieces):
            labels[2:10, y : y + size, 10 + 7 * k : 15 + 7 * k] = 2
    return labels


@pytest.fixture(scope="module")
def reference() -> AnatomyReference:
    maps = [two_bones(size) for size in (7, 8, 9, 10)]
    return AnatomyReference.fit(
        ["femur", "tibia"], [measure_anatomy(m, STACK_SPACING, 2) for m in maps]
    )


def test_anatomy_statistics_are_recorded_and_read_back(tmp_path: Path) -> None:
    maps = [(two_bones(size), STACK_SPACING) for size in (7, 9)]
    fit_anatomy(tmp_path, {"knee": ["femur", "tibia"]}, {"knee": maps})
    assert RunFolder(tmp_path).anatomy_reference_file.is_file()
    knee = load_anatomy(tmp_path)["knee"]
    volumes = np.array([8 * 7 * 20, 8 * 9 * 20]) * 1e-3  # ml: 8 slices x size rows x 20 columns
    np.testing.assert_allclose(knee.log_volume.mean, [np.log(volumes).mean()] * 2)
    np.testing.assert_allclose(knee.log_volume.std, [np.log(volumes).std(ddof=1)] * 2)
    np.testing.assert_allclose(knee.min_volume_ml, [volumes[0]] * 2)
    np.testing.assert_allclose(knee.share.mean, [0.5, 0.5])
    assert knee.structures == ("femur", "tibia") and knee.scans == 2
    np.testing.assert_array_equal(knee.max_components, [1, 1])
    assert knee.log_volume.floor == LOG_VOLUME_FLOOR


def test_fit_anatomy_leaves_out_label_maps_missing_a_structure(tmp_path: Path) -> None:
    partial = two_bones()
    partial[partial == 2] = 0
    maps = [(two_bones(7), STACK_SPACING), (partial, STACK_SPACING)]
    knee = fit_anatomy(tmp_path, {"knee": ["femur", "tibia"]}, {"knee": maps})["knee"]
    assert knee.scans == 1
    assert fit_anatomy(tmp_path / "none", {"knee": ["femur", "tibia"]}, {"knee": maps[1:]}) == {}


def test_load_anatomy_without_the_file_and_of_a_damaged_file(tmp_path: Path) -> None:
    assert load_anatomy(tmp_path) == {}
    RunFolder(tmp_path).anatomy_reference_file.write_text("{", encoding="utf-8")
    with pytest.raises(ValueError, match="unreadable anatomy reference"):
        load_anatomy(tmp_path)


def score(reference: AnatomyReference, labels: np.ndarray):
    return reference.score(measure_anatomy(labels, STACK_SPACING, 2))


def test_a_correct_looking_anatomy_is_plausible(reference: AnatomyReference) -> None:
    result = score(reference, two_bones(8, gap=5))
    assert result.plausible, result.reasons
    assert result.distance < 2.0


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        (np.zeros((12, 40, 40), np.uint8), "no structure found"),
        (np.where(two_bones(8) > 0, 1, 0).astype(np.uint8), "tibia absent"),  # one blob
        (two_bones(8, pieces=3), "tibia in 3 pieces"),
        (two_bones(8, gap=30, shape=(12, 80, 40)), "femur-tibia too far apart, position z"),
    ],
    ids=["empty", "single blob", "three pieces", "far apart"],
)
def test_implausible_anatomy_fails(reference: AnatomyReference, labels, reason: str) -> None:
    result = score(reference, labels)
    assert not result.plausible
    assert any(reason in r for r in result.reasons), result.reasons


def test_a_bone_ten_times_too_large_fails(reference: AnatomyReference) -> None:
    labels = np.zeros((40, 40, 40), np.uint8)
    labels[0:40, 0:20, 0:40] = 1  # 32000 voxels against about 1360
    labels[0:40, 22:40, 0:40] = 2
    result = score(reference, labels)
    assert not result.plausible
    assert any("femur too large, volume z" in r for r in result.reasons)
    z = (math.log(32.0) - reference.log_volume.mean[0]) / math.hypot(
        reference.log_volume.std[0], LOG_VOLUME_FLOOR
    )
    assert f"{z:+.1f}" in " ".join(result.reasons)


def three_bones(size: int = 8, third: int = 8) -> np.ndarray:
    """Three boxes in a row; the third ``third`` rows high (0: left out)."""
    labels = np.zeros((12, 60, 40), np.uint8)
    labels[2:10, 4 : 4 + size, 10:30] = 1
    labels[2:10, 16 : 16 + size, 10:30] = 2
    labels[2:10, 28 : 28 + third, 10:30] = 3
    return labels


def test_one_bone_cut_by_the_field_of_view_is_left_out() -> None:
    names = ["femur", "tibia", "fibula"]
    reference = AnatomyReference.fit(
        names, [measure_anatomy(three_bones(size, size), STACK_SPACING, 3) for size in (7, 8, 9)]
    )
    assert reference.score(measure_anatomy(three_bones(), STACK_SPACING, 3)).plausible
    for third in (0, 1):  # absent; a sliver (volume z about -5): both cut, the rest plausible
        measure = measure_anatomy(three_bones(third=third), STACK_SPACING, 3)
        np.testing.assert_array_equal(reference.cut(measure), [False, False, True])
        result = reference.score(measure)
        assert result.plausible, result.reasons
    sliver = three_bones(third=1)
    sliver[2:4, 40:42, 0:2] = 3  # and in two pieces: still left out, not "in 2 pieces"
    assert reference.score(measure_anatomy(sliver, STACK_SPACING, 3)).plausible
    two_missing = three_bones(third=0)
    two_missing[two_missing == 2] = 0
    result = reference.score(measure_anatomy(two_missing, STACK_SPACING, 3))
    assert not result.plausible and "tibia absent" in result.reasons
    # the rest is still checked: the femur ten times too large is not hidden by the cut fibula
    large = np.zeros((40, 80, 40), np.uint8)
    large[0:40, 0:30, 0:40], large[2:10, 40:48, 10:30] = 1, 2
    result = reference.score(measure_anatomy(large, STACK_SPACING, 3))
    assert not result.plausible and any("femur too large, volume z" in r for r in result.reasons)
    # a two-structure domain may miss none (test_implausible_anatomy_fails: "single blob")


def test_calibration_on_held_out_predictions(reference: AnatomyReference, tmp_path: Path) -> None:
    without_tibia = two_bones(8)
    without_tibia[without_tibia == 2] = 0
    assert not score(reference, without_tibia).plausible
    calibrated = reference.calibrated([measure_anatomy(without_tibia, STACK_SPACING, 2)])
    np.testing.assert_array_equal(calibrated.optional, [False, True])
    assert calibrated.calibrated_on == 1
    assert not calibrated.reliable  # its own held-out prediction failed the check
    plausible = measure_anatomy(two_bones(8, gap=5), STACK_SPACING, 2)
    assert not reference.calibrated([plausible]).reliable  # one scan is no evidence
    good = reference.calibrated([plausible, plausible])
    assert good.reliable and not reference.reliable  # uncalibrated: not known to be reliable
    assert AnatomyReference.from_dict(good.to_dict()).reliable
    assert score(calibrated, without_tibia).plausible  # the tibia may be missed
    assert not score(calibrated, np.zeros_like(without_tibia)).plausible  # not everything
    # the z limit follows the largest |z| of the predictions, x Z_MARGIN, at most Z_LIMIT_MAX
    far = two_bones(8, gap=12, shape=(12, 60, 40))
    z = np.abs(reference.z_scores(measure_anatomy(far, STACK_SPACING, 2))["position"][1]).max()
    widened = reference.calibrated([measure_anatomy(far, STACK_SPACING, 2)])
    assert widened.z_limit == pytest.approx(min(max(Z_LIMIT, Z_MARGIN * z), Z_LIMIT_MAX))
    assert reference.calibrated([]) is reference
    maps = {"knee": [(two_bones(size), STACK_SPACING) for size in (7, 8, 9, 10)]}
    fit_anatomy(
        tmp_path, {"knee": ["femur", "tibia"]}, maps, {"knee": [(without_tibia, STACK_SPACING)]}
    )
    loaded = load_anatomy(tmp_path)["knee"]
    np.testing.assert_array_equal(loaded.optional, [False, True])
    assert loaded.z_limit == calibrated.z_limit


def test_measurements_record_the_anatomy_check(reference: AnatomyReference) -> None:
    appearance = decide({"knee": 0.5, "shoulder": 3.0}, Calibration(threshold=1.0))
    assert "anatomy_distance" not in appearance.to_dict()["candidates"]["knee"]  # none ran
    pieces = score(reference, two_bones(8, pieces=3))
    empty = score(reference, np.zeros((12, 40, 40), np.uint8))  # no structure: distance inf
    checked = replace(appearance, domain=None, anatomy={"knee": pieces, "shoulder": empty})
    evidence = checked.to_dict()
    assert json.loads(json.dumps(evidence, allow_nan=False)) == evidence
    assert evidence["decided_by"] == "anatomy"
    entry = evidence["candidates"]["knee"]
    assert entry["anatomy_plausible"] is False
    assert "tibia in 3 pieces" in entry["anatomy_problems"]
    assert evidence["candidates"]["shoulder"]["anatomy_distance"] is None


def rule(appearance, scores: dict, reliable):
    """The anatomy rule on fixed anatomy scores, recording which checks it asked for."""
    asked = []

    def anatomy(name: str) -> AnatomyScore:
        asked.append(name)
        return scores[name]

    decision = decide_by_anatomy(appearance, anatomy, reliable)
    assert sorted(decision.anatomy) == sorted(set(asked))
    return decision


def test_the_anatomy_rule() -> None:
    calibration = Calibration(threshold=1.0, temperature=1.0)
    appearance = decide({"ankle": 0.5, "knee": 3.0, "shoulder": 5.0}, calibration)
    assert appearance.domain == "ankle"  # knee and shoulder are beyond the threshold
    fits = AnatomyScore(1.0, True)
    fails = AnatomyScore(90.0, False, ("femur absent",))
    every = ("ankle", "knee", "shoulder")
    scores = {"ankle": fails, "knee": fits, "shoulder": fits}
    decision = rule(appearance, scores, every)
    assert decision.domain == "knee"  # the appearance threshold does not refuse a plausible one
    assert sorted(decision.anatomy) == ["ankle", "knee"]  # checked until one was accepted
    knee, shoulder = np.exp(-3.0), np.exp(-5.0)
    assert decision.confidence == pytest.approx(knee / (knee + shoulder))
    refused = rule(appearance, {n: fails for n in every}, every)
    assert refused.domain is None
    assert refusal_message(refused) == (  # the first candidate the rule tried, its first problem
        "refused: the scan fits none of this run's joints (nearest: ankle, predicted anatomy "
        "implausible: femur absent); pass --domain NAME to segment it anyway"
    )
    long = AnatomyScore(90.0, False, ("femoral_cartilage-tibial_cartilage " * 4, "femur absent"))
    message = refusal_message(rule(appearance, {n: long for n in every}, every))
    assert len(message) < 200 and "femur absent" not in message and " ...);" in message
    tied = decide({"ankle": 2.0, "knee": 2.0}, calibration)
    closer = rule(tied, {"ankle": AnatomyScore(3.0, True), "knee": fits}, every)
    assert closer.domain == "knee"


def test_the_anatomy_rule_vetoes_only_reliable_domains() -> None:
    """A domain whose own held-out predictions fail the check is accepted as by appearance (its
    refusal distance within the threshold), whatever its anatomy; a reliable one only when
    plausible."""
    calibration = Calibration(threshold=1.0, temperature=1.0)
    appearance = decide({"ankle": 0.5, "knee": 0.8, "shoulder": 5.0}, calibration)
    fits = AnatomyScore(1.0, True)
    fails = AnatomyScore(90.0, False, ("tibia in 4 pieces",))
    scores = {"ankle": fails, "knee": fails, "shoulder": fits}
    alone = rule(appearance, scores, ())
    assert alone.domain == "ankle" and alone.anatomy == {}  # appearance alone, nothing checked
    assert rule(appearance, scores, ("ankle",)).domain == "knee"
    # beyond the threshold, only a reliable domain with a plausible anatomy is accepted
    assert rule(appearance, scores, ("ankle", "knee")).domain is None
    assert rule(appearance, scores, ("ankle", "knee", "shoulder")).domain == "shoulder"
    no_shoulder = {**scores, "shoulder": fails}
    assert rule(appearance, no_shoulder, ("ankle", "knee", "shoulder")).domain is None
    assert rule(appearance, no_shoulder, ("knee",)).domain == "ankle"
    # an unreliable domain nearer in appearance does not win over a reliable plausible one
    near = decide({"elbow": 0.5, "knee": 0.8, "ankle": 0.9}, calibration)
    plausible_knee = {"elbow": fails, "knee": fits, "ankle": fails}
    assert rule(near, plausible_knee, ("knee", "ankle")).domain == "knee"
    assert rule(near, {**plausible_knee, "knee": fails}, ("knee", "ankle")).domain == "elbow"


# ------------------------------------------------------------------ through the predictor
TRAINING_SEEDS, VALIDATION_SEEDS = range(100, 106), (200, 201)  # the fixture's, and held out


@pytest.fixture(scope="module")
def anatomy_run(trained_run: Path, tmp_path_factory) -> Path:
    """A copy of the fixture run, its scans written as a study, with anatomy statistics measured
    from it afterwards (:func:`fit_run_anatomy_from_study`)."""
    root = tmp_path_factory.mktemp("anatomy")
    run = shutil.copytree(trained_run, root / "run")
    info = load_run_info(run)
    training, validation = {}, {}
    for domain in info.domains:
        folder = root / "study" / domain.folder
        for seed in (*TRAINING_SEEDS, *VALIDATION_SEEDS):
            image, label = make_scan(domain.name, seed)
            write_image(image, folder / "imagesTr" / f"s{seed}_0000.nii.gz")
            write_image(label, folder / "labelsTr" / f"s{seed}.nii.gz")
        write_manifest(folder, DatasetManifest(
            name=domain.folder, channel_names={"0": "MR"}, file_ending=".nii.gz",
            labels={"background": 0, **domain.structures}, numTraining=8,
        ))  # fmt: skip
        training[domain.name] = [f"s{seed}" for seed in TRAINING_SEEDS]
        validation[domain.name] = [f"s{seed}" for seed in VALIDATION_SEEDS]
    update = {"data_dir": str(root / "study"), "training_cases": training,
              "validation_cases": validation}  # fmt: skip
    save_run_info(run, info.model_copy(update=update))
    fit_run_anatomy_from_study(run)
    return run


@pytest.mark.trains
def test_anatomy_statistics_measured_after_training(anatomy_run: Path) -> None:
    anatomy = load_anatomy(anatomy_run)
    assert {d: (a.scans, a.calibrated_on) for d, a in anatomy.items()} == {
        "knee": (6, 2), "shoulder": (6, 2)
    }  # fmt: skip
    lut = DomainLabels("knee", DOMAINS["knee"]).local_lookup()
    volumes = []
    for seed in TRAINING_SEEDS:
        case = preprocess_case(*make_scan("knee", seed), PREPROCESSING)
        measure = measure_anatomy(lut[case.label], case.inverse.slice_spacing, 2)
        volumes.append(np.log(measure.volume_ml))
    np.testing.assert_allclose(anatomy["knee"].log_volume.mean, np.mean(volumes, axis=0))


def test_anatomy_from_a_study_that_lacks_the_runs_cases(anatomy_run: Path, tmp_path) -> None:
    run = shutil.copytree(anatomy_run, tmp_path / "run")
    info = load_run_info(run)
    extra = {**info.training_cases, "knee": [*info.training_cases["knee"], "s999"]}
    save_run_info(run, info.model_copy(update={"training_cases": extra}))
    with pytest.raises(RunError, match=r"Dataset001_knee: the run's training cases \['s999'\]"):
        fit_run_anatomy_from_study(run)
    save_run_info(run, info.model_copy(update={"training_cases": {}}))
    with pytest.raises(RunError, match="lists no training cases"):
        fit_run_anatomy_from_study(run)


@pytest.fixture(scope="module")
def anatomy_predictor(anatomy_run: Path) -> Predictor:
    return Predictor.from_run(anatomy_run, batch_size=8)


@pytest.mark.trains
def test_joint_scans_are_recognized_with_the_anatomy_rule(anatomy_predictor) -> None:
    recognizer = anatomy_predictor.recognizer
    assert recognizer.uses_anatomy
    assert all(reference.reliable for reference in recognizer.anatomy.values())
    for domain in DOMAINS:
        decision = anatomy_predictor.recognize(make_scan(domain, 7)[0])
        assert decision.domain == domain, decision.describe()
        assert list(decision.anatomy) == [domain]  # the first candidate passed: one inference
        assert decision.anatomy[domain].plausible


@pytest.mark.trains
@pytest.mark.parametrize(
    "make",
    [noise_scan, lambda: brain_like(SHAPE, SPACING), lambda: abdomen_like(SHAPE, SPACING)],
    ids=["noise", "brain-like", "abdomen-like"],
)
def test_non_joint_volumes_are_refused_by_anatomy(anatomy_predictor, make) -> None:
    with pytest.raises(DomainRecognitionError, match="none of this run's joints") as error:
        anatomy_predictor.recognize(make())
    assert "implausible" in str(error.value) and len(str(error.value)) < 200
    assert error.value.decision.domain is None and error.value.decision.anatomy


def test_runs_without_anatomy_statistics_decide_by_appearance(trained_run: Path, caplog) -> None:
    with caplog.at_level(logging.INFO, logger="jointseg.recognition.recognizer"):
        predictor = Predictor.from_run(trained_run, batch_size=8)
    assert not predictor.recognizer.uses_anatomy
    assert "decides by appearance alone" in caplog.text
    image, _ = make_scan("knee", 7)
    decision = predictor.recognize(image)
    assert decision.domain == "knee" and decision.anatomy == {}


def test_pair_order_is_itertools_combinations() -> None:
    labels = np.zeros((4, 30, 4), np.uint8)
    for value, y in ((1, 0), (2, 10), (3, 25)):
        labels[:, y : y + 2, :] = value
    measure = measure_anatomy(labels, (1.0, 1.0, 1.0), 3)
    size = (3 * 32) ** (1 / 3)
    centres = [0.5, 10.5, 25.5]
    expected = [abs(centres[i] - centres[j]) / size for i, j in combinations(range(3), 2)]
    np.testing.assert_allclose(measure.distance, expected)
