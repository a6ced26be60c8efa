"""What a scan looks like to a network: the features of automatic domain recognition.

A domain ``d`` of a network is run on a subsample of a scan's preprocessed slices (evenly spaced
over the whole stack) through the network with ``d``'s BN and head (:class:`Route`). Two
descriptors come out of one forward pass (:func:`scan_features`):

- *appearance*: at each BN layer of the encoder's stem and first stage, the channel means and
  log-variances of the layer's input. Because layer ``k`` sees features normalized by ``d``'s
  earlier layers, they follow the encoder as ``d`` runs it. Early layers carry low-level
  appearance (contrast, texture, noise) and are stable from scan to scan.
- *content*: how ``d``'s head reads the scan: the log of the mean probability of every class
  (background and each structure) over the subsample, and the logit of the mean top-class
  probability (how sure the head is).

The appearance pass stops after those layers; the content pass runs the whole network. Both are
compared with a domain's measured reference (:mod:`jointseg.recognition.references`).
Runs without references use :func:`bn_distance`, the Gaussian Kullback-Leibler divergence of the
early layers' input statistics to their running statistics, averaged over channels and layers:

    KL_c = 1/2 (v_c / s_c + (m_c - mu_c)^2 / s_c - 1 - log(v_c / s_c))

``m, v``: the scan's channel statistics; ``mu, s``: the domain's running mean and variance.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from jointseg.data.context import context_stack
from jointseg.models.inferer import pad_to_multiple
from jointseg.models.network import Route

SUBSAMPLE_SLICES = 32
EARLY_STAGES = ("bn1", "layer1")  # the encoder's stem BN and first residual stage
EARLY_FALLBACK = 5  # BN layers used when the encoder does not name its stages so
PROBABILITY_FLOOR = 1e-3  # added to mean class probabilities before the log


def shared_context_slices(paths: Iterable[Route]) -> int:
    """The context slices every path's network takes (one subsample serves them all)."""
    found = {path.context_slices for path in paths}
    if len(found) > 1:
        raise ValueError(f"the networks differ in model.context_slices {sorted(found)}")
    return found.pop() if found else 1


@dataclass(frozen=True)
class ScanFeatures:
    """A scan's appearance and content descriptors as one domain runs it (module doc)."""

    appearance: np.ndarray
    content: np.ndarray


def subsample_indices(num_slices: int, count: int = SUBSAMPLE_SLICES) -> np.ndarray:
    """At most ``count`` evenly spaced slice indices over a whole stack of ``num_slices``.

    The whole stack, as training samples slices from whole volumes: a central subsample would
    see more bone than the training batches did and inflate in-domain distances.
    """
    if num_slices < 1:
        raise ValueError("an empty slice stack")
    return np.unique(np.linspace(0, num_slices - 1, min(count, num_slices)).round().astype(int))


def subsample_tensor(volume: np.ndarray, k: int = 1) -> Tensor:
    """The recognition subsample of a slice stack [S, H, W] as network input [N, k, H', W']
    (``k`` context slices each), padded to the network's multiple of 32 as at prediction."""
    picked = context_stack(volume, subsample_indices(len(volume)), k)
    return pad_to_multiple(torch.from_numpy(np.ascontiguousarray(picked, dtype=np.float32)))


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
    try:
        device = next(net.parameters()).device
        for start in range(0, slices.shape[0], batch_size):
            batch = slices[start : start + batch_size].to(device)
            domains = torch.full((batch.shape[0],), index, dtype=torch.long, device=device)
            accumulator.seen.clear()
            try:
                net(batch, domains)
            except _EarlyLayersDone:
                pass
    finally:
        accumulator.close()
    return accumulator


def bn_distance(net: nn.Module, slices: Tensor, index: int, batch_size: int = 16) -> float:
    """Distance of ``slices`` [N, k, H, W] to domain ``index``'s BN running statistics."""
    return _early_moments(net, slices, index, batch_size).distance()


def appearance_descriptor(path: Route, slices: Tensor, batch_size: int = 16) -> np.ndarray:
    """The appearance descriptor of ``slices`` [N, k, H, W] as ``path`` runs them (module doc);
    only the encoder's first layers run."""
    return _early_moments(path.net, slices, path.index, batch_size).descriptor()


@torch.no_grad()
def content_descriptor(path: Route, slices: Tensor, batch_size: int = 16) -> np.ndarray:
    """The content descriptor of ``slices`` [N, k, H, W] as ``path``'s head reads them."""
    net = path.net.eval()
    device = next(net.parameters()).device
    probability_sum, top_sum, count = None, 0.0, 0
    for start in range(0, slices.shape[0], batch_size):
        logits = path.logits(slices[start : start + batch_size].to(device))
        probabilities = torch.softmax(logits.double(), dim=1)
        sums = probabilities.sum(dim=(0, 2, 3))
        probability_sum = sums if probability_sum is None else probability_sum + sums
        top_sum += float(probabilities.max(dim=1).values.sum())
        count += probabilities[:, 0].numel()
    mean_probabilities = (probability_sum / count).cpu().numpy()
    top = min(top_sum / count, 1.0 - 1e-6)
    return np.append(np.log(mean_probabilities + PROBABILITY_FLOOR), np.log(top / (1.0 - top)))


def scan_features(path: Route, slices: Tensor, batch_size: int = 16) -> ScanFeatures:
    """Both descriptors of ``slices`` [N, k, H, W] as ``path`` runs them."""
    return ScanFeatures(
        appearance_descriptor(path, slices, batch_size),
        content_descriptor(path, slices, batch_size),
    )
