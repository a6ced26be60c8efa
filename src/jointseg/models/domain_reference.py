"""Per-domain recognition references and the refusal calibration, measured after training.

A domain's *reference* is measured on its training scans, each described as that domain runs it
(:func:`jointseg.models.scan_features.scan_features`), once for the appearance and once for the
content descriptor: the mean ``mu`` of the domain's descriptors, and a spread ``sigma`` per
feature pooled over the training scans of every domain of the run, all run through the same
domain's path (as in a diagonal linear discriminant):

    sigma_j^2 = mean over domains e of var_j(descriptors of e's training scans, as d runs them)

A scan's distance to the reference is the mean squared z-score

    D = mean_j ((f_j - mu_j)^2 / (sigma_j^2 + floor^2)),   floor = 0.1 x median(sigma)

(about 1 for a scan like the training scans). Pooling gives the spread three times the scans with
three domains, and measures it on scans unlike the domain too: with a domain's own 4-8 training
scans alone, a few features of tiny chance spread decided the distance, and scans a little
outside the training range (sharper, a smaller child) went to another domain.

Candidates are ranked by ``D_appearance + CONTENT_WEIGHT x D_content``; a scan is refused when
even the best candidate's *appearance* distance exceeds the threshold (a head reads anything,
noise included, as some mixture of its classes: content tells domains apart, not scans from
nothing). The calibration stores the threshold, :data:`CALIBRATION_FACTOR` x the largest
appearance distance of held-out scans to their own domain, and the softmax temperature, the
median of their ranking distances. ``RUN/domain_reference.json`` and
``RUN/domain_calibration.json`` hold both; :func:`fit_recognition` writes them.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from jointseg.models.scan_features import (
    DomainPath,
    ScanFeatures,
    scan_features,
    shared_context_slices,
    subsample_tensor,
)
from jointseg.utils.atomic import atomic_write_json

REFERENCE_FILE = "domain_reference.json"
CALIBRATION_FILE = "domain_calibration.json"
FORMAT_VERSION = 2  # 2: appearance and content, spreads pooled over the domains
CONTENT_WEIGHT = 0.5  # weight of the content distance in the ranking distance
# Without a calibration file (and without references: BN running-statistics distances, measured on
# small trained networks: unseen scans of a training domain 0.02-0.05, scans of another domain
# 0.2-1, pure noise about 0.5) the threshold sits at about four times the in-domain range.
DEFAULT_THRESHOLD = 0.15
DEFAULT_TEMPERATURE = 0.02
CALIBRATION_FACTOR = 4.0  # calibrated threshold = factor x the largest in-domain distance
MIN_THRESHOLD = 0.05
REFERENCE_FLOOR = 0.1  # floor of a reference's spread, x its median


@dataclass(frozen=True)
class ReferenceStats:
    """Mean of a domain's training-scan descriptors and the spread of its features."""

    mean: np.ndarray
    std: np.ndarray
    scans: int

    def distance(self, descriptor: np.ndarray) -> float:
        """Mean squared z-score of ``descriptor`` (see the module doc)."""
        if descriptor.shape != self.mean.shape:
            raise ValueError(
                f"descriptor of {descriptor.size} values for a reference of {self.mean.size}: "
                "the reference was measured with another network"
            )
        floor = REFERENCE_FLOOR * float(np.median(self.std)) + 1e-12
        z2 = (descriptor - self.mean) ** 2 / (self.std**2 + floor**2)
        return float(np.mean(z2))

    @classmethod
    def fit(
        cls, descriptors: Sequence[np.ndarray], others: Sequence[Sequence[np.ndarray]] = ()
    ) -> ReferenceStats:
        """The reference of at least two descriptors; the spread is the root mean of the
        per-feature variances of ``descriptors`` and of every group in ``others`` (the other
        domains' scans as this domain runs them) that has two or more."""
        if len(descriptors) < 2:
            raise ValueError("a domain reference needs the descriptors of at least two scans")
        own = _stack(descriptors)
        groups = [own] + [_stack(g) for g in others if len(g) >= 2]
        variance = np.mean([g.var(axis=0, ddof=1) for g in groups], axis=0)
        return cls(own.mean(axis=0), np.sqrt(variance), len(descriptors))


def _stack(descriptors: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([np.asarray(d, dtype=np.float64) for d in descriptors])


@dataclass(frozen=True)
class DomainReference:
    """A domain's appearance and content references."""

    appearance: ReferenceStats
    content: ReferenceStats

    def distances(self, features: ScanFeatures) -> tuple[float, float]:
        """(ranking distance, refusal distance) of a scan's features (module doc)."""
        appearance = self.appearance.distance(features.appearance)
        return self.ranking(appearance, features.content), appearance

    def ranking(self, appearance: float, content: np.ndarray) -> float:
        """The ranking distance from the appearance distance and the content descriptor."""
        return appearance + CONTENT_WEIGHT * self.content.distance(content)

    @classmethod
    def fit(
        cls, own: Sequence[ScanFeatures], others: Sequence[Sequence[ScanFeatures]] = ()
    ) -> DomainReference:
        """Both references from the domain's training scans, spreads pooled with ``others``."""
        return cls(
            ReferenceStats.fit(
                [f.appearance for f in own], [[f.appearance for f in g] for g in others]
            ),
            ReferenceStats.fit([f.content for f in own], [[f.content for f in g] for g in others]),
        )


@dataclass
class Calibration:
    """Refusal threshold and softmax temperature for the distances (plus what they came from)."""

    threshold: float = DEFAULT_THRESHOLD
    temperature: float = DEFAULT_TEMPERATURE
    in_domain: dict[str, list[float]] = field(default_factory=dict)
    source: str = "default"  # default | file | scans | study | reference

    @classmethod
    def load(cls, run_dir: str | Path) -> Calibration:
        """The run's calibration, or the documented defaults when it has none."""
        path = Path(run_dir) / CALIBRATION_FILE
        if not path.is_file():
            return cls()
        data = json.loads(path.read_text(encoding="utf-8"))
        return cls(
            threshold=float(data["threshold"]),
            temperature=float(data.get("temperature", DEFAULT_TEMPERATURE)),
            in_domain={k: [float(v) for v in vs] for k, vs in data.get("in_domain", {}).items()},
            source="file",
        )

    @classmethod
    def from_distances(
        cls,
        in_domain: dict[str, list[float]],
        factor: float = CALIBRATION_FACTOR,
        ranking: dict[str, list[float]] | None = None,
    ) -> Calibration:
        """Threshold = ``factor`` x the largest in-domain refusal distance (at least
        :data:`MIN_THRESHOLD`); temperature = the median in-domain ranking distance (``ranking``,
        else ``in_domain``; at least a tenth of the default)."""
        values = [v for vs in in_domain.values() for v in vs]
        if not values:
            raise ValueError("calibration needs at least one in-domain distance")
        ranked = [v for vs in (ranking or in_domain).values() for v in vs]
        temperature = max(float(np.median(ranked)), DEFAULT_TEMPERATURE / 10)
        threshold = max(factor * max(values), MIN_THRESHOLD)
        return cls(threshold=threshold, temperature=temperature, in_domain=in_domain)

    @staticmethod
    def exists(run_dir: str | Path) -> bool:
        return (Path(run_dir) / CALIBRATION_FILE).is_file()

    def save(self, run_dir: str | Path) -> Path:
        path = Path(run_dir) / CALIBRATION_FILE
        atomic_write_json(
            path,
            {
                "threshold": self.threshold,
                "temperature": self.temperature,
                "in_domain": self.in_domain,
            },
        )
        return path


def save_references(run_dir: str | Path, references: dict[str, DomainReference]) -> Path:
    """Write the references into the run folder (atomically)."""
    path = Path(run_dir) / REFERENCE_FILE

    def stats(ref: ReferenceStats) -> dict:
        return {"mean": ref.mean.tolist(), "std": ref.std.tolist()}

    payload = {
        "format_version": FORMAT_VERSION,
        "domains": {
            name: {
                "scans": ref.appearance.scans,
                "appearance": stats(ref.appearance),
                "content": stats(ref.content),
            }
            for name, ref in references.items()
        },
    }
    atomic_write_json(path, payload)
    return path


def load_references(run_dir: str | Path) -> dict[str, DomainReference]:
    """The run's references (empty when it has none, or only an older format's)."""
    path = Path(run_dir) / REFERENCE_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format_version") != FORMAT_VERSION:
            warnings.warn(
                f"{path}: domain references of format {data.get('format_version')} (this version "
                f"reads {FORMAT_VERSION}) are ignored; recognition uses the BN running statistics. "
                "Retrain the run to measure them again.",
                stacklevel=2,
            )
            return {}

        def stats(entry: dict, scans: int) -> ReferenceStats:
            return ReferenceStats(
                np.asarray(entry["mean"], dtype=np.float64),
                np.asarray(entry["std"], dtype=np.float64),
                scans,
            )

        return {
            name: DomainReference(
                stats(entry["appearance"], int(entry["scans"])),
                stats(entry["content"], int(entry["scans"])),
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
    paths: Mapping[str, DomainPath],
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
    in_domain: dict[str, list[float]] = {}
    ranking: dict[str, list[float]] = {}
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
            scores = [reference.distances(f) for f in held_out or seen[name]]
            references[name] = reference
            ranking[name] = [r for r, _ in scores]
            in_domain[name] = [a for _, a in scores]
            bar.update()
    calibration = Calibration.from_distances(in_domain, factor, ranking)
    calibration.source = "reference"
    save_references(run_dir, references)
    calibration.save(run_dir)
    return calibration
