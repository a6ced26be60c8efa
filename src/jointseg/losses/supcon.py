"""Supervised contrastive loss (Khosla et al. 2020) and its multi-scale, domain-labelled use.

For L2-normalized features ``z`` and temperature ``t``, anchor ``i`` with positives
``P(i) = {p != i : y_p = y_i}`` has

    l_i = -1/|P(i)| sum_{p in P(i)} log( exp(z_i.z_p / t) / sum_{a != i} exp(z_i.z_a / t) )

and the loss is the mean of ``l_i`` over the anchors with ``|P(i)| >= 1``. Anchors without a
positive contribute zero; when no anchor has one the loss is 0 (a zero that still carries a
graph, so ``backward`` works and yields zero gradients, never NaN).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """SupCon over ``features`` [B, D] or [B, V, D] with integer ``labels`` [B].

    With views (``[B, V, D]``) every view is an anchor of its own and shares its sample's label.
    Features are L2-normalized here again (harmless when they already are). Computed in float32,
    with the row maximum subtracted (``logsumexp``), so ``t = 0.05`` is safe.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if features.dim() == 2:
        features = features.unsqueeze(1)
    if features.dim() != 3:
        raise ValueError(f"features must be [B, D] or [B, V, D], got {tuple(features.shape)}")
    batch, views, _ = features.shape
    labels = labels.reshape(-1).to(features.device)
    if labels.numel() != batch:
        raise ValueError(f"{labels.numel()} labels for {batch} samples")

    z = F.normalize(features.float().reshape(batch * views, -1), dim=1)
    y = labels.repeat_interleave(views)
    n = z.shape[0]
    if n < 2:
        return z.sum() * 0.0

    eye = torch.eye(n, dtype=torch.bool, device=z.device)
    logits = z @ z.T / temperature
    # Subtracting the (detached) row maximum changes nothing mathematically; it keeps exp bounded.
    logits = logits - logits.max(dim=1, keepdim=True).values.detach()
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)

    positives = (y.unsqueeze(0) == y.unsqueeze(1)) & ~eye
    num_pos = positives.sum(dim=1)
    pos_log_prob = torch.where(positives, log_prob, torch.zeros_like(log_prob)).sum(dim=1)
    has_pos = num_pos > 0
    per_anchor = -pos_log_prob / num_pos.clamp(min=1)
    per_anchor = torch.where(has_pos, per_anchor, torch.zeros_like(per_anchor))
    return per_anchor.sum() / has_pos.sum().clamp(min=1)


def normalized_scale_weights(weights: Mapping[str, float]) -> dict[str, float]:
    """Scale weights divided by their sum (taps with weight 0 dropped)."""
    if not weights:
        raise ValueError("no contrastive scale configured (regularization.contrastive.scales)")
    negative = [tap for tap, w in weights.items() if w < 0]
    if negative:
        raise ValueError(f"contrastive scale weights must be >= 0, negative for {negative}")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError("contrastive scale weights sum to zero")
    return {tap: float(w) / total for tap, w in weights.items() if w > 0}


def multiscale_supcon_loss(
    embeddings: Mapping[str, Tensor],
    domains: Tensor,
    weights: Mapping[str, float],
    temperature: float,
) -> Tensor:
    """``sum_s w_s SupCon(embeddings[s], domains)`` with the weights normalized to sum to 1.

    Args:
        embeddings: tap name -> [B, D] (or [B, V, D]) projected, L2-normalized embeddings.
        domains: LongTensor [B], the domain id of each sample (the contrastive label).
        weights: tap name -> weight (``regularization.contrastive.scales``).
        temperature: the SupCon temperature.
    """
    total: Tensor | None = None
    for tap, weight in normalized_scale_weights(weights).items():
        if tap not in embeddings:
            known = ", ".join(sorted(embeddings)) or "none"
            raise KeyError(
                f"contrastive scale {tap!r} is not among the model's feature taps ({known}); "
                "add it to model.feature_taps or remove it from regularization.contrastive.scales"
            )
        term = weight * supcon_loss(embeddings[tap], domains, temperature)
        total = term if total is None else total + term
    assert total is not None  # normalized_scale_weights keeps at least one tap
    return total
