"""The elbow and the knee's second site (``knee_t1``): defined by specs and tables alone,
deterministic per seed, passing ``jointseg check``, and leaving the other joints' subjects as
they were."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from jointseg.data.checks import check_path
from jointseg.data.manifest import list_cases, load_manifest
from jointseg.synth.anatomy import JOINTS, joint_spec
from jointseg.synth.generate import subject_params, synthesize_study
from jointseg.synth.subject import PROTOCOLS

SCALE = 0.3
NEW = ["elbow", "knee_t1"]


def test_specs_and_protocols() -> None:
    elbow = joint_spec("elbow")
    assert elbow.folder == "Dataset004_Elbow" and elbow.model == "myoarm_r"
    assert elbow.labels == {"background": 0, "humerus": 1, "radius": 2, "ulna": 3}
    assert set(elbow.angles) == {"elbow_flexion_r", "pro_sup_r"}
    site = joint_spec("knee_t1")
    assert site.folder == "Dataset005_KneeT1" and site.region == "knee"
    assert site.labels == joint_spec("knee").labels and site.bones == joint_spec("knee").bones
    assert PROTOCOLS["knee_t1"].weighting == "T1" and not PROTOCOLS["knee_t1"].fat_sat
    assert PROTOCOLS["knee"].fat_sat  # another protocol than the knee's own
    assert len({s.dataset_id for s in JOINTS.values()}) == len(JOINTS)


def test_existing_joints_draw_the_same_subjects() -> None:
    """New joints come after the old ones: the old joints' seed keys are unchanged."""
    assert list(JOINTS)[:3] == ["ankle", "knee", "shoulder"]
    knee = subject_params("knee", "train", 0, 0)
    assert knee.seed == [0, 1, 0, 0] and knee.shape_modes  # the knee keeps its shape modes
    assert subject_params("knee_t1", "train", 0, 0).shape_modes  # and so does its other site


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth") / "study"
    return synthesize_study(out, 1, 1, NEW, 4, 1, False, scale=SCALE, progress=False)


@pytest.mark.slow
def test_new_datasets_pass_the_checks_and_hold_every_bone(study: Path) -> None:
    report = check_path(study, progress=False)
    assert not report.errors, report.errors
    for joint in NEW:
        folder = study / joint_spec(joint).folder
        manifest = load_manifest(folder)
        assert manifest.labels == joint_spec(joint).labels
        assert manifest.model_extra["protocol"]["weighting"] == PROTOCOLS[joint].weighting
        # generator 3's fields may cut a bone out of one scan: every bone in the split's scans
        for split in ("train", "test"):
            values = set()
            for case in list_cases(folder, split):
                values |= set(np.unique(sitk.GetArrayFromImage(sitk.ReadImage(str(case.label)))))
            assert values <= set(manifest.labels.values()), (joint, split, values)
            assert len(values) >= len(manifest.labels) - 1, (joint, split, values)
    record = json.loads((study / "synth.json").read_text(encoding="utf-8"))
    assert record["joints"] == {j: joint_spec(j).folder for j in NEW}


@pytest.mark.slow
def test_new_joints_are_deterministic_per_seed(study: Path, tmp_path: Path) -> None:
    again = synthesize_study(tmp_path / "again", 1, 0, ["elbow"], 4, 1, False, scale=SCALE,
                             progress=False)  # fmt: skip
    folder = joint_spec("elbow").folder
    for sub in ("imagesTr", "labelsTr"):
        for path in sorted((study / folder / sub).iterdir()):
            assert path.read_bytes() == (again / folder / sub / path.name).read_bytes()
    other = synthesize_study(tmp_path / "other", 1, 0, ["elbow"], 5, 1, False, scale=SCALE,
                             progress=False)  # fmt: skip
    image = f"{folder}/imagesTr/elbow_000_0000.nii.gz"
    assert (other / image).read_bytes() != (study / image).read_bytes()
