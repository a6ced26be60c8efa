"""Per-domain recognition references, measured on the training scans at the end of training.

``RUN/domain_reference.json`` holds, for every domain of the run, the mean and standard
deviation of its training scans' descriptors (see :mod:`jointseg.inference.domain`);
``RUN/domain_calibration.json`` is then written from the distances of the domain's held-out
scans (its training scans when it has none) to that reference. Both come from the training
slice cache: the slices there are the scans preprocessed exactly as recognition preprocesses a
new scan.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jointseg.inference.domain import (
    CALIBRATION_FACTOR,
    Calibration,
    ReferenceStats,
    candidate_distance,
    scan_descriptor,
)
from jointseg.inference.slices import subsample_tensor
from jointseg.utils.atomic import atomic_write_json

REFERENCE_FILE = "domain_reference.json"
FORMAT_VERSION = 1


def save_references(run_dir: str | Path, references: dict[str, ReferenceStats]) -> Path:
    """Write the references into the run folder (atomically)."""
    path = Path(run_dir) / REFERENCE_FILE
    payload = {
        "format_version": FORMAT_VERSION,
        "domains": {
            name: {"scans": ref.scans, "mean": ref.mean.tolist(), "std": ref.std.tolist()}
            for name, ref in references.items()
        },
    }
    atomic_write_json(path, payload)
    return path


def load_references(run_dir: str | Path) -> dict[str, ReferenceStats]:
    """The run's references (empty when it has none)."""
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return {
            name: ReferenceStats(
                np.asarray(entry["mean"], dtype=np.float64),
                np.asarray(entry["std"], dtype=np.float64),
                int(entry["scans"]),
            )
            for name, entry in data["domains"].items()
        }
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: unreadable domain reference ({error}); delete it to recognize domains "
            "from the BN running statistics instead"
        ) from error


def fit_recognition(
    run_dir: str | Path,
    volumes: dict[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    factor: float = CALIBRATION_FACTOR,
    batch_size: int = 16,
) -> Calibration | None:
    """Measure the references and the calibration of a trained run and store both.

    ``volumes[domain] = (training volumes, held-out volumes)``, each a preprocessed slice
    stack [S, H, W]. Returns the calibration, or None (nothing written) when a domain has
    fewer than two training volumes: recognition then uses the BN running statistics.
    """
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run_dir, calibrate=False)
    if any(len(volumes.get(name, ((), ()))[0]) < 2 for name in predictor.domains):
        return None
    references: dict[str, ReferenceStats] = {}
    for name in predictor.domains:
        route = predictor.routes[name]
        net = predictor.networks[route.model]
        descriptors = [
            scan_descriptor(net, subsample_tensor(v), route.index, batch_size)
            for v in volumes[name][0]
        ]
        references[name] = ReferenceStats.fit(descriptors)
    predictor.references = references
    in_domain: dict[str, list[float]] = {}
    for name in predictor.domains:
        train, held_out = volumes[name]
        candidate = predictor.candidate(name)
        in_domain[name] = [
            candidate_distance(candidate, subsample_tensor(v), batch_size)
            for v in (held_out or train)
        ]
    calibration = Calibration.from_distances(in_domain, factor)
    calibration.source = "reference"
    save_references(run_dir, references)
    calibration.save(run_dir)
    return calibration
