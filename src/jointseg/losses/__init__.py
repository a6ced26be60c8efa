"""Losses: Dice+CE per head, multi-scale supervised contrastive, multi-joint shape prior."""

from jointseg.losses.segmentation import head_loss, segmentation_loss
from jointseg.losses.shape_prior import (
    adversarial_losses,
    call_frozen,
    shape_prior_loss,
    union_onehot,
    union_probabilities,
)
from jointseg.losses.supcon import multiscale_supcon_loss, normalized_scale_weights, supcon_loss

__all__ = [
    "adversarial_losses",
    "call_frozen",
    "head_loss",
    "multiscale_supcon_loss",
    "normalized_scale_weights",
    "segmentation_loss",
    "shape_prior_loss",
    "supcon_loss",
    "union_onehot",
    "union_probabilities",
]
