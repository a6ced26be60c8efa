"""Recognition for a domain added to a trained run (``jointseg adapt``).

- :func:`nearest_domain`: which existing domain the new scans look most like, by the run's
  recognition distances (references when the run has them, else the BN running statistics):
  the mean ranking distance of the new training scans to each domain.
- :func:`extend_recognition`: the new domain's reference, fitted as training fits one (its
  training scans as its own path runs them, spreads pooled with the old domains' training scans
  when they are at hand), added beside the old references, which stay as they were; the
  calibration threshold rises to cover the new domain's in-domain distances if needed.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jointseg.models.network import Route
from jointseg.recognition.calibration import CALIBRATION_FACTOR, Calibration
from jointseg.recognition.decision import Candidate, candidate_distances
from jointseg.recognition.features import (
    ScanFeatures,
    scan_features,
    shared_context_slices,
    subsample_tensor,
)
from jointseg.recognition.references import (
    DomainReference,
    ReferenceStats,
    load_references,
    save_references,
)
from jointseg.runs import RunFolder

logger = logging.getLogger(__name__)


def nearest_domain(
    candidates: Sequence[Candidate], volumes: Sequence[np.ndarray], batch_size: int = 16
) -> tuple[str, dict[str, float]]:
    """The candidate nearest to ``volumes`` (preprocessed slice stacks of the new domain) and
    every candidate's mean ranking distance."""
    if not candidates or not volumes:
        raise ValueError("nearest_domain needs candidates and at least one scan")
    if len({c.reference is None for c in candidates}) > 1:
        raise ValueError("either every candidate has a reference or none has")
    k = shared_context_slices(c.path for c in candidates)
    slices = [subsample_tensor(v, k) for v in volumes]
    distances = {
        c.name: float(np.mean([candidate_distances(c, s, batch_size)[0] for s in slices]))
        for c in candidates
    }
    return min(distances, key=distances.__getitem__), distances


def _fit_single(own: ScanFeatures, others: Sequence[Sequence[ScanFeatures]]) -> DomainReference:
    """A reference from one scan: its descriptors as the mean, the spread pooled from the
    other domains' scans (the pooled spread of :class:`ReferenceStats`, without the own term)."""

    def stats(part: str) -> ReferenceStats:
        groups = [np.stack([getattr(f, part) for f in g]) for g in others if len(g) >= 2]
        variance = np.mean([g.var(axis=0, ddof=1) for g in groups], axis=0)
        return ReferenceStats(np.asarray(getattr(own, part), np.float64), np.sqrt(variance), 1)

    return DomainReference(stats("appearance"), stats("content"))


def extend_recognition(
    run_dir: str | Path,
    name: str,
    path: Route,
    training: Sequence[np.ndarray],
    held_out: Sequence[np.ndarray],
    old_training: Mapping[str, Sequence[np.ndarray]],
    factor: float = CALIBRATION_FACTOR,
    batch_size: int = 16,
) -> bool:
    """Add domain ``name``'s reference to ``run_dir``'s recognition files; True when done.

    ``training``/``held_out``: the new domain's preprocessed scans; ``old_training``: the old
    domains' training scans (may be empty when their study is gone). A run without references
    keeps none. When no reference can be fitted (one scan and no other domain's scans), the
    reference and calibration files are removed: recognition then uses the BN running
    statistics for every domain (calibrated by the caller,
    :func:`~jointseg.recognition.fitting.fit_calibration`).
    """
    run_dir = Path(run_dir)
    references = load_references(run_dir)
    if not references:
        return False
    k = path.context_slices
    own = [scan_features(path, subsample_tensor(v, k), batch_size) for v in training]
    others = [
        [scan_features(path, subsample_tensor(v, k), batch_size) for v in volumes]
        for volumes in old_training.values()
    ]
    if len(own) >= 2:
        reference = DomainReference.fit(own, others)
    elif own and any(len(g) >= 2 for g in others):
        reference = _fit_single(own[0], others)
    else:
        folder = RunFolder(run_dir)
        for stale in (folder.domain_reference_file, folder.calibration_file):
            stale.unlink(missing_ok=True)
        logger.warning(
            "%s: too few scans to measure a recognition reference for %r; recognition falls "
            "back to the BN running statistics for every domain",
            run_dir,
            name,
        )
        return False
    held = [scan_features(path, subsample_tensor(v, k), batch_size) for v in held_out]
    scores = [reference.distances(f) for f in held or own]
    save_references(run_dir, {**references, name: reference})
    calibration = Calibration.load(run_dir)
    in_domain = {**calibration.in_domain, name: [refusal for _, refusal in scores]}
    calibration.in_domain = in_domain
    calibration.threshold = max(calibration.threshold, factor * max(in_domain[name]))
    calibration.save(run_dir)
    return True
