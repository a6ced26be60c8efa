"""Training on realistic and randomized datasets: sources, shares of the draws, labels, config."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from jointseg.config import ConfigError, config_from_dict
from jointseg.data.cache import default_cache_root, preprocess_randomized, preprocess_study
from jointseg.data.manifest import DatasetError
from jointseg.data.sampling import MultiDomainBatchSampler
from jointseg.training.datamodule import DomainSplit, PlanDataModule, training_sources
from jointseg.workflows.train import train_run
from tests.conftest import write_dataset
from tests.test_training import tiny_config

KNEE = {"femur": 1, "tibia": 2}
ANKLE = {"talus": 1, "tibia": 2}


def mixed_config(fraction: float, **training) -> dict:
    config = tiny_config(randomized_fraction=fraction, **training)
    config["datasets"] = [
        {"name": "knee", "folder": "Dataset001_Knee", "randomized_folder": "Dataset101_KneeR"},
        {"name": "ankle", "folder": "Dataset002_Ankle"},
    ]
    return config


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mixed")
    write_dataset(root, "Dataset001_Knee", cases=3, structures=KNEE)
    write_dataset(root, "Dataset002_Ankle", cases=3, structures=ANKLE)
    # the randomized knee: other volumes (larger slices), the same labels
    write_dataset(root, "Dataset101_KneeR", cases=2, structures=KNEE, shape=(6, 40, 36))
    write_dataset(root, "Dataset102_Wrong", cases=1, structures={"femur": 1, "patella": 2})
    return root


def test_sources_put_each_domain_first_and_split_its_share() -> None:
    splits = [
        DomainSplit("knee", "knee-cache", ["a"], [], "knee-random", ["r1", "r2"]),
        DomainSplit("ankle", "ankle-cache", ["b"], []),
        DomainSplit("hip", "hip-cache", ["c"], [], "hip-random", []),  # nothing to draw
    ]
    sources = training_sources(splits, 0.25)
    assert [(s.cache, s.domain, s.share) for s in sources] == [
        ("knee-cache", 0, 0.75),
        ("ankle-cache", 1, 1.0),
        ("hip-cache", 2, 1.0),
        ("knee-random", 0, 0.25),
    ]
    assert sources[3].cases == ["r1", "r2"]
    assert [s.share for s in training_sources(splits, 0.0)] == [1.0, 1.0, 1.0]


def test_draws_follow_the_randomized_fraction(study: Path) -> None:
    cfg = config_from_dict(mixed_config(0.25, iterations_per_epoch=400, sampling="balanced"))
    caches = preprocess_study(cfg, study)
    randomized = preprocess_randomized(cfg, study)
    assert sorted(randomized) == ["knee"]
    splits = [
        DomainSplit("knee", caches["knee"], ["toy_000", "toy_001"], ["toy_002"],
                    randomized["knee"], list(randomized["knee"].case_ids)),
        DomainSplit("ankle", caches["ankle"], ["toy_000", "toy_001"], ["toy_002"]),
    ]  # fmt: skip
    module = PlanDataModule(cfg, splits, contrastive=False)
    loader = module.train_dataloader()
    draws = [draw for batch in loader.batch_sampler for draw in batch]
    sources = np.bincount([draw[0] for draw in draws], minlength=3) / len(draws)
    # balanced: half knee, half ankle; a quarter of the knee's from its randomized cache
    assert sources == pytest.approx([0.375, 0.5, 0.125], abs=0.02)
    random_rows = [draw for draw in draws if draw[0] == 2]
    assert max(draw[1] for draw in random_rows) < len(randomized["knee"])
    item = module.train_dataset[random_rows[0]]
    assert item["domain"] == 0  # the randomized slices train the knee's domain
    assert set(np.unique(item["label"].numpy())) <= {0, 1, 2}
    # validation stays on the realistic subjects
    assert [(c.domain, c.case_id) for c in module.validation_cases()] == [
        (0, "toy_002"),
        (1, "toy_002"),
    ]


def test_without_a_fraction_no_randomized_cache_is_built(study: Path) -> None:
    cfg = config_from_dict(mixed_config(0.0))
    assert preprocess_randomized(cfg, study) == {}


def test_a_randomized_dataset_must_carry_the_domains_labels(study: Path) -> None:
    config = mixed_config(0.5)
    config["datasets"][0]["randomized_folder"] = "Dataset102_Wrong"
    with pytest.raises(DatasetError, match="Dataset102_Wrong.*differ"):
        preprocess_randomized(config_from_dict(config), study)


def test_fraction_is_bounded() -> None:
    with pytest.raises(ConfigError, match="randomized_fraction"):
        config_from_dict(mixed_config(1.5))


def test_given_probabilities_are_checked() -> None:
    rows = [np.arange(4), np.arange(0)]
    foreground = [np.ones(4, bool), np.ones(0, bool)]
    with pytest.raises(ValueError, match="no rows"):
        MultiDomainBatchSampler(rows, foreground, [2, 1], 4, 1, probabilities=[0.5, 0.5])
    with pytest.raises(ValueError, match="sum to 1"):
        MultiDomainBatchSampler(rows, foreground, [2, 1], 4, 1, probabilities=[0.5, 0.0])
    with pytest.raises(ValueError, match="need 2"):
        MultiDomainBatchSampler(rows, foreground, [2, 1], 4, 1, probabilities=[1.0])


@pytest.mark.slow
def test_a_mixed_run_trains(study: Path, tmp_path: Path) -> None:
    shutil.rmtree(default_cache_root(study) / "Dataset101_KneeR", ignore_errors=True)
    cfg = config_from_dict({**mixed_config(0.5, epochs=1), "scheme": "mtmd"})
    info = train_run(cfg, study, tmp_path / "run", progress=False)
    knee = info.training_cases["knee"] + info.validation_cases["knee"]
    assert sorted(knee) == ["toy_000", "toy_001", "toy_002"]  # the realistic subjects only
    assert [m.name for m in info.models] == ["main"]
    assert (tmp_path / "run" / "models" / "main" / "model.json").is_file()
    assert any((default_cache_root(study) / "Dataset101_KneeR").iterdir())  # built to train
