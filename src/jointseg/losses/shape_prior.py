"""The multi-joint shape prior: predictions and ground truth in the union label space, the code
distance under a frozen shape auto-encoder, and the latent adversarial terms.

A domain head predicts its own classes; ``head_to_union[h]`` (``LabelSpace.head_to_union``; the
identity for a head over the union) sends them to the union space, where the auto-encoder of
all joints' label maps lives. Union channels of structures a head does not know are 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from jointseg.data.labels import lookup_table

if TYPE_CHECKING:
    from jointseg.models.shape_autoencoder import ShapeAutoencoder


def union_probabilities(
    logits: Mapping[int, Tensor],
    index: Mapping[int, Tensor],
    head_to_union: Mapping[int, Tensor],
    num_union: int,
    batch_size: int,
) -> Tensor:
    """Softmax of every head, scattered into [B, K, H, W] union channels (differentiable).

    Sample ``index[h][j]`` gets ``softmax(logits[h][j])[c]`` in channel ``head_to_union[h][c]``;
    other channels, and samples of no head, are 0.
    """
    out: Tensor | None = None
    for head, head_logits in logits.items():
        positions = index[head].to(head_logits.device).long()
        if positions.numel() == 0:
            continue
        mapping = torch.as_tensor(head_to_union[head], device=head_logits.device).long()
        if mapping.numel() != head_logits.shape[1]:
            raise ValueError(
                f"head {head}: {head_logits.shape[1]} classes but head_to_union maps "
                f"{mapping.numel()}"
            )
        if int(mapping.max()) >= num_union or int(mapping.min()) < 0:
            raise ValueError(f"head {head}: union classes must lie in 0..{num_union - 1}")
        if out is None:
            shape = (batch_size, num_union, *head_logits.shape[2:])
            out = head_logits.new_zeros(shape, dtype=torch.float32)
        probabilities = torch.softmax(head_logits.float(), dim=1)
        out = out.index_put((positions[:, None], mapping[None, :]), probabilities, accumulate=True)
    if out is None:
        raise ValueError("no head has any sample in this batch")
    return out


def union_onehot(
    target: Tensor,
    domains_or_heads: Tensor,
    head_to_union: Mapping[int, Tensor],
    num_union: int,
) -> Tensor:
    """One-hot [B, K, H, W] (float) of local targets [B, H, W] sent to the union space.

    ``domains_or_heads[b]`` is the head whose local classes ``target[b]`` holds.
    """
    if target.dim() != 3:
        raise ValueError(f"target must be [B, H, W], got {tuple(target.shape)}")
    heads = domains_or_heads.to(target.device).long().reshape(-1)
    if heads.numel() != target.shape[0]:
        raise ValueError(f"{heads.numel()} head ids for {target.shape[0]} samples")
    rows = {h: torch.as_tensor(m).cpu().numpy() for h, m in head_to_union.items()}
    table = torch.as_tensor(lookup_table(rows, fill=-1), device=target.device)
    width = table.shape[1]
    missing = sorted(set(heads.tolist()) - set(head_to_union))
    if missing:
        raise KeyError(f"no head_to_union entry for heads {missing}")
    target = target.long()
    if int(target.min()) < 0 or int(target.max()) >= width:
        raise ValueError(f"target classes out of range 0..{width - 1}")
    union = table[heads[:, None, None], target]
    if int(union.min()) < 0:
        raise ValueError("a target class is outside its head's classes")
    if int(union.max()) >= num_union:
        raise ValueError(f"union classes must lie in 0..{num_union - 1}")
    return F.one_hot(union, num_union).permute(0, 3, 1, 2).float()


class _MethodCall(nn.Module):
    """Exposes ``inner.<method>`` as ``forward`` so that ``functional_call`` can run it."""

    def __init__(self, inner: nn.Module, method: str):
        super().__init__()
        self.inner = inner
        self.method = method

    def forward(self, *inputs: Tensor) -> Tensor:
        return getattr(self.inner, self.method)(*inputs)


def call_frozen(module: nn.Module, method: str, *inputs: Tensor) -> Tensor:
    """``module.<method>(*inputs)`` with detached parameters: no gradient ever reaches them."""
    params = {f"inner.{name}": p.detach() for name, p in module.named_parameters()}
    return functional_call(_MethodCall(module, method), params, inputs)


def shape_prior_loss(
    autoencoder: ShapeAutoencoder, predicted_probabilities: Tensor, target_onehot: Tensor
) -> Tensor:
    """``mean_b || E(pred_b) - E(gt_b) ||^2 / |code|``: the squared code distance of each
    sample divided by the code's size (channels x height x width), averaged over the batch.

    The division keeps the term's scale, and so ``lambda_shape``, independent of the code's
    size and of the patch size.

    ``E`` is the auto-encoder's encoder, used frozen: gradients flow into
    ``predicted_probabilities`` and never into its parameters (whatever their ``requires_grad``).
    Exactly zero when the prediction equals the one-hot ground truth.
    """
    if predicted_probabilities.shape != target_onehot.shape:
        raise ValueError(
            f"prediction {tuple(predicted_probabilities.shape)} and ground truth "
            f"{tuple(target_onehot.shape)} differ in shape"
        )
    dtype = next(autoencoder.parameters()).dtype
    code_pred = call_frozen(autoencoder, "encode", predicted_probabilities.to(dtype))
    with torch.no_grad():
        code_gt = call_frozen(autoencoder, "encode", target_onehot.to(dtype))
    return (code_pred - code_gt).pow(2).flatten(1).mean(dim=1).mean()


def adversarial_losses(
    discriminator: nn.Module, code_pred: Tensor, code_gt: Tensor
) -> tuple[Tensor, Tensor]:
    """Non-saturating GAN losses on shape codes: ``(generator loss, discriminator loss)``.

    With ``D`` the discriminator's logit and ``s(x) = log(1 + e^x)`` (BCE with logits):

    - generator (the segmenter): ``mean s(-D(code_pred))``, i.e. BCE towards "real"; computed with
      the discriminator's parameters detached, so it trains the segmenter only;
    - discriminator: ``(mean s(-D(code_gt)) + mean s(D(code_pred))) / 2`` on detached codes, so it
      trains the discriminator only.
    """
    fake_logit = call_frozen(discriminator, "forward", code_pred)
    generator = F.binary_cross_entropy_with_logits(fake_logit, torch.ones_like(fake_logit))
    real = discriminator(code_gt.detach())
    fake = discriminator(code_pred.detach())
    disc = 0.5 * (
        F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
        + F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    )
    return generator, disc
