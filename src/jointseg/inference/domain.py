"""Automatic domain (joint) recognition from batch-normalization statistics.

Every BatchNorm layer of a trained network keeps running estimates of the mean and variance of
its input over the training slices of each domain (one set per domain with domain-specific BN;
one per model in a run of individual models). For a candidate domain ``d`` a subsample of the
scan's preprocessed slices (evenly spaced over the whole stack) runs through the network with
``d``'s BN (and head); at each BN layer of the encoder's stem and first stage, the channel means
and variances of the layer's input over the subsample are compared with ``d``'s running
statistics by the Gaussian Kullback-Leibler divergence, averaged over channels and layers:

    KL_c = 1/2 (v_c / s_c + (m_c - mu_c)^2 / s_c - 1 - log(v_c / s_c))

``m, v``: the scan's statistics; ``mu, s``: the domain's running mean and variance. It is 0 when
the scan's features are distributed as the domain's training features and grows with any shift
of mean (a squared z-score, i.e. a diagonal Mahalanobis distance) or of scale. Because layer
``k`` sees features normalized by ``d``'s earlier layers, the score follows the encoder as ``d``
would run it. The early layers carry low-level appearance (contrast, texture, noise) and are
stable from scan to scan; deeper layers' statistics vary with content and blur the decision.

The candidate with the smallest distance wins; ``confidence = softmax(-distance / temperature)``.
A scan whose smallest distance exceeds ``threshold`` fits no domain and is refused. Both come
from ``RUN/domain_calibration.json`` when the run has one (see
:mod:`jointseg.inference.calibration`), else from :data:`DEFAULT_THRESHOLD` and
:data:`DEFAULT_TEMPERATURE`.


Measured per-domain references replace the running statistics when the run has them
(``RUN/domain_reference.json``, written at the end of training; see
:mod:`jointseg.inference.reference`). A scan's *descriptor* is, at each of those layers, the
channel means and log-variances of the layer's input over the subsample, as domain ``d`` runs
it. The reference of ``d`` is the mean ``mu`` and standard deviation ``sigma`` of the
descriptors of ``d``'s training scans, and the distance is a mean squared z-score

    D_d = mean_j ((f_j - mu_j)^2 / (sigma_j^2 + floor^2)),   floor = 0.1 x median(sigma)

(about 1 for a scan like the training scans). It weighs every feature by how much it varies
from scan to scan within the domain, which running statistics (an average over the last
training batches, of slices sampled as training samples them) cannot: measured on the synthetic
study with a network trained for 2 epochs, the 12 held-out scans scored 0.2-7.7 to their own
joint and 6.8-67 to the others (one shoulder scan nearer the ankle), pure noise 154 or more;
with the running statistics, 2 of the 12 went to the wrong joint and the margins were thin.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from jointseg.utils.atomic import atomic_write_json

CALIBRATION_FILE = "domain_calibration.json"
# Measured on small trained networks: unseen scans of a training domain score 0.02-0.05, scans
# of another domain 0.2-1, pure noise about 0.5. The default threshold sits at about four times
# the in-domain range; a run's calibration file replaces it.
DEFAULT_THRESHOLD = 0.15
DEFAULT_TEMPERATURE = 0.02
CALIBRATION_FACTOR = 4.0  # calibrated threshold = factor x the largest in-domain distance
MIN_THRESHOLD = 0.05
SUBSAMPLE_SLICES = 32
EARLY_STAGES = ("bn1", "layer1")  # the encoder's stem BN and first residual stage
EARLY_FALLBACK = 5  # BN layers used when the encoder does not name its stages so
REFERENCE_FLOOR = 0.1  # floor of a reference's standard deviations, x their median


class DomainRecognitionError(ValueError):
    """No training domain fits the scan; the message lists the candidates and their scores."""


@dataclass(frozen=True)
class ReferenceStats:
    """Mean and standard deviation of a domain's training-scan descriptors."""

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
    def fit(cls, descriptors: Sequence[np.ndarray]) -> ReferenceStats:
        """The reference of at least two descriptors."""
        if len(descriptors) < 2:
            raise ValueError("a domain reference needs the descriptors of at least two scans")
        stacked = np.stack([np.asarray(d, dtype=np.float64) for d in descriptors])
        return cls(stacked.mean(axis=0), stacked.std(axis=0, ddof=1), len(descriptors))


@dataclass(frozen=True)
class Candidate:
    """A domain to test: the network that segments it, its index there (head and BN) and,
    when the run has measured one, its reference."""

    name: str
    net: nn.Module
    index: int
    reference: ReferenceStats | None = None


@dataclass(frozen=True)
class DomainScore:
    name: str
    distance: float
    confidence: float


@dataclass(frozen=True)
class DomainDecision:
    """The recognized domain (None when refused) and every candidate's score, best first."""

    domain: str | None
    confidence: float
    scores: list[DomainScore]
    threshold: float

    def describe(self) -> str:
        parts = ", ".join(
            f"{s.name}: distance {s.distance:.3g}, confidence {s.confidence:.2f}"
            for s in self.scores
        )
        return f"{parts} (threshold {self.threshold:.3g})"


@dataclass
class Calibration:
    """Refusal threshold and softmax temperature for the distances (plus what they came from)."""

    threshold: float = DEFAULT_THRESHOLD
    temperature: float = DEFAULT_TEMPERATURE
    in_domain: dict[str, list[float]] = field(default_factory=dict)
    source: str = "default"  # default | file | scans | study

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
        cls, in_domain: dict[str, list[float]], factor: float = CALIBRATION_FACTOR
    ) -> Calibration:
        """Threshold = ``factor`` x the largest in-domain distance (at least
        :data:`MIN_THRESHOLD`); temperature = their median (at least a tenth of the default)."""
        values = [v for vs in in_domain.values() for v in vs]
        if not values:
            raise ValueError("calibration needs at least one in-domain distance")
        temperature = max(float(np.median(values)), DEFAULT_TEMPERATURE / 10)
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


def subsample_indices(num_slices: int, count: int = SUBSAMPLE_SLICES) -> np.ndarray:
    """At most ``count`` evenly spaced slice indices over a whole stack of ``num_slices``.

    The whole stack, as training samples slices from whole volumes: a central subsample would
    see more bone than the training batches did and inflate in-domain distances.
    """
    if num_slices < 1:
        raise ValueError("an empty slice stack")
    return np.unique(np.linspace(0, num_slices - 1, min(count, num_slices)).round().astype(int))


def early_batchnorm_layers(net: nn.Module) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers (each domain's copy) of the encoder's stem and first stage.

    An encoder without torchvision's stage names gives its first :data:`EARLY_FALLBACK` layers.
    """
    return [m for group in early_batchnorm_groups(net) for m in group]


def early_batchnorm_groups(net: nn.Module) -> list[list[nn.BatchNorm2d]]:
    """:func:`early_batchnorm_layers` grouped by logical layer (its per-domain copies)."""
    root = getattr(net, "encoder", net)
    groups: dict[str, list[nn.BatchNorm2d]] = {}  # logical layer -> its per-domain copies
    for name, module in root.named_modules():
        if isinstance(module, nn.BatchNorm2d) and module.running_var is not None:
            logical = name.split(".bns.")[0]
            groups.setdefault(logical, []).append(module)
    early = [name for name in groups if name.split(".")[0] in EARLY_STAGES]
    chosen = early or list(groups)[:EARLY_FALLBACK]
    return [groups[name] for name in chosen]


class _EarlyLayersDone(Exception):
    """Raised from a hook once every early layer has seen the batch: the rest is not needed."""


class _MomentAccumulator:
    """Forward hooks summing each BN layer's input channel moments over the batches it sees.

    Once every logical layer has seen the current batch, the hook stops the forward pass.
    """

    def __init__(self, groups: Sequence[Sequence[nn.BatchNorm2d]]):
        self.layers = [m for group in groups for m in group]
        self.group_of = {id(m): g for g, group in enumerate(groups) for m in group}
        self.count = len(groups)
        self.seen: set[int] = set()
        self.sums: dict[int, list[Tensor]] = {}
        self.handles = [layer.register_forward_hook(self._hook) for layer in self.layers]

    def _hook(self, module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
        x = inputs[0].detach().double()
        moments = [x.sum(dim=(0, 2, 3)), (x * x).sum(dim=(0, 2, 3)), x.new_tensor(x[:, 0].numel())]
        previous = self.sums.get(id(module))
        self.sums[id(module)] = (
            moments if previous is None else [a + b for a, b in zip(previous, moments, strict=True)]
        )
        self.seen.add(self.group_of[id(module)])
        if len(self.seen) == self.count:
            raise _EarlyLayersDone

    def close(self) -> None:
        for handle in self.handles:
            handle.remove()

    def moments(self) -> list[tuple[nn.BatchNorm2d, Tensor, Tensor]]:
        """(layer, channel means, channel variances) of every layer that saw the input."""
        result = []
        for layer in self.layers:
            if id(layer) not in self.sums:
                continue
            total, squares, count = self.sums[id(layer)]
            mean = total / count
            result.append((layer, mean, (squares / count - mean * mean).clamp_min(0)))
        if not result:
            raise ValueError("the network has no BatchNorm layer with running statistics")
        return result

    def descriptor(self) -> np.ndarray:
        """Channel means and log-variances of every layer seen, concatenated (float64)."""
        parts = []
        for layer, mean, var in self.moments():
            parts += [mean.cpu().numpy(), np.log(var.cpu().numpy() + layer.eps)]
        return np.concatenate(parts)

    def distance(self) -> float:
        """Mean over the layers seen of the channel-mean Gaussian KL to the running statistics."""
        values = []
        for layer, mean, var in self.moments():
            ref_mean = layer.running_mean.double().to(mean.device)
            ref_var = layer.running_var.double().to(mean.device)
            floor = layer.eps + 1e-2 * ref_var.median()
            ref_var, var = ref_var + floor, var + floor
            ratio = var / ref_var
            kl = 0.5 * (ratio + (mean - ref_mean) ** 2 / ref_var - 1.0 - torch.log(ratio))
            values.append(float(kl.mean()))
        return float(np.mean(values))


@torch.no_grad()
def _early_moments(
    net: nn.Module, slices: Tensor, index: int, batch_size: int
) -> _MomentAccumulator:
    """Run ``slices`` through the early layers with domain ``index``'s BN; their moments."""
    net.eval()
    accumulator = _MomentAccumulator(early_batchnorm_groups(net))
    channels = getattr(getattr(net, "cfg", None), "in_channels", 1)
    try:
        device = next(net.parameters()).device
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start : start + batch_size].to(device)
            domains = torch.full((batch.shape[0],), index, dtype=torch.long, device=device)
            accumulator.seen.clear()
            try:
                net(batch.expand(-1, channels, -1, -1), domains)
            except _EarlyLayersDone:
                pass
    finally:
        accumulator.close()
    return accumulator


def bn_distance(net: nn.Module, slices: Tensor, index: int, batch_size: int = 16) -> float:
    """Distance of ``slices`` [N, C, H, W] to domain ``index``'s BN running statistics.

    Only the encoder's first layers run: the forward pass stops once they have seen a batch.
    """
    return _early_moments(net, slices, index, batch_size).distance()


def scan_descriptor(net: nn.Module, slices: Tensor, index: int, batch_size: int = 16) -> np.ndarray:
    """The descriptor of ``slices`` [N, C, H, W] as domain ``index`` runs them (module doc)."""
    return _early_moments(net, slices, index, batch_size).descriptor()


def candidate_distance(candidate: Candidate, slices: Tensor, batch_size: int = 16) -> float:
    """The distance to the candidate's reference, or to its BN running statistics without."""
    if candidate.reference is not None:
        return candidate.reference.distance(
            scan_descriptor(candidate.net, slices, candidate.index, batch_size)
        )
    return bn_distance(candidate.net, slices, candidate.index, batch_size)


def decide(distances: dict[str, float], calibration: Calibration | None = None) -> DomainDecision:
    """Turn candidate distances into a decision (``domain`` None when none is below threshold)."""
    calibration = calibration or Calibration()
    names = list(distances)
    values = np.array([distances[n] for n in names], float)
    logits = -values / calibration.temperature
    weights = np.exp(logits - logits.max())
    confidence = weights / weights.sum()
    order = np.argsort(values, kind="stable")
    scores = [DomainScore(names[i], float(values[i]), float(confidence[i])) for i in order]
    best = scores[0]
    accepted = best.distance <= calibration.threshold
    return DomainDecision(
        best.name if accepted else None, best.confidence, scores, calibration.threshold
    )


def recognize_domain(
    candidates: Sequence[Candidate],
    volume: np.ndarray,
    calibration: Calibration | None = None,
    batch_size: int = 16,
) -> DomainDecision:
    """Score every candidate on a slice subsample of ``volume`` [S, H, W] (preprocessed)."""
    if not candidates:
        raise ValueError("no candidate domain to recognize")
    if len({c.reference is None for c in candidates}) > 1:
        raise ValueError("either every candidate has a reference or none has")
    picked = torch.from_numpy(np.ascontiguousarray(volume[subsample_indices(len(volume))]))
    slices = picked.float().unsqueeze(1)
    distances = {c.name: candidate_distance(c, slices, batch_size) for c in candidates}
    return decide(distances, calibration)


def refusal_message(decision: DomainDecision) -> str:
    """The error text for a scan that fits no domain."""
    return (
        "the scan fits none of this run's domains; candidates: "
        f"{decision.describe()}. Pass --domain NAME to segment it anyway."
    )
