"""Data for one plan: multi-domain training batches and whole validation subjects."""

from __future__ import annotations

from dataclasses import dataclass, field

import lightning as L
from torch.utils.data import DataLoader

from jointseg.config import ExperimentConfig
from jointseg.data.augment import build_augmentation
from jointseg.data.dataset import SliceDataset, collate_slices, seed_worker
from jointseg.data.sampling import MultiDomainBatchSampler, domain_probabilities
from jointseg.training.validation import CaseDataset, ValidationCase


@dataclass
class DomainSplit:
    """One domain's slice cache and its training and validation subjects; optionally the cache
    of its randomized dataset and the cases of it to train on."""

    name: str
    cache: object
    train_cases: list[str]
    validation_cases: list[str]
    randomized_cache: object | None = None
    randomized_cases: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class TrainingSource:
    """A cache that training draws from: its domain, cases and share of the domain's draws."""

    cache: object
    cases: list[str]
    domain: int
    share: float


def training_sources(splits: list[DomainSplit], randomized_fraction: float) -> list[TrainingSource]:
    """Each domain's own cache first (index = domain), then the randomized caches of domains
    that have one, each drawn for ``randomized_fraction`` of its domain's patches."""
    sources, extra = [], []
    for domain, split in enumerate(splits):
        mixed = (
            split.randomized_cache is not None
            and bool(split.randomized_cases)
            and randomized_fraction > 0
        )
        share = 1.0 - randomized_fraction if mixed else 1.0
        sources.append(TrainingSource(split.cache, split.train_cases, domain, share))
        if mixed:
            extra.append(
                TrainingSource(
                    split.randomized_cache, split.randomized_cases, domain, randomized_fraction
                )
            )
    return sources + extra


class PlanDataModule(L.LightningDataModule):
    """Training batches mix the plan's domains by the configured policy; each DDP rank draws its
    own batches (the sampler knows the rank), so Lightning's distributed sampler is not used."""

    def __init__(self, cfg: ExperimentConfig, splits: list[DomainSplit], contrastive: bool):
        super().__init__()
        self.cfg = cfg
        self.splits = splits
        self.contrastive = contrastive
        self.caches = [s.cache for s in splits]
        self.sources = training_sources(splits, cfg.training.randomized_fraction)
        self.transform = build_augmentation(cfg.augmentation, seed=cfg.training.seed)
        self.train_dataset = SliceDataset(
            [source.cache for source in self.sources],
            self.transform,
            seed=cfg.training.seed,
            patch_size=cfg.preprocessing.patch_size,
            context_slices=cfg.model.context_slices,
            domains=[source.domain for source in self.sources],
        )

    def set_epoch(self, epoch: int) -> None:
        """Reseed the augmentation from (seed, epoch), so a resumed run repeats it exactly
        (exactly with ``num_workers: 0``; workers are seeded from torch's generator)."""
        self.train_dataset.reseed(self.cfg.training.seed * 100_003 + epoch)

    def train_dataloader(self) -> DataLoader:
        training = self.cfg.training
        rank, world = (0, 1)
        if self.trainer is not None:
            rank, world = self.trainer.global_rank, self.trainer.world_size
        domains = len(self.splits)
        mixed = len(self.sources) > len(self.splits)
        base = domain_probabilities([len(s.train_cases) for s in self.splits], training.sampling)
        sampler = MultiDomainBatchSampler.from_caches(
            [source.cache for source in self.sources],
            [source.cases for source in self.sources],
            batch_size=training.batch_size,
            iterations=training.iterations(domains),
            policy=training.sampling,
            empty_slice_keep=training.empty_slice_keep,
            patch_size=self.cfg.preprocessing.patch_size,
            foreground_oversample=training.foreground_oversample,
            min_per_domain=min(2 if self.contrastive else 1, training.batch_size // domains or 1),
            seed=training.seed,
            rank=rank,
            world_size=world,
            probabilities=[s.share * base[s.domain] for s in self.sources] if mixed else None,
        )
        return DataLoader(
            self.train_dataset,
            batch_sampler=sampler,
            collate_fn=collate_slices,
            num_workers=training.num_workers,
            persistent_workers=training.num_workers > 0,
            worker_init_fn=seed_worker if training.num_workers > 0 else None,
        )

    def validation_cases(self) -> list[ValidationCase]:
        return [
            ValidationCase(index, case, split.cache.rows([case]))
            for index, split in enumerate(self.splits)
            for case in split.validation_cases
        ]

    def val_dataloader(self) -> DataLoader:
        dataset = CaseDataset(self.caches, self.validation_cases())
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=0)
