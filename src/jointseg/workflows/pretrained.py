"""Packing a trained run folder into the model that ships (``jointseg predict pretrained``).

A packed run is the least a prediction reads, plus how it was made and what it must output::

    config.yaml                      the run's resolved config (preprocessing, inference)
    run.json                         the run's index, without its study's paths and case lists
    models/<model>/model.safetensors weights, floating point ones as float16 (BN statistics
                                     float32); safetensors: loading runs no code
    models/<model>/model.json        architecture and metadata (+ "packed": dtype, source)
    domain_reference.json            recognition references (``--domain auto``), when the run
                                     has them
    domain_calibration.json          their calibration: the run's, else measured on its study
                                     with the packed weights (when the study is at hand)
    anatomy_reference.json           each domain's anatomy statistics (``--domain auto``)
    postprocessing.json              the postprocessing decision, when the run has one
    training.json                    how it was trained: config, commands, steps, time, data
                                     seed, commit, evaluation summary
    reference_scan.nii.gz            a small fixed synthetic knee scan
    reference_labels.nii.gz          the packed model's label map of it
    reference_output.json            its hash, voxel counts, a few voxels' probabilities and
                                     the recognized domain: :func:`check_reference_output`
                                     recomputes them

The shape prior, checkpoints, logs and evaluation outputs stay behind. :func:`pack_run` writes
into a temporary folder beside the destination and swaps it in whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from jointseg._version import __version__
from jointseg.data.io import read_image, write_image
from jointseg.inference.packaged import packaged_run_dir
from jointseg.inference.predictor import Predictor
from jointseg.models.checkpoint import INDEX_FILE, WEIGHTS_FILE, read_index
from jointseg.recognition.study import study_scans
from jointseg.runs import RunError, RunFolder, RunInfo
from jointseg.utils.atomic import atomic_write_json
from jointseg.workflows.calibration import calibrate_on_study

logger = logging.getLogger(__name__)

TRAINING_RECORD = "training.json"
REFERENCE_RECORD = "reference_output.json"
REFERENCE_SCAN = "reference_scan.nii.gz"
REFERENCE_LABELS = "reference_labels.nii.gz"
OPTIONAL_FILES = (  # copied when the run has them
    RunFolder.DOMAIN_REFERENCE,
    RunFolder.CALIBRATION,
    RunFolder.ANATOMY_REFERENCE,
    RunFolder.POSTPROCESSING,
)
KEEP_FLOAT32 = ("running_mean", "running_var")  # BN statistics: small, and range-sensitive
# The reference scan: a held-out knee of the synthetic generator, small (tests run in seconds)
REFERENCE_JOINT, REFERENCE_SEED, REFERENCE_SCALE = "knee", 20260, 0.3
REFERENCE_VOXELS = 6  # voxels whose class probabilities are recorded
# Reproduced means: at least this share of the label map's voxels agree, and the recorded
# probabilities within this distance (float32 kernels differ by about 1e-5 between CPUs)
LABEL_AGREEMENT, PROBABILITY_TOLERANCE = 0.999, 2e-3
UNSAFE_SUFFIXES = (".ckpt", ".pt", ".pth", ".pkl", ".pickle", ".bin")


def pack_run(
    run_dir: Path,
    dest: Path | None = None,
    training: dict[str, Any] | None = None,
    reference_scan: sitk.Image | None = None,
) -> Path:
    """Pack the trained run ``run_dir`` into ``dest`` (default: the package's model folder,
    :func:`~jointseg.inference.packaged.packaged_run_dir`); returns ``dest``.

    ``training`` is recorded in ``training.json`` (with the run's evaluation summary when it
    has one); ``reference_scan`` defaults to a small synthetic knee (:func:`reference_scan`).
    """
    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    dest = Path(dest) if dest is not None else packaged_run_dir()
    info = run.info()
    if not run.config_file.is_file() or not info.models:
        raise RunError(
            f"{run_dir}: not a complete trained run ({RunFolder.CONFIG} and models needed)"
        )
    work = dest.with_name(dest.name + ".packing")
    packed = RunFolder(work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    shutil.copy2(run.config_file, packed.config_file)
    for name in OPTIONAL_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, work / name)
    parameters = 0
    for entry in info.models:
        parameters += pack_model(run_dir / entry.path, work / entry.path, f"{entry.path}")
    unbound = {"data_dir": None, "training_cases": {}, "validation_cases": {}}
    packed.save_info(info.model_copy(update=unbound))  # no paths of the training machine
    if not packed.calibration_file.is_file():
        _calibrate_packed(packed, info)
    record = {
        **(training or {}),
        "packed": {"source_run": run_dir.resolve().name, "jointseg_version": __version__,
                   "parameters": parameters, "weights_dtype": "float16",
                   "weights_bytes": weights_bytes(work)},
    }  # fmt: skip
    summary = run.evaluation_dir / "summary.json"
    if summary.is_file() and "evaluation" not in record:
        evaluation = json.loads(summary.read_text(encoding="utf-8"))
        record["evaluation"] = {k: v for k, v in evaluation.items() if k != "data_dir"}
    atomic_write_json(work / TRAINING_RECORD, record)
    record_reference_output(work, reference_scan)
    _swap_in(work, dest)
    logger.info("packed %s into %s (%d parameters, %.1f MB of weights)", run_dir, dest,
                parameters, record["packed"]["weights_bytes"] / 1e6)  # fmt: skip
    return dest


def _calibrate_packed(packed: RunFolder, info: RunInfo) -> None:
    """Measure the packed model's recognition calibration on the run's study (``info``: the
    run's index, with its study and case lists); a warning when the study is not at hand."""
    if not study_scans(info):
        logger.warning(
            "%s: the run has no %s and its study (%s) is not at hand: the packed model's "
            "--domain auto uses the default calibration",
            packed.path, RunFolder.CALIBRATION, info.data_dir or "none recorded",
        )  # fmt: skip
        return
    calibrate_on_study(Predictor.from_run(packed.path), info, packed.path)


def pack_model(source: Path, target: Path, name: str = "") -> int:
    """Copy a model folder with its floating-point weights as float16 (BN running statistics,
    and any tensor float16 cannot hold, stay float32); returns its parameter count."""
    index = read_index(source)
    state = load_file(str(source / WEIGHTS_FILE))
    packed = {}
    for key, tensor in state.items():
        half = tensor.half() if tensor.is_floating_point() else tensor
        keep = not tensor.is_floating_point() or key.endswith(KEEP_FLOAT32)
        keep = keep or not bool(torch.isfinite(half).all())
        packed[key] = tensor if keep else half
    target.mkdir(parents=True, exist_ok=True)
    with safe_open(str(source / WEIGHTS_FILE), "pt") as handle:
        metadata = handle.metadata()
    save_file(packed, str(target / WEIGHTS_FILE), metadata=metadata)
    index["metadata"] = {**index.get("metadata", {}), "packed": {"dtype": "float16", "from": name}}
    atomic_write_json(target / INDEX_FILE, index)
    return sum(t.numel() for k, t in state.items() if t.is_floating_point())


def weights_bytes(folder: Path) -> int:
    """Bytes of every weights file under ``folder``."""
    return sum(p.stat().st_size for p in Path(folder).rglob("*.safetensors"))


def _swap_in(work: Path, dest: Path) -> None:
    """Replace ``dest`` by ``work``; the old folder goes only once the new one is in place."""
    old = dest.with_name(dest.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        dest.rename(old)
    work.rename(dest)
    shutil.rmtree(old, ignore_errors=True)


# ----------------------------------------------------------------------- reference output
def reference_scan() -> sitk.Image:
    """The small fixed synthetic scan the packed model's output is recorded on."""
    from jointseg.data.io import array_to_image
    from jointseg.synth.generate import subject_params
    from jointseg.synth.synthesis import synthesize_subject

    params = subject_params(REFERENCE_JOINT, "test", 0, REFERENCE_SEED)
    volume = synthesize_subject(params, REFERENCE_SCALE)
    geometry = volume.geometry
    return array_to_image(
        volume.image,
        spacing=geometry.spacing,
        origin=geometry.origin,
        direction=geometry.direction.ravel(),
    )


def _reference_domain(folder: Path) -> str:
    names = [d.name for d in RunFolder(folder).info().domains]
    return REFERENCE_JOINT if REFERENCE_JOINT in names else names[0]


def _outputs(folder: Path, scan: sitk.Image, domain: str) -> tuple[np.ndarray, np.ndarray, Any]:
    """(label map, probabilities [z, y, x, classes], auto decision) of the packed model."""
    predictor = Predictor.from_run(folder)
    prediction = predictor.predict(scan, domain, return_probabilities=True)
    labels = sitk.GetArrayFromImage(prediction.label_map)
    probabilities = sitk.GetArrayFromImage(prediction.probabilities)
    decision = predictor.recognize(scan, refuse=False)
    return labels, probabilities, decision


def _probe_voxels(labels: np.ndarray) -> list[tuple[int, int, int]]:
    """Voxels to record: the one nearest each structure's centroid, then the volume's centre
    and corner voxels, ``REFERENCE_VOXELS`` in all."""
    voxels: list[tuple[int, int, int]] = []
    for value in np.unique(labels)[1:]:
        where = np.argwhere(labels == value)
        centre = where.mean(axis=0)
        voxels.append(tuple(int(v) for v in where[np.argmin(((where - centre) ** 2).sum(1))]))
    shape = np.asarray(labels.shape)
    voxels += [tuple(int(v) for v in shape // 2), (0, 0, 0), tuple(int(v) for v in shape - 1)]
    return list(dict.fromkeys(voxels))[:REFERENCE_VOXELS]


def label_digest(labels: np.ndarray) -> str:
    """SHA-256 of a label map's shape, dtype and voxels (C order)."""
    digest = hashlib.sha256(f"{labels.shape}{labels.dtype}".encode())
    digest.update(np.ascontiguousarray(labels).tobytes())
    return digest.hexdigest()


def record_reference_output(folder: Path, scan: sitk.Image | None = None) -> dict[str, Any]:
    """Predict the reference scan with the packed model in ``folder`` and record the output
    (``reference_output.json``, the scan and the label map beside it); returns the record."""
    folder = Path(folder)
    scan = scan if scan is not None else reference_scan()
    write_image(scan, folder / REFERENCE_SCAN)
    scan = read_image(folder / REFERENCE_SCAN)  # what the check reads back
    domain = _reference_domain(folder)
    labels, probabilities, decision = _outputs(folder, scan, domain)
    label_image = sitk.GetImageFromArray(labels)
    label_image.CopyInformation(scan)
    write_image(label_image, folder / REFERENCE_LABELS)
    values, counts = np.unique(labels, return_counts=True)
    record = {
        "scan": REFERENCE_SCAN,
        "labels": REFERENCE_LABELS,
        "domain": domain,
        "label_sha256": label_digest(labels),
        "label_voxels": {str(int(v)): int(c) for v, c in zip(values, counts, strict=True)},
        "probabilities": [
            {"voxel": list(v), "values": [round(float(p), 6) for p in probabilities[v]]}
            for v in _probe_voxels(labels)
        ],
        "recognized": {"domain": decision.domain, "confidence": decision.confidence},
        "tolerance": {"label_agreement": LABEL_AGREEMENT, "probability": PROBABILITY_TOLERANCE},
        "torch_version": torch.__version__,
    }
    atomic_write_json(folder / REFERENCE_RECORD, record)
    return record


def check_reference_output(folder: Path) -> list[str]:
    """Recompute the packed model's output on its reference scan; one sentence per difference
    from the record (an empty list: reproduced). Also refuses weights that are not
    safetensors."""
    folder = Path(folder)
    problems = [
        f"{p.relative_to(folder)}: a pickle-based file in a packed model"
        for p in sorted(folder.rglob("*"))
        if p.suffix in UNSAFE_SUFFIXES
    ]
    record = json.loads((folder / REFERENCE_RECORD).read_text(encoding="utf-8"))
    scan = read_image(folder / record["scan"])
    labels, probabilities, decision = _outputs(folder, scan, record["domain"])
    expected = sitk.GetArrayFromImage(read_image(folder / record["labels"]))
    if labels.shape != expected.shape:
        return [*problems, f"label map of shape {labels.shape}, recorded {expected.shape}"]
    agreement = float(np.mean(labels == expected))
    if agreement < record["tolerance"]["label_agreement"]:
        problems.append(f"label maps agree on {agreement:.4%} of voxels, recorded one needs "
                        f"{record['tolerance']['label_agreement']:.1%}")  # fmt: skip
    tolerance = record["tolerance"]["probability"]
    for probe in record["probabilities"]:
        voxel = tuple(probe["voxel"])
        found = probabilities[voxel]
        gap = float(np.max(np.abs(found - np.asarray(probe["values"]))))
        if gap > tolerance:
            problems.append(f"probabilities at voxel {voxel}: {np.round(found, 4).tolist()}, "
                            f"recorded {probe['values']} (off by {gap:.2g})")  # fmt: skip
    if decision.domain != record["recognized"]["domain"]:
        problems.append(f"--domain auto chose {decision.domain!r}, recorded "
                        f"{record['recognized']['domain']!r}")  # fmt: skip
    if not problems and label_digest(labels) != record["label_sha256"]:
        logger.info("reference label map reproduced within tolerance, not bit for bit")
    return problems


__all__ = [
    "REFERENCE_RECORD",
    "TRAINING_RECORD",
    "check_reference_output",
    "label_digest",
    "pack_model",
    "pack_run",
    "record_reference_output",
    "reference_scan",
]
