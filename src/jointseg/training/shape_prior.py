"""Pre-training of the multi-joint shape prior: an auto-encoder of the union label maps of ALL
datasets' training masks, trained once before segmentation training, then frozen.

Input corruption: each training input is the one-hot mask, blurred (3x3 mean) with probability
1/2, then mixed with a random per-pixel class distribution by a factor drawn in
``[0, corruption]``. The target stays the clean mask, so the encoder learns to map soft,
imperfect label maps (like a network's softmax) near the code of the clean shape.

Reconstruction Dice (the report): per union structure, Dice pooled over all masks of the set
(``2 |P & G| / (|P| + |G|)`` summed over every pixel of every mask), averaged over the
structures present in the reference or the reconstruction; background excluded.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss
from tqdm.auto import tqdm

from jointseg.config import ShapePriorConfig
from jointseg.data.labels import LabelSpace
from jointseg.losses.shape_prior import adversarial_losses
from jointseg.models.shape_autoencoder import (
    ShapeAutoencoder,
    autoencoder_metadata,
    load_autoencoder,
    save_autoencoder,
)

__all__ = [
    "adversarial_losses",
    "obtain_shape_autoencoder",
    "reconstruction_dice",
    "train_shape_autoencoder",
    "union_training_masks",
]


def union_training_masks(per_domain: Sequence[np.ndarray], label_space: LabelSpace) -> np.ndarray:
    """Stack each domain's [N_d, H, W] LOCAL masks (in ``label_space.domains`` order) as union
    class indices [sum N_d, H, W] (uint8)."""
    if len(per_domain) != len(label_space.domains):
        raise ValueError(f"{len(per_domain)} mask arrays for {len(label_space.domains)} domains")
    parts = []
    for domain, masks in enumerate(per_domain):
        lut = label_space.local_to_union(domain)
        masks = np.asarray(masks)
        if masks.size and int(masks.max()) >= lut.size:
            raise ValueError(
                f"domain {label_space.domains[domain].name!r}: mask class {int(masks.max())} "
                f"beyond its {lut.size} local classes"
            )
        parts.append(lut[masks].astype(np.uint8))
    return np.concatenate(parts, axis=0)


def _check_masks(masks: np.ndarray, num_classes: int, factor: int, what: str) -> None:
    if masks.ndim != 3 or not np.issubdtype(masks.dtype, np.integer):
        raise ValueError(f"{what}: need integer masks [N, H, W], got {masks.dtype} {masks.shape}")
    if len(masks) == 0:
        raise ValueError(f"{what}: no masks")
    if masks.shape[1] % factor or masks.shape[2] % factor:
        raise ValueError(f"{what}: H and W must be multiples of {factor}, got {masks.shape[1:]}")
    low, high = int(masks.min()), int(masks.max())
    if low < 0 or high >= num_classes:
        raise ValueError(f"{what}: classes must lie in 0..{num_classes - 1}, found {low}..{high}")


def _onehot(batch: np.ndarray, num_classes: int, device: torch.device) -> torch.Tensor:
    labels = torch.from_numpy(np.asarray(batch, dtype=np.int64)).to(device)
    return F.one_hot(labels, num_classes).permute(0, 3, 1, 2).float()


def _corrupt(x: torch.Tensor, strength: float, generator: torch.Generator) -> torch.Tensor:
    """Blur half of the maps, then mix each with random class distributions (see module doc)."""
    if strength <= 0:
        return x
    n = x.shape[0]
    opts = {"generator": generator, "device": x.device}
    blur = torch.rand(n, 1, 1, 1, **opts) < 0.5
    smooth = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    x = torch.where(blur, smooth, x)
    noise = torch.softmax(3.0 * torch.randn(x.shape, **opts), dim=1)
    alpha = strength * torch.rand(n, 1, 1, 1, **opts)
    return (1 - alpha) * x + alpha * noise


@torch.no_grad()
def reconstruction_dice(
    ae: ShapeAutoencoder,
    masks: np.ndarray,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> tuple[float, list[float | None]]:
    """Mean foreground reconstruction Dice of clean one-hot ``masks``, and Dice per structure
    (None for a structure absent from both reference and reconstruction)."""
    device = torch.device(device)
    k = ae.num_classes
    intersection = torch.zeros(k, dtype=torch.float64)
    reference = torch.zeros(k, dtype=torch.float64)
    predicted = torch.zeros(k, dtype=torch.float64)
    for start in range(0, len(masks), batch_size):
        x = _onehot(masks[start : start + batch_size], k, device)
        pred = F.one_hot(ae(x).argmax(1), k).permute(0, 3, 1, 2).float()
        intersection += (pred * x).sum(dim=(0, 2, 3)).double().cpu()
        reference += x.sum(dim=(0, 2, 3)).double().cpu()
        predicted += pred.sum(dim=(0, 2, 3)).double().cpu()
    per_class: list[float | None] = []
    for c in range(1, k):
        denominator = float(reference[c] + predicted[c])
        per_class.append(None if denominator == 0 else 2 * float(intersection[c]) / denominator)
    present = [d for d in per_class if d is not None]
    return (float(np.mean(present)) if present else float("nan")), per_class


def train_shape_autoencoder(
    masks: np.ndarray,
    num_classes: int,
    cfg: ShapePriorConfig,
    seed: int = 0,
    validation_masks: np.ndarray | None = None,
    progress: bool = True,
    *,
    depth: int = 4,
    corruption: float = 0.3,
    device: str | torch.device = "cpu",
) -> tuple[ShapeAutoencoder, dict[str, Any]]:
    """Train the label-map auto-encoder on union masks [N, H, W]; return it frozen + a report.

    Adam (``cfg.lr``), ``cfg.epochs`` passes over shuffled batches of ``cfg.batch_size``, loss
    MONAI Dice+CE (softmax, foreground Dice pooled over the batch) between the reconstruction of
    the corrupted input and the clean mask. Deterministic for a given ``seed`` on the CPU; the
    global random state is left untouched. The report holds ``train_dice`` and
    ``validation_dice`` (None without validation masks), per-structure Dice, the loss per epoch
    and the time taken.
    """
    masks = np.asarray(masks) if not isinstance(masks, np.ndarray) else masks
    factor = 2**depth
    _check_masks(masks, num_classes, factor, "training masks")
    if validation_masks is not None:
        _check_masks(validation_masks, num_classes, factor, "validation masks")
    device = torch.device(device)
    started = time.perf_counter()

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = ShapeAutoencoder(num_classes, cfg.base_channels, cfg.code_channels, depth)
    ae.to(device).train()
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    optimizer = torch.optim.Adam(ae.parameters(), lr=cfg.lr)
    criterion = DiceCELoss(include_background=False, to_onehot_y=True, softmax=True, batch=True)

    n = len(masks)
    batches = max(1, -(-n // cfg.batch_size))
    history: list[float] = []
    bar = tqdm(total=cfg.epochs * batches, desc="shape prior", disable=not progress, leave=False)
    for _ in range(cfg.epochs):
        order = order_rng.permutation(n)
        running = 0.0
        for start in range(0, n, cfg.batch_size):
            picked = np.sort(order[start : start + cfg.batch_size])
            clean = _onehot(masks[picked], num_classes, device)
            labels = clean.argmax(1, keepdim=True)
            loss = criterion(ae(_corrupt(clean, corruption, generator)), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        history.append(running / batches)
    bar.close()

    ae.freeze()
    eval_batch = max(cfg.batch_size, 32)
    train_dice, train_per_class = reconstruction_dice(ae, masks, eval_batch, device)
    report: dict[str, Any] = {
        "train_dice": train_dice,
        "validation_dice": None,
        "train_dice_per_class": train_per_class,
        "validation_dice_per_class": None,
        "loss_per_epoch": history,
        "num_masks": n,
        "seconds": 0.0,
    }
    if validation_masks is not None:
        val_dice, val_per_class = reconstruction_dice(ae, validation_masks, eval_batch, device)
        report["validation_dice"] = val_dice
        report["validation_dice_per_class"] = val_per_class
    report["seconds"] = time.perf_counter() - started
    return ae, report


def obtain_shape_autoencoder(
    cfg: ShapePriorConfig,
    masks: np.ndarray,
    num_classes: int,
    directory: Path | None = None,
    seed: int = 0,
    validation_masks: np.ndarray | None = None,
    progress: bool = True,
    device: str | torch.device = "cpu",
) -> tuple[ShapeAutoencoder, dict[str, Any]]:
    """The configured prior: ``cfg.autoencoder`` when set (checked against ``num_classes``),
    otherwise a freshly trained one, saved into ``directory`` (with its report) when given."""
    if cfg.autoencoder:
        ae = load_autoencoder(Path(cfg.autoencoder), device=device)
        if ae.num_classes != num_classes:
            raise ValueError(
                f"shape auto-encoder {cfg.autoencoder} has {ae.num_classes} classes, this label "
                f"space has {num_classes} (regularization.shape_prior.autoencoder)"
            )
        source = Path(cfg.autoencoder)
        folder = source.parent if source.is_file() else source
        return ae, autoencoder_metadata(folder)
    ae, report = train_shape_autoencoder(
        masks, num_classes, cfg, seed, validation_masks, progress, device=device
    )
    if directory is not None:
        save_autoencoder(ae, Path(directory), metadata=report)
    return ae, report
