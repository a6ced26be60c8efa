"""Dice + cross-entropy per domain head."""

from __future__ import annotations

import math

import pytest
import torch
from monai.losses import DiceCELoss

from jointseg.losses import segmentation_loss


def _monai(logits: torch.Tensor, target: torch.Tensor, dice: float = 1.0, ce: float = 1.0):
    loss = DiceCELoss(
        include_background=False,
        to_onehot_y=True,
        softmax=True,
        batch=True,
        lambda_dice=dice,
        lambda_ce=ce,
    )
    return loss(logits, target[:, None])


def _two_heads():
    """Batch of 5: samples 0, 2, 3 from head 0 (3 classes), samples 1, 4 from head 1 (2)."""
    generator = torch.Generator().manual_seed(0)
    target = torch.zeros(5, 8, 8, dtype=torch.long)
    target[[0, 2, 3]] = torch.randint(0, 3, (3, 8, 8), generator=generator)
    target[[1, 4]] = torch.randint(0, 2, (2, 8, 8), generator=generator)
    logits = {
        0: torch.randn(3, 3, 8, 8, generator=generator, requires_grad=True),
        1: torch.randn(2, 2, 8, 8, generator=generator, requires_grad=True),
    }
    index = {0: torch.tensor([0, 2, 3]), 1: torch.tensor([1, 4])}
    return logits, index, target


def test_hand_computed_uniform_prediction():
    # One head, two classes, one 1x2 image with target [0, 1], logits 0 -> p = 0.5 everywhere.
    # CE = mean(-log 0.5, -log 0.5) = log 2.
    # Foreground Dice: intersection 0.5, |P| + |G| = 1 + 1 -> (1 + 1e-5) / (2 + 1e-5) ~ 0.5
    # total = 2.0 * (1 - 0.5) + 0.5 * log 2 with dice_weight 2, ce_weight 0.5
    logits = {0: torch.zeros(1, 2, 1, 2)}
    target = torch.tensor([[[0, 1]]])
    loss = segmentation_loss(logits, {0: torch.tensor([0])}, target, dice_weight=2.0, ce_weight=0.5)
    assert loss.item() == pytest.approx(1.0 + 0.5 * math.log(2), abs=1e-5)
    plain = segmentation_loss(logits, {0: torch.tensor([0])}, target)
    assert plain.item() == pytest.approx(0.5 + math.log(2), abs=1e-5)


def test_equals_monai_per_head_weighted_by_samples():
    logits, index, target = _two_heads()
    loss = segmentation_loss(logits, index, target)
    head0 = _monai(logits[0], target[[0, 2, 3]])
    head1 = _monai(logits[1], target[[1, 4]])
    assert loss.item() == pytest.approx(((3 * head0 + 2 * head1) / 5).item(), rel=1e-6)

    weighted = segmentation_loss(logits, index, target, dice_weight=0.3, ce_weight=2.0)
    head0 = _monai(logits[0], target[[0, 2, 3]], 0.3, 2.0)
    head1 = _monai(logits[1], target[[1, 4]], 0.3, 2.0)
    assert weighted.item() == pytest.approx(((3 * head0 + 2 * head1) / 5).item(), rel=1e-6)


def test_gradients_reach_every_head():
    logits, index, target = _two_heads()
    segmentation_loss(logits, index, target).backward()
    for head in logits.values():
        assert head.grad is not None and head.grad.abs().sum() > 0


def test_perfect_confident_prediction_is_near_zero():
    _, index, target = _two_heads()
    logits = {
        0: 30.0 * torch.nn.functional.one_hot(target[[0, 2, 3]], 3).permute(0, 3, 1, 2).float(),
        1: 30.0 * torch.nn.functional.one_hot(target[[1, 4]], 2).permute(0, 3, 1, 2).float(),
    }
    assert segmentation_loss(logits, index, target).item() < 1e-4


def test_empty_head_is_skipped():
    logits, index, target = _two_heads()
    logits[2] = torch.randn(0, 4, 8, 8)
    index[2] = torch.zeros(0, dtype=torch.long)
    with_empty = segmentation_loss(logits, index, target)
    del logits[2], index[2]
    assert with_empty.item() == pytest.approx(segmentation_loss(logits, index, target).item())


def test_foreign_class_in_target_is_an_error_naming_the_head():
    logits, index, target = _two_heads()
    target[4, 0, 0] = 2  # head 1 has only classes 0 and 1
    with pytest.raises(ValueError, match="head 1"):
        segmentation_loss(logits, index, target)


def test_mismatched_logits_and_index():
    logits, index, target = _two_heads()
    index[1] = torch.tensor([1])
    with pytest.raises(ValueError, match="head 1"):
        segmentation_loss(logits, index, target)
    with pytest.raises(ValueError, match="no head"):
        segmentation_loss({}, {}, target)
