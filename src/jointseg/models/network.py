"""JointSegNet: a ResNet U-Net with per-domain heads, optional domain-specific BN and taps.

One class covers the paper's schemes:

- mtmd: ``domain_specific_bn=True`` and one head per domain;
- shared: plain BatchNorm and a single head over the union of labels;
- individual: plain BatchNorm and a single head for one dataset.

With a single head every sample uses head 0 whatever its domain id. With several heads,
``domains[i]`` picks both sample ``i``'s head and (when domain-specific) its BN domain.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from jointseg.config import PATCH_MULTIPLE, ModelConfig
from jointseg.models.decoder import UNetDecoder
from jointseg.models.dsbn import DomainRouting, convert_to_domain_bn
from jointseg.models.projector import Projector
from jointseg.models.resnet import ResNetEncoder, scaled

ENCODER_TAPS = ("enc0", "enc1", "enc2", "enc3", "enc4")
DECODER_TAPS = ("dec0", "dec1", "dec2", "dec3", "dec4")
TAP_NAMES = ENCODER_TAPS + DECODER_TAPS
TAP_STRIDES: dict[str, int] = dict(zip(TAP_NAMES, (2, 4, 8, 16, 32, 16, 8, 4, 2, 1), strict=True))


@dataclass
class SegOutput:
    """Logits grouped by head; ``index[d]`` holds the batch positions of ``logits[d]``'s rows.

    ``embeddings``: tap name -> [B, projector_dim] unit vectors in batch order (empty unless
    requested).
    """

    logits: dict[int, Tensor]
    index: dict[int, Tensor]
    embeddings: dict[str, Tensor] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return sum(int(i.numel()) for i in self.index.values())

    def per_sample(self) -> list[Tensor]:
        """Logits [C_d, H, W] of every sample, in batch order."""
        samples: list[Tensor | None] = [None] * self.batch_size
        for head, logits in self.logits.items():
            for row, position in zip(logits, self.index[head].tolist(), strict=True):
                samples[position] = row
        return samples  # type: ignore[return-value]


class JointSegNet(nn.Module):
    """ResNet encoder, U-Net decoder, one 1x1 conv head per domain, projectors per tap."""

    def __init__(self, cfg: ModelConfig, head_classes: Sequence[int], domain_specific_bn: bool):
        super().__init__()
        head_classes = [int(c) for c in head_classes]
        if not head_classes or min(head_classes) < 1:
            raise ValueError(f"need at least one head with >= 1 class, got {head_classes}")
        unknown = [t for t in cfg.feature_taps if t not in TAP_NAMES]
        if unknown:
            raise ValueError(f"unknown feature taps {unknown}; available: {', '.join(TAP_NAMES)}")
        self.cfg = cfg
        self.head_classes = head_classes
        self.domain_specific_bn = bool(domain_specific_bn)
        self.num_domains = len(head_classes)
        self.encoder = ResNetEncoder(cfg.encoder, cfg.context_slices, cfg.width)
        decoder_channels = [scaled(c, cfg.width) for c in cfg.decoder_channels]
        self.decoder = UNetDecoder(self.encoder.channels, decoder_channels)
        self.heads = nn.ModuleList(nn.Conv2d(decoder_channels[-1], c, 1) for c in head_classes)
        self.tap_channels: dict[str, int] = dict(
            zip(TAP_NAMES, (*self.encoder.channels, *self.decoder.channels), strict=True)
        )
        self.projectors = nn.ModuleDict(
            {
                tap: Projector(self.tap_channels[tap], cfg.projector_hidden, cfg.projector_dim)
                for tap in cfg.feature_taps
            }
        )
        if self.domain_specific_bn:
            convert_to_domain_bn(self.encoder, self.num_domains)
            convert_to_domain_bn(self.decoder, self.num_domains)

    @property
    def num_heads(self) -> int:
        return len(self.heads)

    def route(self, domains: Tensor | None, batch_size: int, device=None) -> DomainRouting:
        """How a batch with these domain ids splits over heads and BN domains."""
        if self.num_heads == 1:
            return DomainRouting.single(batch_size)
        if domains is None:
            raise ValueError(f"this network has {self.num_heads} heads: pass the domain ids")
        if tuple(domains.shape) != (batch_size,):
            raise ValueError(f"domains must have shape ({batch_size},), got {tuple(domains.shape)}")
        return DomainRouting.from_domains(domains, self.num_domains, device=device)

    def forward(
        self, x: Tensor, domains: Tensor | None = None, return_embeddings: bool = False
    ) -> SegOutput:
        """Segment ``x`` [B, k, H, W] (k: ``context_slices``; H, W multiples of 32); see
        :class:`SegOutput`."""
        self._check_input(x)
        routing = self.route(domains, x.shape[0], x.device)
        if routing.order is not None:
            x = x.index_select(0, routing.order)
        grouped = routing.grouped_view()
        features = self.encoder(x, grouped)
        decoded = self.decoder(features, grouped)
        parts = decoded[-1].split(list(routing.counts))
        logits = {d: self.heads[d](part) for d, part in zip(routing.domains, parts, strict=True)}
        embeddings: dict[str, Tensor] = {}
        if return_embeddings:
            maps = dict(zip(TAP_NAMES, (*features, *decoded), strict=True))
            for tap, projector in self.projectors.items():
                vectors = projector(maps[tap])
                if routing.inverse is not None:
                    vectors = vectors.index_select(0, routing.inverse)
                embeddings[tap] = vectors
        return SegOutput(logits, routing.positions(x.device), embeddings)

    def _check_input(self, x: Tensor) -> None:
        k = self.cfg.context_slices
        if x.dim() != 4 or x.shape[1] != k:
            raise ValueError(
                f"expected input [B, {k}, H, W] (model.context_slices = {k}), got {tuple(x.shape)}"
            )
        if x.shape[2] % PATCH_MULTIPLE or x.shape[3] % PATCH_MULTIPLE:
            raise ValueError(
                f"input height and width must be multiples of {PATCH_MULTIPLE}, "
                f"got {tuple(x.shape[2:])}"
            )


def build_model(
    cfg: ModelConfig,
    head_classes: Sequence[int],
    domain_specific_bn: bool,
    *,
    pretrained: bool = True,
) -> JointSegNet:
    """Build the network; with ``pretrained`` the encoder loads ``cfg.encoder_weights``."""
    net = JointSegNet(cfg, head_classes, domain_specific_bn)
    if pretrained and cfg.encoder_weights != "none":
        from jointseg.models.pretrained import load_encoder_weights

        load_encoder_weights(net, cfg.encoder_weights)
    return net


def context_slices(net: nn.Module) -> int:
    """The slices per input of ``net`` (:mod:`jointseg.data.context`); 1 for 2D networks."""
    return int(getattr(getattr(net, "cfg", None), "context_slices", 1))


def head_logits(net: nn.Module, x: Tensor, index: int) -> Tensor:
    """Logits [B, C, H, W] of head/BN ``index`` for a batch of inputs [B, k, H, W]."""
    domains = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
    out = net(x, domains)
    if len(out.logits) == 1:
        return next(iter(out.logits.values()))
    return torch.stack(out.per_sample())


def domain_logits(logits: Tensor, channels: Sequence[int] | None) -> Tensor:
    """A head's logits [B, K, H, W] as one domain's: for a head over the union label space, the
    domain's union ``channels`` (``LabelSpace.union_channels``: background, then its structures),
    so that channel ``c`` is local class ``c`` and other domains' structures take no part in the
    softmax or argmax; a domain's own head (``channels`` None) is returned unchanged.

    The one decoding of a shared head: validation and prediction both go through it.
    """
    return logits if channels is None else logits[:, list(channels)]


def domain_labels(logits: Tensor, channels: Sequence[int] | None) -> Tensor:
    """The domain's local label map [B, H, W] of a head's logits (see :func:`domain_logits`)."""
    return domain_logits(logits, channels).argmax(dim=1)


@dataclass(frozen=True)
class Route:
    """How a network runs one domain: the network, the domain's head (and BN) index there and,
    for a head over the union label space, the union channels of the domain's classes
    (background first; see :func:`domain_logits`). Prediction, recognition and the
    recognition fitting all run a domain through one."""

    net: nn.Module
    index: int
    select: tuple[int, ...] | None = None

    @classmethod
    def for_domain(
        cls,
        net: nn.Module,
        model_domains: Sequence[str],
        domain: str,
        union_channels: Sequence[int] | None = None,
    ) -> Route:
        """``domain``'s route through ``net`` trained on ``model_domains``; ``union_channels``
        for a union head (``LabelSpace.union_channels``), else None."""
        select = None if union_channels is None else tuple(int(c) for c in union_channels)
        return cls(net, head_index(net, model_domains, domain), select)

    @property
    def context_slices(self) -> int:
        """The slices per input of the route's network."""
        return context_slices(self.net)

    def logits(self, x: Tensor) -> Tensor:
        """The domain's logits [B, C_domain, H, W] of inputs [B, k, H, W]."""
        return domain_logits(head_logits(self.net, x, self.index), self.select)


def head_index(net: nn.Module, model_domains: Sequence[str], domain: str) -> int:
    """The head (and BN) index of ``domain`` in a network trained on ``model_domains``."""
    return list(model_domains).index(domain) if getattr(net, "num_heads", 1) > 1 else 0
