"""Domain-specific batch normalization: one BatchNorm2d per domain, routed by domain id.

A batch that mixes domains is grouped by domain inside each layer; every group is normalized by
its own domain's layer (batch statistics in training, running statistics in evaluation) and the
samples are put back in the batch's order. Only the domains present in a batch update their
running statistics and receive gradients. Single-domain batches take one BatchNorm2d call;
mixed batches are split into contiguous views (after one gather when not already grouped),
and the normalized parts concatenated.

Domain ids travel explicitly: a layer's ``forward(x, domains)`` takes either a LongTensor [B]
or a :class:`DomainRouting` computed once per network call (no global state, so it is safe
under threads and DDP).

:func:`adapted_domain_statistics` is test-time adaptation of one domain (AdaBN, Li et al. 2016):
its BN running statistics re-estimated on unlabelled data, used, then restored.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor, nn

logger = logging.getLogger(__name__)

#: The buffers of a BatchNorm2d that hold its running statistics.
STATISTICS_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")


@dataclass(frozen=True)
class DomainRouting:
    """How a batch splits by domain, computed once and shared by every layer.

    ``domains``/``counts``: the domains present (ascending) and their sample counts. ``order``:
    the stable permutation that groups the batch by domain (``None`` when it already is grouped,
    i.e. the ids are non-decreasing); ``inverse`` undoes it.
    """

    domains: tuple[int, ...]
    counts: tuple[int, ...]
    order: Tensor | None = None
    inverse: Tensor | None = None

    def grouped_view(self) -> DomainRouting:
        """The routing of the same batch once grouped (``order`` applied)."""
        return DomainRouting(self.domains, self.counts)

    @property
    def batch_size(self) -> int:
        return sum(self.counts)

    @property
    def grouped(self) -> bool:
        return self.order is None

    @classmethod
    def single(cls, batch_size: int, domain: int = 0) -> DomainRouting:
        """Every sample in one domain."""
        return cls((domain,), (batch_size,))

    @classmethod
    def from_domains(
        cls,
        domains: Tensor | Sequence[int],
        num_domains: int,
        device: torch.device | str | None = None,
    ) -> DomainRouting:
        """Routing of a batch whose sample ``i`` belongs to domain ``domains[i]``.

        The permutation tensors live on ``device`` (default: the ids' device).
        """
        if device is None:
            device = domains.device if isinstance(domains, Tensor) else torch.device("cpu")
        if isinstance(domains, Tensor):
            if domains.dim() != 1:
                raise ValueError(
                    f"domains must be a 1-D tensor of ids, got shape {tuple(domains.shape)}"
                )
            values = [int(v) for v in domains.tolist()]
        else:
            values = [int(v) for v in domains]
        if not values:
            raise ValueError("empty batch: domains holds no ids")
        bad = sorted({v for v in values if not 0 <= v < num_domains})
        if bad:
            raise ValueError(f"domain ids {bad} out of range for {num_domains} domain(s)")
        present = sorted(set(values))
        counts = tuple(values.count(d) for d in present)
        if all(a <= b for a, b in zip(values, values[1:], strict=False)):
            return cls(tuple(present), counts)
        order = sorted(range(len(values)), key=values.__getitem__)  # stable
        inverse = [0] * len(order)
        for position, source in enumerate(order):
            inverse[source] = position
        as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=device)  # noqa: E731
        return cls(tuple(present), counts, as_tensor(order), as_tensor(inverse))

    def positions(self, device: torch.device | str | None = None) -> dict[int, Tensor]:
        """Domain -> LongTensor of the batch positions of its samples (ascending)."""
        if self.order is None:
            order = torch.arange(self.batch_size, device=device)
        else:
            order = self.order if device is None else self.order.to(device)
        return dict(zip(self.domains, order.split(list(self.counts)), strict=True))


class DomainModule(nn.Module):
    """Marker base class: a module whose ``forward`` takes ``(x, domains)``."""


class DomainSequential(nn.Sequential):
    """A sequential container that passes the domains to the children that take them."""

    def forward(self, x: Tensor, domains: Tensor | DomainRouting) -> Tensor:  # type: ignore[override]
        for module in self:
            x = call_with_domains(module, x, domains)
        return x


class DomainBatchNorm2d(DomainModule):
    """One :class:`torch.nn.BatchNorm2d` (statistics and affine parameters) per domain.

    ``forward(x, domains)`` normalizes sample ``i`` with domain ``domains[i]``'s layer. Batch
    statistics in training are computed per domain over that domain's samples only.
    Parameters are stored as ``bns.<domain>.<name>`` so that a plain BatchNorm2d's state can
    seed every domain.
    """

    def __init__(
        self, num_features: int, num_domains: int, eps: float = 1e-5, momentum: float | None = 0.1
    ):
        super().__init__()
        if num_domains < 1:
            raise ValueError(f"num_domains must be >= 1, got {num_domains}")
        self.num_features = num_features
        self.num_domains = num_domains
        self.bns = nn.ModuleList(
            nn.BatchNorm2d(num_features, eps=eps, momentum=momentum) for _ in range(num_domains)
        )

    @classmethod
    def from_batchnorm(cls, bn: nn.BatchNorm2d, num_domains: int) -> DomainBatchNorm2d:
        """A layer whose every domain starts as a copy of ``bn`` (statistics and parameters)."""
        layer = cls(bn.num_features, num_domains, eps=bn.eps, momentum=bn.momentum)
        layer.bns = nn.ModuleList(copy.deepcopy(bn) for _ in range(num_domains))
        layer.train(bn.training)
        return layer

    def extra_repr(self) -> str:
        return f"{self.num_features}, num_domains={self.num_domains}"

    def forward(self, x: Tensor, domains: Tensor | DomainRouting) -> Tensor:
        routing = (
            domains
            if isinstance(domains, DomainRouting)
            else DomainRouting.from_domains(domains, self.num_domains)
        )
        if routing.batch_size != x.shape[0]:
            raise ValueError(
                f"domain routing covers {routing.batch_size} samples, the input has {x.shape[0]}"
            )
        if routing.domains[-1] >= self.num_domains:
            raise ValueError(f"domain {routing.domains[-1]} out of range ({self.num_domains})")
        if len(routing.domains) == 1:
            return self.bns[routing.domains[0]](x)
        grouped = x if routing.order is None else x.index_select(0, routing.order)
        parts = grouped.split(list(routing.counts))
        out = torch.cat([self.bns[d](p) for d, p in zip(routing.domains, parts, strict=True)])
        return out if routing.inverse is None else out.index_select(0, routing.inverse)


def call_with_domains(module: nn.Module, x: Tensor, domains: Tensor | DomainRouting) -> Tensor:
    """Call ``module`` on ``x``, passing the domains only when its forward takes them."""
    if isinstance(module, (DomainModule, DomainSequential)):
        return module(x, domains)
    return module(x)


def convert_to_domain_bn(module: nn.Module, num_domains: int) -> nn.Module:
    """Replace every BatchNorm2d in ``module`` by a :class:`DomainBatchNorm2d`.

    Each domain of a new layer starts as a copy of the layer it replaces, so pretrained
    statistics and affine parameters seed every domain. The module is changed in place and
    returned (a bare BatchNorm2d is returned converted). Layers already domain-specific stay.
    """
    if isinstance(module, nn.BatchNorm2d):
        return DomainBatchNorm2d.from_batchnorm(module, num_domains)
    for name, child in module.named_children():
        if isinstance(child, DomainBatchNorm2d):
            continue
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, DomainBatchNorm2d.from_batchnorm(child, num_domains))
        else:
            convert_to_domain_bn(child, num_domains)
    return module


def domain_batchnorm_layers(net: nn.Module, domain: int) -> list[nn.BatchNorm2d]:
    """The BatchNorm2d layers that normalize domain ``domain`` in ``net``, in module order: the
    domain's layer of every :class:`DomainBatchNorm2d`, and every plain BatchNorm2d (shared by all
    domains, as in a network without domain-specific BN)."""
    layers: list[nn.BatchNorm2d] = []
    owned: set[int] = set()  # the per-domain layers inside DomainBatchNorm2d modules
    for module in net.modules():  # a parent comes before its children
        if isinstance(module, DomainBatchNorm2d):
            if not 0 <= domain < module.num_domains:
                raise ValueError(f"domain {domain} out of range ({module.num_domains})")
            layers.append(module.bns[domain])
            owned.update(id(bn) for bn in module.bns)
        elif isinstance(module, nn.BatchNorm2d) and id(module) not in owned:
            layers.append(module)
    return layers


@contextmanager
def adapted_domain_statistics(
    net: nn.Module, domain: int, estimate: Callable[[], object]
) -> Iterator[list[nn.BatchNorm2d]]:
    """Domain ``domain``'s BN running statistics re-estimated by ``estimate()``, in use inside the
    block and restored when it ends (AdaBN, Li et al. 2016); yields the domain's layers.

    ``estimate()`` runs ``net`` forward over the data to adapt to, e.g. every slice of a scan in
    batches, routed to ``domain``. Meanwhile the domain's BatchNorm2d layers
    (:func:`domain_batchnorm_layers`) alone are in training mode with ``momentum=None``: each
    layer's running mean and (unbiased) variance become the cumulative average of the statistics
    of the batches it normalizes (every batch weighs the same). No gradients are taken; the
    parameters and the other domains' layers stay as they are; a layer ``estimate`` does not
    reach keeps its statistics. Inside the block the layers normalize with the new statistics
    (evaluation mode). On leaving it, also on an error, every layer's statistics, momentum and
    mode are restored: ``net.state_dict()`` is bit for bit as before. The network is changed
    while the block runs, so it must not serve other calls meanwhile.
    """
    layers = domain_batchnorm_layers(net, domain)
    if not layers:
        raise ValueError("the network has no BatchNorm2d layer to adapt")
    untracked = [bn for bn in layers if not bn.track_running_stats]
    if untracked:
        raise ValueError(f"{len(untracked)} BatchNorm2d layer(s) keep no running statistics")
    saved = [
        (bn.training, bn.momentum, [getattr(bn, name).clone() for name in STATISTICS_BUFFERS])
        for bn in layers
    ]
    try:
        for bn in layers:
            bn.num_batches_tracked.zero_()  # momentum None: the first batch replaces the statistics
            bn.momentum = None
            bn.train()
        with torch.no_grad():
            estimate()
        reached = sum(int(bn.num_batches_tracked) > 0 for bn in layers)
        logger.debug("re-estimated the BN statistics of %d of %d layers", reached, len(layers))
        for bn, (_, _, buffers) in zip(layers, saved, strict=True):
            bn.eval()
            if int(bn.num_batches_tracked) == 0:  # not reached: its statistics, untouched
                bn.num_batches_tracked.copy_(buffers[2])
        yield layers
    finally:
        with torch.no_grad():
            for bn, (training, momentum, buffers) in zip(layers, saved, strict=True):
                for name, value in zip(STATISTICS_BUFFERS, buffers, strict=True):
                    getattr(bn, name).copy_(value)
                bn.momentum = momentum
                bn.train(training)
