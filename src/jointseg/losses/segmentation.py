"""Dice + cross-entropy per domain head.

Every head is scored against its own samples with MONAI's ``DiceCELoss`` (softmax over the
head's classes, integer targets turned one-hot). Our choices, fixed here:

- ``include_background=False``: the Dice term averages over the head's structures only (bones);
  the background is dominant and its Dice is close to one whatever the prediction. The
  cross-entropy term covers every class, background included.
- ``batch=True``: the Dice of a structure pools all slices of the head in the batch (as if they
  were one volume). Slice-wise Dice is ill-defined on the many slices where a bone is absent;
  pooled, a structure absent from the whole head batch still contributes ``1 - eps / (sum p +
  eps)``, i.e. a penalty for predicting it, and ~0 for a confident empty prediction.

Heads are combined as ``sum_h n_h L_h / sum_h n_h`` with ``n_h`` the number of samples of head
``h`` in the batch, so that each sample weighs the same whatever the batch's domain mix; heads
without samples are skipped.
"""

from __future__ import annotations

from monai.losses import DiceCELoss
from torch import Tensor


def _dice_ce(dice_weight: float, ce_weight: float) -> DiceCELoss:
    return DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        lambda_dice=dice_weight,
        lambda_ce=ce_weight,
    )


def head_loss(
    logits: Tensor, target: Tensor, dice_weight: float = 1.0, ce_weight: float = 1.0
) -> Tensor:
    """Dice + CE of one head: ``logits`` [n, C, H, W], ``target`` [n, H, W] local classes.

    Computed in float32 (also under mixed precision).
    """
    return _dice_ce(dice_weight, ce_weight)(logits.float(), target.unsqueeze(1).long())


def segmentation_loss(
    logits: dict[int, Tensor],
    index: dict[int, Tensor],
    target: Tensor,
    dice_weight: float = 1.0,
    ce_weight: float = 1.0,
) -> Tensor:
    """Sample-weighted mean over heads of Dice + cross-entropy (see the module docstring).

    Args:
        logits: head index -> [n_h, C_h, H, W] logits of the head's samples.
        index: head index -> LongTensor [n_h], the positions of those samples in the batch.
        target: LongTensor [B, H, W], each sample's LOCAL class indices (its own domain's).
        dice_weight, ce_weight: weights of the Dice and cross-entropy terms.

    Returns:
        A scalar tensor.
    """
    if target.dim() != 3:
        raise ValueError(f"target must be [B, H, W] class indices, got shape {tuple(target.shape)}")
    total: Tensor | None = None
    count = 0
    for head, head_logits in logits.items():
        if head not in index:
            raise KeyError(f"head {head} has logits but no entry in index")
        positions = index[head].to(target.device)
        n = int(positions.numel())
        if n == 0:
            continue
        head_target = target[positions]
        num_classes = head_logits.shape[1]
        if head_logits.shape[0] != n or head_logits.shape[2:] != head_target.shape[1:]:
            raise ValueError(
                f"head {head}: logits {tuple(head_logits.shape)} do not match its {n} samples "
                f"of size {tuple(head_target.shape[1:])}"
            )
        low, high = int(head_target.min()), int(head_target.max())
        if low < 0 or high >= num_classes:
            raise ValueError(
                f"head {head}: target classes must lie in 0..{num_classes - 1}, "
                f"found {low}..{high} (targets must be local to each sample's domain)"
            )
        term = n * head_loss(head_logits, head_target, dice_weight, ce_weight)
        total = term if total is None else total + term
        count += n
    if total is None:
        raise ValueError("no head has any sample in this batch")
    return total / count
