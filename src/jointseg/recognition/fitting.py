"""Measuring a trained run's recognition references and calibration (after training).

Each domain's reference is fitted on its training scans as it runs every domain's training scans
(:class:`~jointseg.recognition.references.DomainReference`); the calibration on the distances of
its held-out scans (its training scans when it has none) to that reference. A run whose
references cannot be fitted (a domain with one training scan) is calibrated on the BN running
statistics distances instead (:func:`fit_calibration`). Each domain's anatomy statistics are
measured on its training label maps (:func:`fit_anatomy`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from jointseg.models.inferer import WholeViewInferer
from jointseg.models.network import Route
from jointseg.recognition.anatomy import AnatomyReference, measure_anatomy, save_anatomy
from jointseg.recognition.calibration import (
    CALIBRATION_FACTOR,
    Calibration,
    calibration_from_scores,
)
from jointseg.recognition.decision import Candidate
from jointseg.recognition.features import (
    scan_features,
    shared_context_slices,
    subsample_tensor,
)
from jointseg.recognition.references import DomainReference, save_references
from jointseg.recognition.study import in_domain_distances


def fit_recognition(
    run_dir: str | Path,
    paths: Mapping[str, Route],
    volumes: Mapping[str, tuple[Sequence[np.ndarray], Sequence[np.ndarray]]],
    factor: float = CALIBRATION_FACTOR,
    batch_size: int = 16,
    progress: bool = True,
) -> Calibration | None:
    """Measure the references and the calibration of a trained run and store both.

    ``volumes[domain] = (training volumes, held-out volumes)``, each a preprocessed slice
    stack [S, H, W]. Returns the calibration, or None (nothing written) when a domain has
    fewer than two training volumes: recognition then uses the BN running statistics.
    """
    if any(len(volumes.get(name, ((), ()))[0]) < 2 for name in paths):
        return None
    k = shared_context_slices(paths.values())
    subsamples = {
        name: ([subsample_tensor(v, k) for v in train], [subsample_tensor(v, k) for v in held_out])
        for name, (train, held_out) in volumes.items()
        if name in paths
    }
    references: dict[str, DomainReference] = {}
    scores: dict[str, list[tuple[float, float]]] = {}
    bar = tqdm(total=len(paths), desc="recognition references", unit="domain", disable=not progress)
    with bar:
        for name, path in paths.items():
            seen = {  # every domain's training scans as ``name`` runs them
                other: [scan_features(path, s, batch_size) for s in train]
                for other, (train, _) in subsamples.items()
            }
            reference = DomainReference.fit(
                seen[name], [f for other, f in seen.items() if other != name]
            )
            held_out = [scan_features(path, s, batch_size) for s in subsamples[name][1]]
            scores[name] = [reference.distances(f) for f in held_out or seen[name]]
            references[name] = reference
            bar.update()
    calibration = calibration_from_scores(scores, factor, source="reference")
    save_references(run_dir, references)
    calibration.save(run_dir)
    return calibration


def fit_calibration(
    run_dir: str | Path,
    paths: Mapping[str, Route],
    volumes: Mapping[str, Sequence[np.ndarray]],
    kept: Mapping[str, Sequence[float]] | None = None,
    factor: float = CALIBRATION_FACTOR,
    batch_size: int = 16,
) -> Calibration:
    """Calibrate a run without references on the BN running statistics and store it.

    ``volumes[domain]``: preprocessed slice stacks [S, H, W] of that domain (held-out scans, else
    training scans); ``kept[domain]``: in-domain distances measured before, for domains without
    volumes here (a run's old domains, unchanged, when one is added and their study is gone).
    """
    scores = {
        name: [in_domain_distances(Candidate(name, paths[name]), v, batch_size) for v in items]
        for name, items in volumes.items()
        if items
    }
    for name, distances in (kept or {}).items():
        if name not in scores and distances:
            scores[name] = [(d, d) for d in distances]  # BN distances rank as they refuse
    calibration = calibration_from_scores(scores, factor, source="scans")
    calibration.save(run_dir)
    return calibration


def fit_anatomy(
    run_dir: str | Path,
    structures: Mapping[str, Sequence[str]],
    label_maps: Mapping[str, Sequence[tuple[np.ndarray, Sequence[float]]]],
    predictions: Mapping[str, Sequence[tuple[np.ndarray, Sequence[float]]]] | None = None,
    kept: Mapping[str, AnatomyReference] | None = None,
) -> dict[str, AnatomyReference]:
    """Measure every domain's anatomy statistics on its training label maps, calibrate them on
    its predictions of its held-out scans, and store them with the ``kept`` references of
    other domains (a run's old domains when one is added); returns all of them.

    ``structures[domain]``: its structure names in local class order; ``label_maps[domain]``
    and ``predictions[domain]``: (local label map [S, H, W], voxel size in mm along S, H, W).
    Label maps missing a structure are left out; nothing is written (and {} returned) when a
    domain has none left: recognition then decides by appearance alone.
    """
    references = dict(kept or {})
    for name, names in structures.items():
        measures = [measure_anatomy(np.asarray(m), s, len(names)) for m, s in label_maps[name]]
        complete = [m for m in measures if (m.volume_ml > 0).all()]
        if not complete:
            return {}
        held_out = [
            measure_anatomy(np.asarray(m), s, len(names))
            for m, s in (predictions or {}).get(name, ())
        ]
        references[name] = AnatomyReference.fit(names, complete).calibrated(held_out)
    save_anatomy(run_dir, references)
    return references


def segment_whole_view(
    inferer: WholeViewInferer, volume: np.ndarray, route: Route, batch_size: int = 16
) -> np.ndarray:
    """Local labels [S, H, W] of a preprocessed slice stack through ``route`` (CPU, no TTA)."""
    labels, _ = inferer.predict_volume(
        volume,
        lambda x: torch.softmax(route.logits(x).float(), dim=1),
        route.context_slices,
        batch_size,
        torch.device("cpu"),
    )
    return labels
