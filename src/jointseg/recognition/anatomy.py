"""Anatomy statistics of a domain's training labels, and how plausible a predicted anatomy is.

A label map (local classes on a preprocessed slice stack [S, H, W], voxel size in mm) is
measured per structure (:func:`measure_anatomy`):

- *volume* in ml, *components*: connected components (26-connected) holding at least
  :data:`COMPONENT_SHARE` of the structure's volume, *stray*: the share of its volume outside its
  largest component;
- *share*: its volume / the volume of every structure together (of every present one, against
  the training shares of the same structures, when some are missing);
- for every pair of structures, the distance of their centroids / the cube root of all
  structures' volume (size-free, and unchanged by rotation and mirroring: acquisition plane
  and side do not matter).

A domain's :class:`AnatomyReference` holds, over its training label maps, each feature's mean and
spread (log volume, share, pair distance; the spread with a floor, since a domain has only a few
training scans) and the most components and stray share any training structure had. A prediction
is **plausible** as the domain's anatomy (:meth:`AnatomyReference.score`) when

- every structure is present (at least :data:`PRESENCE_SHARE` of the smallest training volume),
- no structure has more components than the reference's most + :data:`EXTRA_COMPONENTS`, or a
  stray share above the reference's most + :data:`STRAY_ALLOWANCE`,
- every z-score ``(value - mean) / sqrt(sigma^2 + floor^2)`` of the present structures (and of
  the pairs of present structures) is within the reference's limit (:data:`Z_LIMIT`).

A field of view often cuts a bone (a knee's sagittal slab without the fibula): in a domain of
three or more structures, one structure that is absent or far too small (volume z below minus
the limit), while every other one is present, is left out of these checks
(:meth:`AnatomyReference.cut`); the others must then be plausible among themselves.

Its *distance* is the mean squared z-score (about 1 for anatomy like the training labels').

A network's predictions are rougher than the labels (a briefly trained one misses a small bone or
breaks one into pieces), so the reference is *calibrated* on the domain's own predictions of its
held-out scans (:meth:`AnatomyReference.calibrated`): a structure missing from one of them is
optional, the most components and stray share take theirs, and the z limit grows to
:data:`Z_MARGIN` x their largest |z|, at most :data:`Z_LIMIT_MAX`. The domain is *reliable*
when there are at least :data:`RELIABLE_SCANS` of those predictions and every one passed the
check before that widening: only then may its check refuse a scan
(:func:`jointseg.recognition.decision.decide_by_anatomy`).
``RUN/anatomy_reference.json`` holds a run's references (:func:`save_anatomy`,
:func:`load_anatomy`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path

import numpy as np
from scipy import ndimage

from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_write_json

FORMAT_VERSION = 1
COMPONENT_SHARE = 0.05  # a component counts when it holds this share of its structure's volume
PRESENCE_SHARE = 0.1  # present: at least this share of the smallest training volume
EXTRA_COMPONENTS = 1  # components allowed beyond the training labels' most
STRAY_ALLOWANCE = 0.25  # stray share allowed beyond the training labels' most
Z_LIMIT = 4.0  # the largest plausible |z| of a volume, share or pair distance
Z_MARGIN = 1.25  # calibrated limit: this x the largest |z| of the held-out predictions ...
Z_LIMIT_MAX = 8.0  # ... at most this
RELIABLE_SCANS = 2  # a domain is reliable on at least this many held-out predictions
CUT_MIN_STRUCTURES = 3  # a domain of this many structures may miss one (:meth:`cut`)
# Floors of the spreads: a factor 1.5 in volume, 5 % of the share, 0.1 of the size scale.
LOG_VOLUME_FLOOR = math.log(1.5)
SHARE_FLOOR = 0.05
DISTANCE_FLOOR = 0.1
_CONNECTIVITY = np.ones((3, 3, 3), dtype=bool)
# A z-score beyond the limit in plain words: (above, below) the training labels.
_TOO = {
    "volume": ("too large", "too small"),
    "share": ("too large for the others", "too small for the others"),
    "position": ("too far apart", "too close together"),
}


@dataclass(frozen=True)
class AnatomyMeasure:
    """One label map's anatomy: per structure (local classes 1..n) and per structure pair."""

    volume_ml: np.ndarray  # [n]
    components: np.ndarray  # [n] int
    stray: np.ndarray  # [n]
    distance: np.ndarray  # [n (n - 1) / 2], pairs in itertools.combinations order; nan if absent

    @property
    def share(self) -> np.ndarray:
        total = float(self.volume_ml.sum())
        return self.volume_ml / total if total > 0 else np.zeros_like(self.volume_ml)


def measure_anatomy(
    labels: np.ndarray, spacing: Sequence[float], num_structures: int
) -> AnatomyMeasure:
    """Measure a label map [S, H, W] of local classes 0..``num_structures``; ``spacing``: the
    voxel size (mm) along S, H and W."""
    if labels.ndim != 3:
        raise ValueError(f"a label map [S, H, W] is needed, got shape {labels.shape}")
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"three positive voxel sizes are needed, got {tuple(spacing)}")
    step = np.asarray(spacing, dtype=np.float64)
    voxel_ml = float(np.prod(step)) / 1000.0
    volume = np.zeros(num_structures)
    components = np.zeros(num_structures, dtype=int)
    stray = np.zeros(num_structures)
    centroid = np.full((num_structures, 3), np.nan)
    for value in range(1, num_structures + 1):
        mask = labels == value
        count = int(mask.sum())
        if count == 0:
            continue
        volume[value - 1] = count * voxel_ml
        centroid[value - 1] = np.argwhere(mask).mean(axis=0) * step
        parts, found = ndimage.label(mask, structure=_CONNECTIVITY)
        sizes = np.bincount(parts.ravel())[1:] if found else np.zeros(0, int)
        components[value - 1] = int((sizes >= COMPONENT_SHARE * count).sum())
        stray[value - 1] = 1.0 - sizes.max() / count
    size = float(volume.sum() * 1000.0) ** (1.0 / 3.0)  # mm
    distance = np.array(
        [
            np.linalg.norm(centroid[i] - centroid[j]) / size if size > 0 else np.nan
            for i, j in combinations(range(num_structures), 2)
        ]
    )
    return AnatomyMeasure(volume, components, stray, distance)


@dataclass(frozen=True)
class FeatureStats:
    """Mean and spread of one feature vector over training label maps, with a floor."""

    mean: np.ndarray
    std: np.ndarray
    floor: float

    def z(self, value: np.ndarray) -> np.ndarray:
        return (value - self.mean) / np.sqrt(self.std**2 + self.floor**2)

    @classmethod
    def fit(cls, values: np.ndarray, floor: float) -> FeatureStats:
        std = values.std(axis=0, ddof=1) if len(values) > 1 else np.zeros(values.shape[1])
        return cls(values.mean(axis=0), std, floor)

    def to_dict(self) -> dict:
        return {"mean": self.mean.tolist(), "std": self.std.tolist()}

    @classmethod
    def from_dict(cls, data: dict, floor: float) -> FeatureStats:
        return cls(np.asarray(data["mean"], float), np.asarray(data["std"], float), floor)


@dataclass(frozen=True)
class AnatomyScore:
    """How plausible a prediction is as a domain's anatomy: ``distance`` (mean squared z),
    ``plausible`` and, when not, ``reasons`` (each problem in plain words, absent structures
    first)."""

    distance: float
    plausible: bool
    reasons: tuple[str, ...] = ()

    def describe(self) -> str:
        verdict = "plausible" if self.plausible else "implausible: " + "; ".join(self.reasons)
        return f"anatomy distance {self.distance:.3g}, {verdict}"


@dataclass(frozen=True)
class AnatomyReference:
    """A domain's anatomy statistics over its training label maps (module doc)."""

    structures: tuple[str, ...]
    log_volume: FeatureStats
    share: FeatureStats
    distance: FeatureStats
    min_volume_ml: np.ndarray
    max_components: np.ndarray
    max_stray: np.ndarray
    scans: int
    optional: np.ndarray | None = None  # [n] bool: may be absent (calibrated)
    z_limit: float = Z_LIMIT
    calibrated_on: int = 0  # held-out predictions the reference was calibrated on
    reliable: bool = False  # each of them passed the check before calibration

    @classmethod
    def fit(cls, structures: Sequence[str], measures: Sequence[AnatomyMeasure]) -> AnatomyReference:
        """The reference of the training label maps' measures (every structure present)."""
        if not measures:
            raise ValueError("anatomy statistics need at least one training label map")
        volumes = np.stack([m.volume_ml for m in measures])
        if volumes.shape[1] != len(structures):
            raise ValueError(f"{volumes.shape[1]} measured structures for {len(structures)} names")
        missing = [structures[i] for i in np.flatnonzero((volumes <= 0).any(axis=0))]
        if missing:
            raise ValueError(f"structures {missing} are missing from a training label map")
        return cls(
            tuple(structures),
            FeatureStats.fit(np.log(volumes), LOG_VOLUME_FLOOR),
            FeatureStats.fit(np.stack([m.share for m in measures]), SHARE_FLOOR),
            FeatureStats.fit(np.stack([m.distance for m in measures]), DISTANCE_FLOOR),
            volumes.min(axis=0),
            np.stack([m.components for m in measures]).max(axis=0),
            np.stack([m.stray for m in measures]).max(axis=0),
            len(measures),
        )

    def absent(self, measure: AnatomyMeasure) -> np.ndarray:
        """[n] bool: the structures ``measure`` lacks."""
        return measure.volume_ml < PRESENCE_SHARE * self.min_volume_ml

    def cut(self, measure: AnatomyMeasure) -> np.ndarray:
        """[n] bool: the structure a field of view may have cut, left out of the check. In a
        domain of at least :data:`CUT_MIN_STRUCTURES` structures, one non-optional structure
        that is absent, or whose volume is below its training volumes by more than the z
        limit, when every other one is present; none otherwise."""
        n = len(self.structures)
        optional = np.zeros(n, bool) if self.optional is None else self.optional
        absent = self.absent(measure)
        small = self.log_volume.z(np.log(np.maximum(measure.volume_ml, 1e-9))) < -self.z_limit
        missing = (absent | small) & ~optional
        if n < CUT_MIN_STRUCTURES or missing.sum() != 1 or (absent & ~missing).any():
            return np.zeros(n, bool)
        return missing

    def z_scores(
        self, measure: AnatomyMeasure, present: np.ndarray | None = None
    ) -> dict[str, tuple[list[str], np.ndarray]]:
        """Per feature group, the names and z-scores of the present structures' features
        (``present``: [n] bool, default: those not :meth:`absent`)."""
        names = self.structures
        present = ~self.absent(measure) if present is None else present
        pairs = list(combinations(range(len(names)), 2))
        kept = np.array([present[i] and present[j] for i, j in pairs], dtype=bool)
        volume = np.maximum(measure.volume_ml, 1e-9)
        return {
            "volume": (
                [n for n, p in zip(names, present, strict=True) if p],
                self.log_volume.z(np.log(volume))[present],
            ),
            "share": (
                [n for n, p in zip(names, present, strict=True) if p],
                self.present_share_z(measure.volume_ml, present),
            ),
            "position": (
                [f"{names[i]}-{names[j]}" for (i, j), k in zip(pairs, kept, strict=True) if k],
                self.distance.z(np.nan_to_num(measure.distance))[kept],
            ),
        }

    def present_share_z(self, volume_ml: np.ndarray, present: np.ndarray) -> np.ndarray:
        """z-scores of the present structures' shares of their own total, against the
        training shares renormalized over the same structures."""
        if not present.any():
            return np.zeros(0)
        observed = volume_ml[present] / volume_ml[present].sum()
        expected = self.share.mean[present] / self.share.mean[present].sum()
        spread = np.sqrt(self.share.std[present] ** 2 + self.share.floor**2)
        return (observed - expected) / spread

    def score(self, measure: AnatomyMeasure) -> AnatomyScore:
        """How plausible ``measure`` is as this domain's anatomy (module doc)."""
        names = self.structures
        reasons = []
        absent = self.absent(measure)
        optional = np.zeros(len(names), bool) if self.optional is None else self.optional
        cut = self.cut(measure)
        if absent.all():
            reasons.append("no structure found")
        else:
            reasons += [f"{names[i]} absent" for i in np.flatnonzero(absent & ~optional & ~cut)]
        absent = absent | cut  # left out of every check below
        many = (measure.components > self.max_components + EXTRA_COMPONENTS) & ~absent
        reasons += [f"{names[i]} in {measure.components[i]} pieces" for i in np.flatnonzero(many)]
        scattered = (measure.stray > self.max_stray + STRAY_ALLOWANCE) & ~absent
        reasons += [
            f"{names[i]} scattered, {measure.stray[i]:.0%} outside its largest piece"
            for i in np.flatnonzero(scattered)
        ]
        groups = self.z_scores(measure, ~absent)
        for group, (labels, z) in groups.items():
            for label, value in zip(labels, z, strict=True):
                if abs(value) > self.z_limit:
                    too = _TOO[group][int(value < 0)]
                    reasons.append(f"{label} {too}, {group} z = {value:+.1f}")
        z_all = np.concatenate([z for _, z in groups.values()])
        distance = float(np.mean(z_all**2)) if z_all.size else math.inf
        return AnatomyScore(distance, not reasons, tuple(reasons))

    def calibrated(self, predictions: Sequence[AnatomyMeasure]) -> AnatomyReference:
        """This reference with its tolerances widened to the domain's own predictions of its
        held-out scans (module doc); unchanged without predictions."""
        if not predictions:
            return self
        absent = np.stack([self.absent(m) for m in predictions])
        components = np.stack([np.where(self.absent(m), 0, m.components) for m in predictions])
        stray = np.stack([np.where(self.absent(m), 0.0, m.stray) for m in predictions])
        largest = max(
            (float(np.abs(z).max()) for m in predictions for _, z in self.z_scores(m).values()
             if z.size),
            default=0.0,
        )  # fmt: skip
        return replace(
            self,
            reliable=len(predictions) >= RELIABLE_SCANS
            and all(self.score(m).plausible for m in predictions),
            optional=absent.any(axis=0),
            max_components=np.maximum(self.max_components, components.max(axis=0)),
            max_stray=np.maximum(self.max_stray, stray.max(axis=0)),
            z_limit=min(max(Z_LIMIT, Z_MARGIN * largest), Z_LIMIT_MAX),
            calibrated_on=len(predictions),
        )

    def to_dict(self) -> dict:
        return {
            "structures": list(self.structures),
            "scans": self.scans,
            "log_volume_ml": self.log_volume.to_dict(),
            "share": self.share.to_dict(),
            "pair_distance": self.distance.to_dict(),
            "min_volume_ml": self.min_volume_ml.tolist(),
            "max_components": self.max_components.tolist(),
            "max_stray": self.max_stray.tolist(),
            "optional": None if self.optional is None else self.optional.tolist(),
            "z_limit": self.z_limit,
            "calibrated_on": self.calibrated_on,
            "reliable": self.reliable,
        }

    @classmethod
    def from_dict(cls, data: dict) -> AnatomyReference:
        return cls(
            tuple(data["structures"]),
            FeatureStats.from_dict(data["log_volume_ml"], LOG_VOLUME_FLOOR),
            FeatureStats.from_dict(data["share"], SHARE_FLOOR),
            FeatureStats.from_dict(data["pair_distance"], DISTANCE_FLOOR),
            np.asarray(data["min_volume_ml"], float),
            np.asarray(data["max_components"], int),
            np.asarray(data["max_stray"], float),
            int(data["scans"]),
            None if data.get("optional") is None else np.asarray(data["optional"], bool),
            float(data.get("z_limit", Z_LIMIT)),
            int(data.get("calibrated_on", 0)),
            bool(data.get("reliable", False)),
        )


def save_anatomy(run_dir: str | Path, references: dict[str, AnatomyReference]) -> Path:
    """Write the run's anatomy references (atomically)."""
    path = RunFolder(Path(run_dir)).anatomy_reference_file
    payload = {
        "format_version": FORMAT_VERSION,
        "domains": {name: ref.to_dict() for name, ref in references.items()},
    }
    atomic_write_json(path, payload)
    return path


def load_anatomy(run_dir: str | Path) -> dict[str, AnatomyReference]:
    """The run's anatomy references; empty when it has none (runs trained before them)."""
    path = RunFolder(Path(run_dir)).anatomy_reference_file
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"format {data.get('format_version')}, this version reads 1")
        return {name: AnatomyReference.from_dict(e) for name, e in data["domains"].items()}
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(
            f"{path}: unreadable anatomy reference ({error}); delete it to recognize domains "
            "by appearance alone"
        ) from error
