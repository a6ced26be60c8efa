"""Training the networks of a scheme: from a config and a study folder to a run folder's models.

The steps after training (recognition references, the postprocessing decision) are the
workflow's (:mod:`jointseg.workflows.train`)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from jointseg.config import SCHEMES, ExperimentConfig
from jointseg.data.cache import SliceCache, preprocess_randomized, preprocess_study
from jointseg.data.labels import DomainLabels, LabelSpace
from jointseg.data.manifest import load_manifest
from jointseg.data.splits import split_subjects
from jointseg.models import build_model, save_model
from jointseg.models.checkpoint import INDEX_FILE, WEIGHTS_FILE, load_weights
from jointseg.runs import DomainEntry, ModelEntry, RunError, RunFolder, RunInfo
from jointseg.training.checkpoint_io import AtomicCheckpointIO
from jointseg.training.curves import plot_curves
from jointseg.training.datamodule import DomainSplit, PlanDataModule
from jointseg.training.module import SegmentationModule
from jointseg.training.prior import shape_prior_for
from jointseg.training.resume import (
    FlushLogs,
    RandomStates,
    ResumableCSVLogger,
    checkpoint_epoch,
    clean_run_folder,
)
from jointseg.training.schemes import ModelPlan, deliverable_plans, plan_epochs, plan_scheme
from jointseg.utils.compute import (
    AUTO_DEVICE,
    LIGHTNING_PRECISION,
    describe,
    lightning_placement,
    resolve_precision,
    torch_device,
)
from jointseg.utils.distributed import is_global_zero

logger = logging.getLogger(__name__)

TARGET_TOLERANCE = 1e-6  # below float32 resolution near 1, far below any meaningful Dice step


class EpochReseed(L.Callback):
    """Reseeds augmentation at every epoch start from (seed, epoch): resume-exact on the CPU."""

    def __init__(self, datamodule: PlanDataModule):
        self.datamodule = datamodule

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.datamodule.set_epoch(trainer.current_epoch)


def domain_labels(cfg: ExperimentConfig, data_dir: Path) -> list[DomainLabels]:
    """Each configured dataset's structures, read from its dataset.json."""
    result = []
    for dataset in cfg.datasets:
        manifest = load_manifest(Path(data_dir) / dataset.folder)
        result.append(DomainLabels(dataset.name, manifest.structures))
    return result


@dataclass
class TrainedRun:
    """What :func:`train_networks` leaves for the steps after training: the run's index, its
    deliverable plans, label space, slice caches and subject split; ``primary``: this process
    writes the run's shared files (rank 0)."""

    info: RunInfo
    plans: list[ModelPlan]
    label_space: LabelSpace
    caches: dict[str, SliceCache]
    subjects: dict[str, tuple[list[str], list[str]]]
    primary: bool


def train_networks(
    cfg: ExperimentConfig,
    data_dir: Path,
    out: Path,
    fold: int | None = None,
    splits: Path | None = None,
    resume: bool = False,
    devices: int = 1,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
    initial_weights: Path | None = None,
    device: str = AUTO_DEVICE,
) -> TrainedRun:
    """Train every network of ``cfg.scheme`` into the run folder ``out``, index it (``run.json``)
    and plot its curves.

    ``initial_weights``: the run folder whose networks of the same names start the training
    (default: ``cfg.training.initial_weights`` as a path; the workflow resolves the word
    ``pretrained``). ``device``: where the networks train (``auto``: CUDA when available);
    ``devices``: in how many processes."""
    data_dir, out = Path(data_dir), Path(out)
    run = RunFolder(out)
    where = torch_device(device)
    lightning_placement(where, devices)  # a device Lightning cannot use: refused before any work
    if initial_weights is None and cfg.training.initial_weights is not None:
        initial_weights = Path(cfg.training.initial_weights)
    primary = is_global_zero()  # DDP workers re-enter here: only rank 0 writes shared files
    if primary and out.exists() and any(out.iterdir()) and not resume:
        raise RunError(f"{out} already holds a run; pass --resume to continue it or another --out")
    L.seed_everything(cfg.training.seed, verbose=False)
    labels = domain_labels(cfg, data_dir)
    label_space = LabelSpace(labels)
    subjects = split_subjects(cfg, data_dir, fold, splits)
    caches = preprocess_study(cfg, data_dir)
    randomized = preprocess_randomized(cfg, data_dir)
    out.mkdir(parents=True, exist_ok=True)
    if primary:
        clean_run_folder(out)
        run.save_config(cfg)
    plans = plan_scheme(cfg.scheme, cfg.domain_names)
    for plan in plans:
        if _model_saved(run.model_dir(plan.name)):
            logger.info("[train] %s: already trained, skipped", plan.name)
            continue
        _train_plan(
            cfg,
            plan,
            label_space,
            caches,
            subjects,
            out,
            resume,
            devices,
            progress,
            callbacks,
            randomized,
            initial_weights,
            where,
        )
    info = RunInfo(
        scheme=cfg.scheme,
        domains=[
            DomainEntry(name=d.name, folder=ds.folder, structures=d.structures)
            for d, ds in zip(labels, cfg.datasets, strict=True)
        ],
        models=[
            ModelEntry(
                name=p.name,
                path=RunFolder.model_path(p.name),
                domains=list(p.domains),
                label_space=p.label_space,
            )
            for p in deliverable_plans(plans)
        ],
        fold=fold,
        data_dir=str(data_dir.resolve()),
        training_cases={name: train for name, (train, _) in subjects.items()},
        validation_cases={name: val for name, (_, val) in subjects.items()},
    )
    if primary:
        run.save_info(info)
        plot_curves(out, [p.name for p in plans])
    return TrainedRun(info, deliverable_plans(plans), label_space, caches, subjects, primary)


def _model_saved(folder: Path) -> bool:
    """Both files of a saved model are there (``model.json`` is written last)."""
    return (folder / WEIGHTS_FILE).is_file() and (folder / INDEX_FILE).is_file()


def _train_plan(
    cfg: ExperimentConfig,
    plan: ModelPlan,
    label_space: LabelSpace,
    caches: dict[str, SliceCache],
    subjects: dict[str, tuple[list[str], list[str]]],
    out: Path,
    resume: bool,
    devices: int,
    progress: bool,
    extra_callbacks: list[L.Callback] | None,
    randomized: dict[str, SliceCache] | None = None,
    initial_weights: Path | None = None,
    device: torch.device | None = None,
) -> None:
    device = device or torch_device(AUTO_DEVICE)
    run = RunFolder(out)
    L.seed_everything(cfg.training.seed, verbose=False)
    head_classes = (
        [label_space.num_classes]
        if plan.label_space == "union"
        else [label_space.domains[label_space.domain_index(d)].num_classes for d in plan.domains]
    )
    net = build_model(cfg.model, head_classes, plan.domain_specific_bn)
    if initial_weights is not None:
        source = RunFolder(Path(initial_weights)).model_dir(plan.name)
        if not _model_saved(source):
            raise RunError(
                f"{initial_weights}: no trained network {plan.name!r} "
                f"({RunFolder.model_path(plan.name)}) to "
                "start from; training.initial_weights needs a run of the same scheme"
            )
        load_weights(net, source)
        logger.info("[train] %s: starts from the weights of %s", plan.name, source)
    elif plan.init_from is not None:
        load_weights(net, run.model_dir(plan.init_from), exclude=("heads.", "projectors."))
    randomized = randomized or {}
    splits = [
        DomainSplit(
            d,
            caches[d],
            subjects[d][0],
            subjects[d][1],
            randomized.get(d),
            list(randomized[d].case_ids) if d in randomized else [],
        )
        for d in plan.domains
    ]
    autoencoder, discriminator = shape_prior_for(cfg, plan, label_space, splits, out, progress)
    epochs = plan_epochs(cfg.training, plan)
    module = SegmentationModule(
        net,
        cfg,
        plan,
        label_space,
        epochs * cfg.training.iterations(len(plan.domains)),
        shape_autoencoder=autoencoder,
        discriminator=discriminator,
    )
    datamodule = PlanDataModule(cfg, splits, plan.contrastive)
    precision = resolve_precision(cfg.training.precision, device)
    logger.info(
        "[train] %s: precision %s, %s memory format",
        plan.name,
        describe(cfg.training.precision, precision, device),
        "channels-last" if cfg.training.channels_last else "NCHW",
    )
    has_validation = any(s.validation_cases for s in splits)
    checkpoint_dir = run.checkpoint_dir(plan.name)
    last = checkpoint_dir / "last.ckpt"
    ckpt_path = str(last) if resume and last.is_file() else None
    checkpoint = ModelCheckpoint(
        dirpath=checkpoint_dir,
        filename="best",
        monitor="val/dice" if has_validation else None,
        mode="max",
        save_top_k=1,
        enable_version_counter=False,
    )
    # Lightning's save_last writes last.ckpt only when the best one improved; this writes it at
    # every epoch end, after the best one (a resumed run repeats at most one epoch)
    latest = ModelCheckpoint(
        dirpath=checkpoint_dir, filename="last", save_top_k=1, enable_version_counter=False
    )
    trainer = L.Trainer(
        max_epochs=epochs,
        limit_val_batches=1.0 if has_validation else 0,
        check_val_every_n_epoch=cfg.training.validation_every,
        num_sanity_val_steps=0,
        log_every_n_steps=max(1, min(50, cfg.training.iterations(len(plan.domains)) // 2)),
        gradient_clip_val=cfg.training.gradient_clip,
        precision=LIGHTNING_PRECISION[precision],
        **_device_arguments(devices, device),
        deterministic=device.type == "cpu",
        use_distributed_sampler=False,
        plugins=[AtomicCheckpointIO()],
        callbacks=[
            checkpoint,
            latest,
            EpochReseed(datamodule),
            RandomStates(),
            FlushLogs(),
            *_target_stop(cfg, has_validation),
            *_plateau_stop(cfg, has_validation, epochs, tuple(plan.domains)),
            *(extra_callbacks or []),
        ]
        + ([TQDMProgressBar(refresh_rate=5)] if progress else []),
        logger=[
            ResumableCSVLogger(
                run.logs_dir, plan.name, checkpoint_epoch(last) if ckpt_path else None
            ),
            TensorBoardLogger(run.logs_dir, name=plan.name, version="tensorboard"),
        ],
        enable_progress_bar=progress,
        enable_model_summary=False,
        default_root_dir=out,
    )
    if ckpt_path:
        logger.info("[train] %s: resuming from %s", plan.name, last)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    if trainer.is_global_zero:
        _export(module, plan, checkpoint, out, label_space, precision)


class StopAtTarget(L.Callback):
    """Stops training once the validation Dice reaches ``target`` (``epochs`` stays the cap).

    A model trained to a target has the same quality wherever it trains; the steps it takes to
    get there follow the data, the seed and even the CPU's floating-point kernels.
    """

    def __init__(self, target: float, monitor: str = "val/dice"):
        self.target = target
        self.monitor = monitor

    def on_validation_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        value = trainer.callback_metrics.get(self.monitor)
        # metrics are float32: 0.9 logged is 0.89999998, which reaches a target of 0.9
        if value is not None and float(value) >= self.target - TARGET_TOLERANCE:
            logger.info("%s %.4f reached the target %.4f", self.monitor, float(value), self.target)
            trainer.should_stop = True


def _target_stop(cfg: ExperimentConfig, has_validation: bool) -> list[L.Callback]:
    """``training.target_dice`` as a callback, where there is validation data to measure it."""
    target = cfg.training.target_dice
    if target is None:
        return []
    if not has_validation:
        logger.warning("training.target_dice needs validation subjects: training all epochs")
        return []
    return [StopAtTarget(target)]


def _plateau_stop(
    cfg: ExperimentConfig, has_validation: bool, epochs: int, datasets: tuple[str, ...]
) -> list[L.Callback]:
    """``training.plateau_patience`` as Lightning's early stopping on ``val/dice`` (or, with
    ``training.plateau_per_dataset``, on every one of ``datasets``' ``val/dice_<name>``),
    allowed to stop from epoch ``training.plateau_min_epochs`` on (at most ``epochs``, the
    network's cap).

    Patience counts validations (every ``training.validation_every`` epochs), not epochs; the
    callback's state travels in the checkpoints, so a resumed run keeps its count.
    """
    patience = cfg.training.plateau_patience
    if patience is None:
        return []
    if not has_validation:
        logger.warning("training.plateau_patience needs validation subjects: training all epochs")
        return []
    return [
        PlateauStop(
            min_epochs=min(cfg.training.plateau_min_epochs, epochs),
            datasets=datasets if cfg.training.plateau_per_dataset else (),
            monitor="val/dice",
            mode="max",
            patience=patience,
            min_delta=cfg.training.plateau_min_delta,
            check_on_train_epoch_end=False,
            strict=True,
        )
    ]


class PlateauStop(EarlyStopping):
    """Lightning's early stopping that may stop only once ``min_epochs`` epochs have run.

    The best value and the count of validations without improvement are kept from the first
    validation on, so a network that plateaued early stops at the first validation from
    ``min_epochs`` on that still finds no improvement for ``patience`` validations; one that
    improves again trains on. (Lightning's ``Trainer(min_epochs=...)`` instead stops at
    ``min_epochs`` once the rule has fired, whatever happens in between.)

    With ``datasets``, a validation improves when any dataset's ``val/dice_<name>`` beats its
    own best by more than ``min_delta``: the rule then monitors the count of such validations,
    and the network stops once every dataset has plateaued.
    """

    def __init__(self, *, min_epochs: int = 0, datasets: tuple[str, ...] = (), **kwargs):
        super().__init__(**kwargs)
        self.min_epochs = min_epochs
        self.datasets = tuple(datasets)
        self._epochs_run = 0
        self._dataset_values: dict[str, float] = {}
        self.dataset_best: dict[str, float] = {}
        self.gains = 0

    def _run_early_stopping_check(self, trainer: L.Trainer) -> None:
        self._epochs_run = trainer.current_epoch + 1
        metrics = trainer.callback_metrics
        self._dataset_values = {
            name: float(metrics[f"val/dice_{name}"])
            for name in self.datasets
            if f"val/dice_{name}" in metrics
        }
        super()._run_early_stopping_check(trainer)

    def _evaluate_stopping_criteria(self, current: torch.Tensor) -> tuple[bool, str | None]:
        if self.datasets and torch.isfinite(current):
            gained = False
            for name, value in self._dataset_values.items():
                if value - abs(self.min_delta) > self.dataset_best.get(name, float("-inf")):
                    self.dataset_best[name] = value
                    gained = True
            self.gains += int(gained)
            current = torch.tensor(float(self.gains))  # rises by 1 exactly when one gained
        before = getattr(self, "stopping_reason", None)  # Lightning >= 2.5 records a reason
        should_stop, reason = super()._evaluate_stopping_criteria(current)
        if should_stop and torch.isfinite(current) and self._epochs_run < self.min_epochs:
            if before is not None:
                self.stopping_reason = before
            return False, None
        return should_stop, reason

    def state_dict(self) -> dict:
        return {**super().state_dict(), "dataset_best": self.dataset_best, "gains": self.gains}

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self.dataset_best = dict(state_dict.get("dataset_best", {}))
        self.gains = int(state_dict.get("gains", 0))


def _device_arguments(devices: int, device: torch.device) -> dict:
    """Trainer placement. Multi-process runs use DDP with unused-parameter detection: the BN
    parameters and heads of domains absent from a rank's batch get no gradient there."""
    strategy = "ddp_find_unused_parameters_true" if devices > 1 else "auto"
    return {**lightning_placement(device, devices), "strategy": strategy}


def _export(
    module: SegmentationModule,
    plan: ModelPlan,
    checkpoint: ModelCheckpoint,
    out: Path,
    label_space: LabelSpace,
    precision: str,
) -> None:
    """Write the best (or last) weights as the plan's model, with its metadata (``precision``:
    the resolved training precision, "32", "bf16" or "16")."""
    best = checkpoint.best_model_path
    score = checkpoint.best_model_score
    if best and Path(best).is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)["state_dict"]
        weights = {k[len("net.") :]: v for k, v in state.items() if k.startswith("net.")}
        module.net.load_state_dict(weights)
    metadata = {
        "plan": plan.name,
        "domains": list(plan.domains),
        "label_space": plan.label_space,
        "structures": {
            d: label_space.domains[label_space.domain_index(d)].structures for d in plan.domains
        },
        "union_structures": label_space.structure_names,
        "best_validation_dice": float(score) if score is not None else None,
        "precision": precision,  # what the network computed in while it trained
        "channels_last": module.channels_last,
    }
    save_model(module.net.cpu(), RunFolder(out).model_dir(plan.name), metadata=metadata)


__all__ = ["SCHEMES", "TrainedRun", "train_networks"]
