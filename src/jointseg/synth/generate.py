"""``jointseg synth``: write a study of synthetic pediatric joint MR datasets.

One dataset per joint in the nnU-Net v2 raw layout (``DatasetXXX_Name/imagesTr, labelsTr,
imagesTs, labelsTs, dataset.json``) and ``synth.json`` at the top recording every subject's
parameters. Subject ``i`` of a joint and split draws from its own ``SeedSequence`` child, so the
output is the same, byte for byte, whatever ``jobs`` is and whatever the other counts are.
"""

from __future__ import annotations

import json
import multiprocessing
import re
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

from jointseg.data.io import array_to_image, write_image
from jointseg.data.manifest import DatasetManifest, write_manifest
from jointseg.synth.anatomy import JOINTS, joint_spec, require_generator_packages
from jointseg.synth.subject import PROTOCOLS, SubjectParams, sample_subject
from jointseg.synth.variants import typical
from jointseg.utils.atomic import atomic_write_json, remove_temporaries
from jointseg.utils.faults import fault_point

#: Bumped whenever the same seed would give different images.
GENERATOR_VERSION = 3
SPLITS = {"train": ("imagesTr", "labelsTr"), "test": ("imagesTs", "labelsTs")}
FILE_ENDING = ".nii.gz"


def case_id(joint: str, split: str, index: int) -> str:
    """``knee_007`` for training subjects, ``knee_test_002`` for held-out ones."""
    return f"{joint}_{index:03d}" if split == "train" else f"{joint}_test_{index:03d}"


#: How far subjects vary in view and maturity: ``wide`` (generator 3: fields of view 0.85-1.8x
#: the protocol's, moved along the limb; skeletal age off calendar age; scars, fat pads, marrow
#: changes) or ``typical`` (the same subjects at the protocol's own view and maturity:
#: :func:`jointseg.synth.variants.typical`).
VARIATIONS = ("wide", "typical")


def _check_variation(variation: str) -> None:
    if variation not in VARIATIONS:
        raise ValueError(f"unknown variation {variation!r}; choose from {', '.join(VARIATIONS)}")


def subject_params(
    joint: str, split: str, index: int, seed: int, variation: str = "wide"
) -> SubjectParams:
    """The parameters of one subject; depends only on (seed, joint, split, index) and the
    ``variation`` (:data:`VARIATIONS`), which changes nothing but the view and maturity."""
    _check_variation(variation)
    key = (list(JOINTS).index(joint), 0 if split == "train" else 1, index)
    sequence = np.random.SeedSequence(seed, spawn_key=key)
    rng = np.random.default_rng(sequence)
    params = sample_subject(joint, case_id(joint, split, index), split, rng, [seed, *key])
    return typical(params) if variation == "typical" else params


def _validate(
    subjects: int, test_subjects: int, joints: list[str], seed: int, jobs: int, scale: float
) -> list[str]:
    if subjects < 1:
        raise ValueError(f"--subjects must be at least 1, got {subjects}")
    if test_subjects < 0:
        raise ValueError(f"--test-subjects must be 0 or more, got {test_subjects}")
    if max(subjects, test_subjects) > 999:
        raise ValueError("at most 999 subjects per joint and split")
    if seed < 0:
        raise ValueError(f"--seed must be non-negative, got {seed}")
    if jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {jobs}")
    if not 0.1 <= scale <= 1.0:
        raise ValueError(f"scale must be in [0.1, 1], got {scale}")
    if not joints:
        raise ValueError("no joints given; choose from " + ", ".join(JOINTS))
    unique = list(dict.fromkeys(joints))
    for joint in unique:
        joint_spec(joint)
    return unique


def render_case(
    params: SubjectParams,
    dataset_dir: str,
    scale: float = 1.0,
    randomize: bool = False,
    imaging: str | None = None,
) -> dict:
    """Synthesize one subject and write its image and label; returns label voxel counts (and,
    ``randomize``d, the rendering's parameters). ``imaging``: image the subject with that
    protocol instead of its joint's own (synth/protocol_swap.py)."""
    from jointseg.synth.synthesis import synthesize_subject

    extra: dict = {}
    if randomize and imaging is not None:
        raise ValueError("a randomized rendering has no protocol; give randomize or imaging")
    if imaging is not None:  # the same subject under another protocol
        from jointseg.synth.protocol_swap import synthesize_under_protocol

        volume = synthesize_under_protocol(params, imaging, scale)
        extra = {"imaging": imaging}
    elif randomize:  # domain-randomized rendering of the same anatomy (synth/randomize.py)
        from jointseg.synth.randomize import sample_rendering, synthesize_randomized

        rendering = sample_rendering(params)
        volume = synthesize_randomized(params, rendering, scale)
        extra = {"rendering": rendering.to_dict()}
    else:
        volume = synthesize_subject(params, scale)
    geometry = volume.geometry
    info = dict(
        spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction.ravel()
    )
    image_dir, label_dir = SPLITS[params.split]
    folder = Path(dataset_dir)
    write_image(
        array_to_image(volume.image, **info),
        folder / image_dir / f"{params.case_id}_0000{FILE_ENDING}",
    )
    write_image(
        array_to_image(volume.label, **info), folder / label_dir / f"{params.case_id}{FILE_ENDING}"
    )
    counts = np.bincount(volume.label.ravel())
    return {"case_id": params.case_id, "voxels": [int(c) for c in counts], **extra}


def _render_task(task: tuple[SubjectParams, str, float, bool]) -> dict:
    return render_case(*task)


def _remove_stale(dataset_dir: Path, joint: str, keep: set[str]) -> None:
    """Delete case files of an earlier run (more subjects) that this run does not write."""
    pattern = re.compile(rf"^{joint}_(test_)?\d{{3}}(_0000)?{re.escape(FILE_ENDING)}$")
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        folder = dataset_dir / sub
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            if pattern.match(path.name) and path.name not in keep:
                path.unlink()


def _manifest(
    joint: str, subjects: int, test_subjects: int, seed: int, randomize: bool = False
) -> DatasetManifest:
    if randomize:
        from jointseg.synth.randomize import randomized_manifest

        return randomized_manifest(_manifest(joint, subjects, test_subjects, seed))
    from jointseg._version import __version__

    spec = joint_spec(joint)
    protocol = PROTOCOLS[joint]
    return DatasetManifest(
        name=spec.title,
        description=(
            f"Synthetic pediatric {joint} MR (ages 4-17) with bone labels, from MyoSuite bone "
            f"surfaces posed by MuJoCo; {protocol.weighting}-weighted "
            f"{'fat-suppressed ' if protocol.fat_sat else ''}"
            f"{'spin echo' if protocol.sequence == 'se' else 'gradient echo'}, "
            f"{protocol.plane} slices."
        ),
        reference="jointseg synth (see synth.json at the study's top)",
        licence="CC0-1.0",
        release=f"jointseg {__version__}, generator {GENERATOR_VERSION}, seed {seed}",
        tensorImageSize="3D",
        channel_names={"0": "MR"},
        labels=spec.labels,
        numTraining=subjects,
        numTest=test_subjects,
        file_ending=FILE_ENDING,
        joint=joint,
        protocol={
            "plane": protocol.plane,
            "sequence": protocol.sequence,
            "weighting": protocol.weighting,
            "fat_suppression": protocol.fat_sat,
            "matrix": protocol.matrix,
        },
    )


def same_study(
    out: Path,
    subjects: int,
    test_subjects: int,
    joints: list[str],
    seed: int,
    *,
    scale: float = 1.0,
    randomize: bool = False,
    variation: str = "wide",
) -> bool:
    """Whether ``out`` holds the study these arguments synthesize: its record
    (``synth.json``, or the randomized one) names this generator version, the same joints,
    counts, seed, scale and variation."""
    from jointseg.synth.randomize import RECORD

    record = Path(out) / (RECORD if randomize else "synth.json")
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return (
        data.get("generator_version") == GENERATOR_VERSION
        and set(data.get("joints", {})) == set(joints)
        and (data.get("subjects"), data.get("test_subjects")) == (subjects, test_subjects)
        and (data.get("seed"), data.get("scale")) == (seed, scale)
        and data.get("variation", "wide") == variation
    )


def ensure_study(
    out: Path,
    subjects: int,
    test_subjects: int,
    joints: list[str],
    seed: int,
    jobs: int,
    preview: bool,
    **options,
) -> bool:
    """:func:`synthesize_study` (``options``: its keyword arguments) unless ``out`` already
    holds that study (:func:`same_study`: a study of another generator version, counts, seed,
    scale or variation is synthesized again); True when it synthesized."""
    kept = {k: options[k] for k in ("scale", "randomize", "variation") if k in options}
    if same_study(out, subjects, test_subjects, joints, seed, **kept):
        return False
    synthesize_study(out, subjects, test_subjects, joints, seed, jobs, preview, **options)
    return True


def synthesize_study(
    out: Path,
    subjects: int,
    test_subjects: int,
    joints: list[str],
    seed: int,
    jobs: int,
    preview: bool,
    *,
    scale: float = 1.0,
    progress: bool = True,
    randomize: bool = False,
    variation: str = "wide",
) -> Path:
    """Write one dataset per joint under ``out`` and ``out/synth.json``; returns ``out``.

    ``variation``: how far subjects vary in view and maturity (:data:`VARIATIONS`).

    ``scale`` < 1 shrinks every volume's matrix and slice count (fast tests); ``progress``
    shows a tqdm bar. ``randomize`` renders the same subjects with random contrasts and
    acquisitions instead (synth/randomize.py) into ``Dataset1XX_<Joint>Randomized`` folders and
    ``out/synth_randomized.json``.
    """
    from tqdm import tqdm

    from jointseg._version import __version__
    from jointseg.synth.randomize import RECORD, randomized_folder

    joints = _validate(subjects, test_subjects, list(joints), seed, jobs, scale)
    _check_variation(variation)
    require_generator_packages()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out}: exists and is not a folder")
    out.mkdir(parents=True, exist_ok=True)
    remove_temporaries(out, recursive=True)  # left by a killed run; this one rewrites all
    tasks: list[tuple[SubjectParams, str, float, bool]] = []
    for joint in joints:
        dataset_dir = out / (randomized_folder(joint) if randomize else joint_spec(joint).folder)
        keep: set[str] = set()
        for split, count in (("train", subjects), ("test", test_subjects)):
            for index in range(count):
                params = subject_params(joint, split, index, seed, variation)
                tasks.append((params, str(dataset_dir), scale, randomize))
                keep |= {f"{params.case_id}_0000{FILE_ENDING}", f"{params.case_id}{FILE_ENDING}"}
        _remove_stale(dataset_dir, joint, keep)
        write_manifest(dataset_dir, _manifest(joint, subjects, test_subjects, seed, randomize))

    bar = tqdm(total=len(tasks), desc="synth", unit="subject", disable=not progress)
    results: dict[str, dict] = {}
    if jobs == 1 or len(tasks) == 1:
        for task in tasks:
            result = _render_task(task)
            results[result["case_id"]] = result
            fault_point("synth.case")
            bar.update()
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=context) as pool:
            for result in pool.map(_render_task, tasks, chunksize=1):
                results[result["case_id"]] = result
                fault_point("synth.case")
                bar.update()
    bar.close()

    record = {
        "generator": "jointseg.synth",
        "jointseg_version": __version__,
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "variation": variation,
        "scale": scale,
        "joints": {j: randomized_folder(j) if randomize else joint_spec(j).folder for j in joints},
        "subjects": subjects,
        "test_subjects": test_subjects,
        "cases": [
            {
                **params.to_dict(),
                "label_voxels": results[params.case_id]["voxels"],
                **({"rendering": results[params.case_id]["rendering"]} if randomize else {}),
            }
            for params, _, _, _ in tasks
        ],
    }
    if randomize:
        record["randomized"] = True
    atomic_write_json(out / (RECORD if randomize else "synth.json"), record)
    if preview:
        from jointseg.synth.preview import write_previews

        write_previews(out, joints, randomize)
    return out
