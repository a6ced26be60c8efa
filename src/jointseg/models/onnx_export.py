"""One domain of a network as an ONNX graph: slices in, class probabilities out.

A graph is exported per domain, not one graph with the domain as an input: a domain selects
the batch-norm statistics of every layer (domain-specific BN) and a head with its own number of
classes, so the output's shape depends on it; an ``individual`` run has one network per
domain anyway. With the domain fixed, each graph is the exact computation PyTorch runs for it
and ONNX Runtime can fold every batch norm into its convolution.

Graph contract (the inferer's network call): input ``slices`` float32 [B, k, H, W] (k: the
model's context slices; H, W multiples of 32; B, H, W dynamic), output ``probabilities``
float32 [B, C, H, W] (softmax over background first, then the domain's structures).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from jointseg.config import PATCH_MULTIPLE
from jointseg.models.dsbn import DomainRouting
from jointseg.models.network import JointSegNet, context_slices
from jointseg.utils.atomic import atomic_path

logger = logging.getLogger(__name__)

OPSET = 18
INPUT_NAME = "slices"
OUTPUT_NAME = "probabilities"


class DomainGraph(nn.Module):
    """``net`` restricted to one domain: ``forward(x)`` = softmax of head ``index``'s logits
    (the union channels ``select`` of a union head), with BN domain ``index``.

    Equal to ``softmax(head_logits(net, x, index)[:, select])``; the batch is never split by
    domain, so batch size and slice size stay dynamic in a traced graph.
    """

    def __init__(self, net: JointSegNet, index: int, select: Sequence[int] | None = None):
        super().__init__()
        if not 0 <= index < max(net.num_heads, 1):
            raise ValueError(f"head index {index} out of range for {net.num_heads} head(s)")
        self.net = net
        self.index = int(index)
        self.register_buffer(
            "select", None if select is None else torch.tensor(list(select), dtype=torch.long)
        )

    def forward(self, x: Tensor) -> Tensor:
        routing = DomainRouting.single(x.shape[0], self.index)
        features = self.net.encoder(x, routing)
        decoded = self.net.decoder(features, routing)
        logits = self.net.heads[self.index](decoded[-1])
        if self.select is not None:
            logits = logits.index_select(1, self.select)
        return torch.softmax(logits.float(), dim=1)


def export_domain_graph(
    graph: DomainGraph,
    path: str | Path,
    metadata: dict[str, str] | None = None,
    side: int = 2 * PATCH_MULTIPLE,
) -> Path:
    """Export ``graph`` to ``path`` (written atomically), check it with ``onnx.checker`` and
    store ``metadata`` as the model's metadata properties; returns the path."""
    try:
        import onnx
    except ImportError:
        raise ImportError("ONNX export needs onnx: pip install 'jointseg[onnx]'") from None
    path = Path(path)
    graph = graph.eval()
    example = torch.zeros(2, context_slices(graph.net), side, side)
    axes = {0: "batch", 2: "height", 3: "width"}
    with atomic_path(path) as tmp, torch.no_grad(), warnings.catch_warnings():
        # the batch's one-domain routing is a constant of the trace, as intended
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            graph,
            (example,),
            str(tmp),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
            opset_version=OPSET,
            dynamo=False,
        )
        model = onnx.load(str(tmp))
        for key, value in (metadata or {}).items():
            entry = model.metadata_props.add()
            entry.key, entry.value = str(key), str(value)
        onnx.checker.check_model(model, full_check=True)
        onnx.save(model, str(tmp))
    logger.info("exported %s", path)
    return path


__all__ = ["INPUT_NAME", "OPSET", "OUTPUT_NAME", "DomainGraph", "export_domain_graph"]
