"""Adding one domain to a trained multi-domain network (``jointseg adapt``, docs/adapt.md).

The network of an ``mtmd``/``mtmd+con``/``full`` run gets one more domain: a BN copy in every
:class:`~jointseg.models.dsbn.DomainBatchNorm2d` and one more head. Everything of the old domains
(their BN, their heads) stays frozen; the shared convolutions are frozen too (``head``,
``norm+head``) or fine-tuned at a lower learning rate (``all``):

==========  ====================================================================================
head        the new head only
norm+head   the new head and the new BN's affine parameters
all         as norm+head, plus the shared convolutions at ``SHARED_LR_FACTOR`` x the learning rate
branch      a copy of the network for the new domain alone (:func:`branch_network`), every layer
            fine-tuned, the shared convolutions at the full learning rate (as ``transfer``);
            the old domains keep the run's network untouched
==========  ====================================================================================

``branch`` learns like ``transfer`` and forgets nothing: the adapted run holds two networks, the
run's (its old domains, bit for bit) and the new domain's own, which started from it.

The new BN's running statistics stay those it started from (``statistics="fixed"``, the
default: training and inference normalize alike) or are re-estimated on the new scans during
training (``"reestimated"``; with ``head`` this is AdaBN, Li et al. 2016). With few scans the
fixed statistics did better (benchmarks/adapt.py, docs/adapt.md).

The new layers train at ``NEW_LAYERS_LR_FACTOR`` x the run's learning rate: they start far from
their optimum (random head rows) and hold few parameters.

The new BN starts as a copy of one existing domain's (the nearest one, chosen by the caller) or
as the pool of every domain's (:func:`pooled_batchnorm`). Head rows of structures the source
domain also has (background included) start from that domain's head; the rest are random.
Training batches hold the new domain only, so with ``head`` and ``norm+head`` the old domains'
outputs stay bit-identical. The projectors (one per feature tap, shared by the domains) serve
only the contrastive term, which needs several domains in a batch: adaptation leaves them as
they are.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from torch import nn

from jointseg.config import ExperimentConfig
from jointseg.data.labels import LabelSpace
from jointseg.models import save_model
from jointseg.models.dsbn import DomainBatchNorm2d
from jointseg.models.network import JointSegNet
from jointseg.training.checkpoint_io import AtomicCheckpointIO
from jointseg.training.datamodule import DomainSplit, PlanDataModule
from jointseg.training.module import SegmentationModule, lr_lambda
from jointseg.training.schemes import ModelPlan
from jointseg.utils.compute import AUTO_DEVICE, lightning_placement, torch_device

logger = logging.getLogger(__name__)

ADAPT_MODES = ("head", "norm+head", "all", "branch")
BN_INITS = ("nearest", "pooled")
DEFAULT_BN_INIT = "nearest"
#: Learning rate of the new head and BN, x the base (the run's). Measured on 2 labelled scans,
#: ``norm+head``, 300 steps from the demo's ``full`` run (benchmarks/adapt.py): mean Dice of the
#: elbow 0.30 / 0.47 / 0.44 at 1x / 3.3x / 10x, of the knee's T1 site 0.58 / 0.69 at 1x / 3.3x.
NEW_LAYERS_LR_FACTOR = 3.0
SHARED_LR_FACTOR = 0.1  # learning rate of the shared convolutions in mode "all", x the base
BRANCH_SHARED_LR_FACTOR = 1.0  # ... in mode "branch": the whole copy fine-tuned, as transfer
ADAPTABLE_SCHEMES = ("mtmd", "mtmd+con", "full")
BN_STATISTICS = ("fixed", "reestimated")
DEFAULT_STATISTICS = "fixed"


class AdaptationError(ValueError):
    """A run or dataset that cannot be adapted; the message says why."""


def domain_batchnorms(net: nn.Module) -> list[DomainBatchNorm2d]:
    """Every domain-specific BN layer of ``net``, in module order."""
    return [m for m in net.modules() if isinstance(m, DomainBatchNorm2d)]


def pooled_batchnorm(layers: Sequence[nn.BatchNorm2d], target: nn.BatchNorm2d) -> None:
    """Set ``target`` to the equal-weight pool of ``layers``: mean affine parameters, and the
    mean and variance of the mixture of the layers' running distributions
    (``var = mean(var_d + mean_d^2) - mean^2``)."""
    with torch.no_grad():
        means = torch.stack([bn.running_mean for bn in layers])
        variances = torch.stack([bn.running_var for bn in layers])
        mean = means.mean(0)
        target.running_mean.copy_(mean)
        target.running_var.copy_((variances + means**2).mean(0) - mean**2)
        target.weight.copy_(torch.stack([bn.weight for bn in layers]).mean(0))
        target.bias.copy_(torch.stack([bn.bias for bn in layers]).mean(0))
        target.num_batches_tracked.zero_()


def extend_network(
    net: JointSegNet,
    new_classes: int,
    source: int | None,
    head_source: int | None = None,
    head_rows: dict[int, int] | None = None,
    seed: int = 0,
) -> JointSegNet:
    """A copy of ``net`` with one more domain (BN copies and a head of ``new_classes``).

    ``source``: the domain whose BN seeds the new one, or None for the pool of all domains.
    ``head_rows``: new head row -> row of domain ``head_source``'s head to copy (the rest stay
    at PyTorch's initialization drawn with ``seed``, whatever the caller drew before).
    """
    if not net.domain_specific_bn or net.num_heads < 2:
        raise AdaptationError(
            "adaptation needs a network with domain-specific BN and one head per domain "
            "(schemes " + ", ".join(ADAPTABLE_SCHEMES) + ")"
        )
    for index in (source, head_source):
        if index is not None and not 0 <= index < net.num_domains:
            raise AdaptationError(f"source domain {index} out of range ({net.num_domains})")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        extended = JointSegNet(net.cfg, [*net.head_classes, new_classes], True)
    missing, unexpected = extended.load_state_dict(net.state_dict(), strict=False)
    new = net.num_domains
    if unexpected or any(
        f".bns.{new}." not in k and not k.startswith(f"heads.{new}.") for k in missing
    ):
        raise AdaptationError(f"the network's layers do not extend by one domain: {missing[:5]}")
    for layer in domain_batchnorms(extended):
        target = layer.bns[new]
        if source is None:
            pooled_batchnorm(list(layer.bns)[:new], target)
        else:
            target.load_state_dict(layer.bns[source].state_dict())
    if head_rows:
        if head_source is None:
            raise AdaptationError("head rows are copied from a domain's head: give head_source")
        with torch.no_grad():
            head, origin = extended.heads[new], extended.heads[head_source]
            for row, from_row in head_rows.items():
                head.weight[row].copy_(origin.weight[from_row])
                head.bias[row].copy_(origin.bias[from_row])
    return extended.train(net.training)


def branch_network(
    net: JointSegNet,
    new_classes: int,
    source: int | None,
    head_source: int | None = None,
    head_rows: dict[int, int] | None = None,
    seed: int = 0,
) -> JointSegNet:
    """A one-domain network (plain BN, one head of ``new_classes``) for the new domain: the
    shared convolutions of ``net``, the BN of domain ``source`` (None: the pool of all), head
    rows as :func:`extend_network` starts them. ``net`` is left as it is."""
    extended = extend_network(net, new_classes, source, head_source, head_rows, seed)
    new = extended.num_domains - 1
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        branch = JointSegNet(net.cfg, [new_classes], False)
    weights = extended.state_dict()
    state = {}
    for key in branch.state_dict():
        if key.startswith("heads.0."):
            state[key] = weights[f"heads.{new}.{key[len('heads.0.') :]}"]
        elif key in weights:
            state[key] = weights[key]
        else:  # a BN of the plain network: the new domain's BN of the extended one
            parent, leaf = key.rsplit(".", 1)
            state[key] = weights[f"{parent}.bns.{new}.{leaf}"]
    branch.load_state_dict(state)
    return branch.train(net.training)


def matching_rows(
    new_structures: Sequence[str], source_structures: Sequence[str]
) -> dict[int, int]:
    """Local class rows of the new domain -> rows of the source domain with the same name
    (background 0 -> 0 always)."""
    source = list(source_structures)
    rows = {0: 0}
    for index, name in enumerate(new_structures, start=1):
        if name in source:
            rows[index] = source.index(name) + 1
    return rows


def adapted_parameters(net: JointSegNet, mode: str, new_index: int, lr: float) -> list[dict]:
    """Optimizer parameter groups of ``mode`` for the base learning rate ``lr``: the new head
    and BN at ``NEW_LAYERS_LR_FACTOR`` x ``lr``, the shared convolutions (``all``) at
    ``SHARED_LR_FACTOR`` x ``lr``. Every other parameter gets ``requires_grad=False`` (the old
    domains' BN and heads, the projectors, and the shared convolutions unless ``all``)."""
    if mode not in ADAPT_MODES:
        raise AdaptationError(f"unknown mode {mode!r}; choose one of {', '.join(ADAPT_MODES)}")
    if mode == "branch":
        return _branch_parameters(net, lr)
    net.requires_grad_(False)
    head = list(net.heads[new_index].parameters())
    norm = [p for layer in domain_batchnorms(net) for p in layer.bns[new_index].parameters()]
    groups = [{"params": head, "lr": lr * NEW_LAYERS_LR_FACTOR}]
    if mode in ("norm+head", "all"):
        groups.append({"params": norm, "lr": lr * NEW_LAYERS_LR_FACTOR})
    if mode == "all":
        domain_specific = {id(p) for layer in domain_batchnorms(net) for p in layer.parameters()}
        shared = [
            p
            for module in (net.encoder, net.decoder)
            for p in module.parameters()
            if id(p) not in domain_specific
        ]
        groups.append({"params": shared, "lr": lr * SHARED_LR_FACTOR})
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


def _branch_parameters(net: JointSegNet, lr: float) -> list[dict]:
    """A branch's groups: its head and BN at ``NEW_LAYERS_LR_FACTOR`` x ``lr``, its
    convolutions at ``BRANCH_SHARED_LR_FACTOR`` x ``lr``; the projectors stay as they are."""
    if net.domain_specific_bn or net.num_heads != 1:
        raise AdaptationError("mode 'branch' trains a one-domain copy (branch_network)")
    net.requires_grad_(False)
    norm = [p for m in net.modules() if isinstance(m, nn.BatchNorm2d) for p in m.parameters()]
    head = list(net.heads[0].parameters())
    special = {id(p) for p in norm + head}
    convolutions = [
        p for module in (net.encoder, net.decoder) for p in module.parameters()
        if id(p) not in special
    ]  # fmt: skip
    groups = [
        {"params": head + norm, "lr": lr * NEW_LAYERS_LR_FACTOR},
        {"params": convolutions, "lr": lr * BRANCH_SHARED_LR_FACTOR},
    ]
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    return groups


class AdaptationModule(SegmentationModule):
    """:class:`SegmentationModule` on batches of the new domain only (data-module index 0,
    shifted to the network's ``new_index``), with only the ``mode``'s parameters trained."""

    def __init__(
        self,
        net: JointSegNet,
        cfg: ExperimentConfig,
        plan: ModelPlan,
        label_space: LabelSpace,
        total_steps: int,
        mode: str,
        new_index: int,
        statistics: str = DEFAULT_STATISTICS,
    ) -> None:
        if statistics not in BN_STATISTICS:
            raise AdaptationError(
                f"unknown statistics {statistics!r}; choose one of {', '.join(BN_STATISTICS)}"
            )
        super().__init__(net, cfg, plan, label_space, total_steps)
        self.mode = mode
        self.new_index = new_index
        self.statistics = statistics
        self.groups = adapted_parameters(net, mode, new_index, cfg.training.optimizer.lr)

    def train(self, mode: bool = True) -> AdaptationModule:
        """Training mode, except for the BN layers whose statistics stay as they are: every old
        domain's (never run here, kept exact) and, with ``statistics="fixed"``, the new one's
        (normalized with its starting statistics in training as in inference)."""
        super().train(mode)
        if mode:
            for layer in domain_batchnorms(self.net):
                for index, bn in enumerate(layer.bns):
                    if index != self.new_index or self.statistics == "fixed":
                        bn.eval()
            if not self.net.domain_specific_bn and self.statistics == "fixed":  # a branch
                for module in self.net.modules():
                    if isinstance(module, nn.BatchNorm2d):
                        module.eval()
        return self

    def training_step(self, batch: dict, batch_idx: int):
        return super().training_step(
            {**batch, "domain": batch["domain"] + self.new_index}, batch_idx
        )

    def validation_step(self, case: dict, batch_idx: int) -> None:
        super().validation_step({**case, "domain": int(case["domain"]) + self.new_index}, batch_idx)

    def configure_optimizers(self):
        opt = self.cfg.training.optimizer
        if opt.name == "adamw":
            optimizer = torch.optim.AdamW(self.groups, lr=opt.lr, weight_decay=opt.weight_decay)
        else:
            optimizer = torch.optim.SGD(
                self.groups,
                lr=opt.lr,
                momentum=opt.momentum,
                nesterov=True,
                weight_decay=opt.weight_decay,
            )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lr_lambda(opt.schedule, 0, self.total_steps)
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step"},
        }


@dataclass(frozen=True)
class AdaptationResult:
    """The adapted network (CPU, eval mode), its best validation Dice, and the steps taken."""

    net: JointSegNet
    best_validation_dice: float | None
    steps: int


def adaptation_config(cfg: ExperimentConfig, steps: int) -> ExperimentConfig:
    """``cfg`` with ``steps`` optimizer steps in epochs of at most 50 (one validation each),
    no warm-up, and every domain-mixing regularizer off (one domain trains)."""
    if steps < 1:
        raise AdaptationError(f"--steps must be at least 1, got {steps}")
    per_epoch = min(steps, 50)
    training = cfg.training.model_copy(
        update={
            "epochs": math.ceil(steps / per_epoch),
            "iterations_per_epoch": per_epoch,
            "iterations_per_dataset": False,
            "target_dice": None,
            "validation_every": 1,
            "optimizer": cfg.training.optimizer.model_copy(update={"warmup_epochs": 0}),
        }
    )
    return cfg.model_copy(update={"training": training})


def train_new_domain(
    cfg: ExperimentConfig,
    net: JointSegNet,
    domains: Sequence[str],
    label_space: LabelSpace,
    split: DomainSplit,
    mode: str,
    steps: int,
    work_dir: Path,
    progress: bool = False,
    statistics: str = DEFAULT_STATISTICS,
    device: str = AUTO_DEVICE,
) -> AdaptationResult:
    """Train the last domain of ``net`` (``domains[-1]``, data in ``split``) for ``steps``
    optimizer steps; ``work_dir`` takes the checkpoints and CSV logs; ``statistics``: the new
    BN's running statistics ``fixed`` or ``reestimated``; ``device``: where it trains (``auto``:
    CUDA when available). With validation subjects the weights of the best validation Dice are
    returned, else the last ones."""
    where = torch_device(device)
    cfg = adaptation_config(cfg, steps)
    L.seed_everything(cfg.training.seed, verbose=False)
    new_index = len(domains) - 1
    plan = ModelPlan(name="main", domains=tuple(domains), domain_specific_bn=net.domain_specific_bn)
    module = AdaptationModule(net, cfg, plan, label_space, steps, mode, new_index, statistics)
    datamodule = PlanDataModule(cfg, [split], contrastive=False)
    has_validation = bool(split.validation_cases)
    checkpoint = ModelCheckpoint(
        dirpath=Path(work_dir) / "checkpoints",
        filename="best",
        monitor="val/dice" if has_validation else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    trainer = L.Trainer(
        max_steps=steps,
        max_epochs=cfg.training.epochs,
        limit_val_batches=1.0 if has_validation else 0,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, cfg.training.iterations_per_epoch // 2)),
        gradient_clip_val=cfg.training.gradient_clip,
        **lightning_placement(where),
        deterministic=where.type == "cpu",
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[checkpoint],
        logger=CSVLogger(Path(work_dir) / "logs", name="", version=""),
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=work_dir,
    )
    # Lightning keeps the modes it finds (and restores them after each validation); the
    # loaded network is in eval mode, so the modes of adaptation are set here
    module.train()
    trainer.fit(module, datamodule=datamodule)
    score = checkpoint.best_model_score
    best = checkpoint.best_model_path
    if has_validation and best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        module.net.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("net.")})
    net = module.net.cpu().eval().requires_grad_(True)
    return AdaptationResult(net, float(score) if score is not None else None, trainer.global_step)


def save_adapted(net: JointSegNet, folder: Path, label_space: LabelSpace, metadata: dict) -> None:
    """Write the adapted network as a run model (``model.safetensors`` + ``model.json``)."""
    domains = [d.name for d in label_space.domains]
    save_model(
        net,
        folder,
        metadata={
            "plan": "main",
            "domains": domains,
            "label_space": "local",
            "structures": {d.name: d.structures for d in label_space.domains},
            "union_structures": label_space.structure_names,
            **metadata,
        },
    )
