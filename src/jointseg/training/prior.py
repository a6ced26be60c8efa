"""The multi-joint shape prior of a run: trained once on all domains' training masks, reused
(loading or training is :func:`~jointseg.training.shape_prior.obtain_shape_autoencoder`'s)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torch import nn

from jointseg.config import ExperimentConfig
from jointseg.data.labels import LabelSpace
from jointseg.data.patches import crop_patch, foreground_corner
from jointseg.models.shape_autoencoder import LatentDiscriminator
from jointseg.runs import RunFolder
from jointseg.training.datamodule import DomainSplit
from jointseg.training.schemes import ModelPlan
from jointseg.training.shape_prior import obtain_shape_autoencoder, union_training_masks
from jointseg.utils.distributed import is_global_zero

logger = logging.getLogger(__name__)

MAX_PRIOR_MASKS = 4000

WEAK_PRIOR_DICE = 0.5


def _masks(
    splits: list[DomainSplit],
    label_space: LabelSpace,
    validation: bool,
    patch: tuple[int, int],
) -> np.ndarray:
    """Union-space masks of every domain (in the label space's order): of each slice with
    foreground, the training patch centred on its foreground."""
    per_domain = []
    by_name = {s.name: s for s in splits}
    for domain in label_space.domains:
        split = by_name.get(domain.name)
        if split is None:
            per_domain.append(np.zeros((0, *patch), dtype=np.uint8))
            continue
        cases = split.validation_cases if validation else split.train_cases
        rows = split.cache.rows(cases) if cases else np.zeros(0, dtype=np.int64)
        rows = rows[np.asarray(split.cache.foreground)[rows]] if len(rows) else rows
        crops = []
        for row in np.sort(rows).tolist():
            label = np.asarray(split.cache.labels[row])
            crops.append(crop_patch(label, foreground_corner(label, patch), patch, 0))
        per_domain.append(np.stack(crops) if crops else np.zeros((0, *patch), dtype=np.uint8))
    masks = union_training_masks(per_domain, label_space)
    if len(masks) > MAX_PRIOR_MASKS:
        pick = np.random.default_rng(0).choice(len(masks), MAX_PRIOR_MASKS, replace=False)
        masks = masks[np.sort(pick)]
    return masks


def shape_prior_for(
    cfg: ExperimentConfig,
    plan: ModelPlan,
    label_space: LabelSpace,
    splits: list[DomainSplit],
    out: Path,
    progress: bool,
) -> tuple[nn.Module | None, nn.Module | None]:
    """(frozen auto-encoder, latent discriminator or None) for plans that use the prior."""
    if not plan.shape_prior:
        return None, None
    prior_cfg = cfg.regularization.shape_prior
    directory = RunFolder(Path(out)).shape_prior_dir
    patch = cfg.preprocessing.patch_size

    def masks() -> tuple[np.ndarray, np.ndarray | None]:
        validation = _masks(splits, label_space, True, patch)
        training = _masks(splits, label_space, False, patch)
        return training, validation if len(validation) else None

    autoencoder, report = obtain_shape_autoencoder(
        prior_cfg,
        masks,
        label_space.num_classes,
        directory=directory,
        seed=cfg.training.seed,
        progress=progress,
        save=is_global_zero(),
    )
    dice = report.get("validation_dice")
    if dice is None:
        dice = report.get("train_dice")
    text = f"{dice:.3f}" if isinstance(dice, float) else "n/a"
    logger.info("[train] shape prior: reconstruction Dice %s (%s)", text, directory)
    if isinstance(dice, float) and dice < WEAK_PRIOR_DICE:
        logger.warning(
            "[train] warning: the shape prior reconstructs the masks poorly (Dice below "
            "%s); raise regularization.shape_prior.steps",
            WEAK_PRIOR_DICE,
        )
    discriminator = None
    if prior_cfg.lambda_adv > 0:
        discriminator = LatentDiscriminator(code_channels=autoencoder.code_channels)
    return autoencoder, discriminator
