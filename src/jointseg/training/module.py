"""The Lightning module: one network, its losses, its optimizer, its validation."""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path

import lightning as L
import numpy as np
import torch
from torch import Tensor, nn

from jointseg.config import ExperimentConfig
from jointseg.data.context import context_stack
from jointseg.data.dice import dice_per_class
from jointseg.data.labels import LabelSpace
from jointseg.losses import (
    adversarial_losses,
    call_frozen,
    multiscale_supcon_loss,
    segmentation_loss,
    shape_prior_loss,
    union_onehot,
    union_probabilities,
)
from jointseg.models.inferer import WholeViewInferer
from jointseg.models.network import context_slices, domain_labels, head_logits
from jointseg.training.schemes import ModelPlan
from jointseg.utils.atomic import atomic_write_json
from jointseg.utils.compute import as_memory_format, to_memory_format
from jointseg.utils.faults import fault_point

VALIDATION_CHUNK = 32


class SegmentationModule(L.LightningModule):
    """Trains ``net`` for one :class:`ModelPlan`: Dice+CE per head, plus the plan's regularizers.

    Batches carry ``domain`` = index into ``plan.domains`` and ``label`` = that domain's local
    classes. With a union label space (one head over all structures) labels are mapped to union
    classes here; validation reads each domain's own union channels (``domain_labels``), as the
    Predictor does, so that the checkpoint chosen on validation is the one deployed.
    """

    def __init__(
        self,
        net: nn.Module,
        cfg: ExperimentConfig,
        plan: ModelPlan,
        label_space: LabelSpace,
        total_steps: int,
        shape_autoencoder: nn.Module | None = None,
        discriminator: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.channels_last = cfg.training.channels_last
        self.net = to_memory_format(net, self.channels_last)
        self.cfg = cfg
        self.plan = plan
        self.total_steps = max(1, total_steps)
        self.union = plan.label_space == "union"
        indices = [label_space.domain_index(d) for d in plan.domains]
        self.local_classes = [label_space.domains[i].num_classes for i in indices]
        self.union_classes = label_space.num_classes
        to_union = torch.as_tensor(label_space.local_to_union_table(plan.domains))
        self.register_buffer("to_union", to_union, persistent=False)
        # validation decodes a union head as prediction does: each domain's own channels
        self.domain_channels = [label_space.union_channels(d) for d in plan.domains]
        self.head_classes = label_space.head_to_union(plan.domains, self.union)
        self.shape_autoencoder = shape_autoencoder
        if shape_autoencoder is not None:
            shape_autoencoder.requires_grad_(False).eval()
        self.discriminator = discriminator
        self._validation: dict[int, list[np.ndarray]] = defaultdict(list)

    # ------------------------------------------------------------------ training
    def _head_to_union(self) -> dict[int, Tensor]:
        device = self.to_union.device
        return {h: torch.as_tensor(m, device=device) for h, m in self.head_classes.items()}

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        fault_point("train.step")
        image, target, domains = batch["image"], batch["label"], batch["domain"]
        image = as_memory_format(image, self.channels_last)
        if batch_idx == 0 and self.current_epoch == 0 and self.trainer.world_size > 1:
            self._record_first_batches(batch)
        if self.union:
            target = self.to_union[domains[:, None, None], target]
        out = self.net(image, domains, return_embeddings=self.plan.contrastive)
        seg = segmentation_loss(out.logits, out.index, target)
        loss = seg
        logs = {"train/seg": seg.detach()}
        reg = self.cfg.regularization
        ramp = regularization_ramp(self.global_step, reg.ramp, self.total_steps)
        if reg.ramp:
            logs["train/ramp"] = torch.tensor(ramp)
        if self.plan.contrastive and reg.contrastive.lambda_con > 0:
            con = multiscale_supcon_loss(
                out.embeddings, domains, reg.contrastive.scales, reg.contrastive.temperature
            )
            loss = loss + reg.contrastive.lambda_con * ramp * con
            logs["train/con"] = con.detach()
        if self.plan.shape_prior and self.shape_autoencoder is not None:
            loss = loss + self._shape_terms(out, target, domains, logs, ramp)
        logs["train/loss"] = loss.detach()
        self.log_dict(logs, on_step=True, on_epoch=True, batch_size=image.shape[0])
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, logger=False)
        return loss

    def _record_first_batches(self, batch: dict) -> None:
        """Under DDP, write each rank's first (domain, row) draws to the log folder."""
        keys = torch.stack([batch["domain"], batch["row"]], dim=1)
        gathered = self.all_gather(keys)
        log_dir = self.trainer.log_dir  # a collective call under DDP: every rank makes it
        if self.trainer.is_global_zero and log_dir:
            draws = {f"rank{r}": gathered[r].tolist() for r in range(gathered.shape[0])}
            atomic_write_json(Path(log_dir) / "ddp_first_batches.json", draws)

    def _shape_terms(
        self, out, target: Tensor, domains: Tensor, logs: dict, ramp: float = 1.0
    ) -> Tensor:
        prior = self.cfg.regularization.shape_prior
        head_to_union = self._head_to_union()
        batch = target.shape[0]
        heads = torch.zeros_like(domains) if self.union else domains
        probabilities = union_probabilities(
            out.logits, out.index, head_to_union, self.union_classes, batch
        )
        onehot = union_onehot(target, heads, head_to_union, self.union_classes)
        shape = shape_prior_loss(self.shape_autoencoder, probabilities, onehot)
        logs["train/shape"] = shape.detach()
        total = prior.lambda_shape * ramp * shape
        if self.discriminator is not None and prior.lambda_adv > 0:
            code_pred = call_frozen(self.shape_autoencoder, "encode", probabilities)
            with torch.no_grad():
                code_gt = self.shape_autoencoder.encode(onehot)
            generator, disc = adversarial_losses(self.discriminator, code_pred, code_gt)
            logs["train/adv"] = generator.detach()
            logs["train/disc"] = disc.detach()
            total = total + prior.lambda_adv * ramp * generator + disc
        return total

    def configure_optimizers(self):
        opt_cfg = self.cfg.training.optimizer
        params = list(self.net.parameters())
        if self.discriminator is not None:
            params += list(self.discriminator.parameters())
        if opt_cfg.name == "adamw":
            optimizer = torch.optim.AdamW(params, lr=opt_cfg.lr, weight_decay=opt_cfg.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                params,
                lr=opt_cfg.lr,
                momentum=opt_cfg.momentum,
                nesterov=True,
                weight_decay=opt_cfg.weight_decay,
            )
        warmup = opt_cfg.warmup_epochs * self.cfg.training.iterations(len(self.plan.domains))
        schedule = lr_lambda(opt_cfg.schedule, warmup, self.total_steps)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }

    # ---------------------------------------------------------------- validation
    def validation_step(self, case: dict, batch_idx: int) -> None:
        """3D Dice of one whole-view subject, slices run as at prediction."""
        domain = int(case["domain"])
        volume, label = case["image"], case["label"]
        inferer = WholeViewInferer.from_config(self.cfg.inference)
        k = context_slices(self.net)
        channels = self.domain_channels[domain] if self.union else None
        predictions = []
        for start in range(0, volume.shape[0], VALIDATION_CHUNK):
            rows = np.arange(start, min(start + VALIDATION_CHUNK, volume.shape[0]))
            chunk = as_memory_format(context_stack(volume, rows, k), self.channels_last)
            logits = inferer(chunk, lambda x: head_logits(self.net, x, domain))
            predictions.append(domain_labels(logits, channels))
        prediction = torch.cat(predictions)
        scores = dice_per_class(prediction.cpu(), label.cpu(), self.local_classes[domain])
        self._validation[domain].append(scores)

    def on_validation_epoch_end(self) -> None:
        means = []
        for index, name in enumerate(self.plan.domains):
            cases = self._validation.get(index)
            value = float(np.mean(cases)) if cases else float("nan")
            if cases:
                means.append(value)
            self.log(f"val/dice_{name}", value, sync_dist=True, prog_bar=len(self.plan.domains) > 1)
        self.log("val/dice", float(np.mean(means)) if means else 0.0, sync_dist=True, prog_bar=True)
        self._validation.clear()


def regularization_ramp(step: int, fraction: float, total_steps: int) -> float:
    """The regularizers' weight factor at optimizer ``step`` (from 0): ``(step + 1) / n`` over
    the first ``n = round(fraction * total_steps)`` steps, then 1 (always 1 when ``n`` is 0)."""
    ramp_steps = round(fraction * total_steps)
    return 1.0 if ramp_steps <= 0 else min(1.0, (step + 1) / ramp_steps)


def lr_lambda(schedule: str, warmup_steps: int, total_steps: int):
    """Multiplier of the base learning rate at each step: linear warm-up, then the schedule."""

    def factor(step: int) -> float:
        if warmup_steps and step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        if schedule == "poly":
            return (1.0 - progress) ** 0.9
        return 1.0

    return factor
