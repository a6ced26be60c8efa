"""Shared test fixtures: tiny datasets in the nnU-Net layout, written by the tests."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from jointseg.data.io import write_image
from jointseg.data.manifest import DatasetManifest, write_manifest

# Tiny test tensors run fastest, and most predictably on a shared machine, on one thread;
# JOINTSEG_TEST_THREADS sets another count (benchmarks/kernels.py runs the suite with 1 and 2).
TEST_THREADS = int(os.environ.get("JOINTSEG_TEST_THREADS", "1"))
torch.set_num_threads(TEST_THREADS)


def make_volume_pair(
    shape=(8, 32, 32), spacing=(0.8, 0.8, 3.0), seed=0, labels=(1, 2)
) -> tuple[sitk.Image, sitk.Image]:
    """A noisy image with one box per label value, and its label map (z, y, x shape)."""
    rng = np.random.default_rng(seed)
    label = np.zeros(shape, dtype=np.uint8)
    z, y, x = shape
    for i, value in enumerate(labels):
        y0 = 4 + 12 * i
        label[1 : z - 1, y0 : y0 + 8, 6 : x - 6] = value
    image = (rng.normal(100, 10, size=shape) + 80.0 * label).astype(np.float32)
    img = sitk.GetImageFromArray(image)
    img.SetSpacing(spacing)
    img.SetOrigin((10.0, -5.0, 2.5))
    lab = sitk.GetImageFromArray(label)
    lab.CopyInformation(img)
    return img, lab


def write_dataset(
    root: Path,
    name="Dataset001_Toy",
    cases=3,
    test_cases=0,
    structures=None,
    ext=".nii.gz",
    shape=(8, 32, 32),
) -> Path:
    """Write a small dataset folder and return its path."""
    structures = structures or {"femur": 1, "tibia": 2}
    folder = root / name
    for split, count, offset in (("Tr", cases, 0), ("Ts", test_cases, 100)):
        for index in range(count):
            case = f"toy_{index + offset:03d}"
            image, label = make_volume_pair(
                shape=shape, seed=index + offset, labels=tuple(structures.values())
            )
            write_image(image, folder / f"images{split}" / f"{case}_0000{ext}")
            write_image(label, folder / f"labels{split}" / f"{case}{ext}")
    manifest = DatasetManifest(
        name=name,
        channel_names={"0": "MR"},
        labels={"background": 0, **structures},
        numTraining=cases,
        file_ending=ext,
    )
    write_manifest(folder, manifest)
    return folder


@pytest.fixture
def toy_dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path)


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A run folder of the tiny two-domain model of tests/tiny_model.py, trained once."""
    from tests.tiny_model import train_run

    return train_run(tmp_path_factory.mktemp("run"))


@pytest.fixture(scope="session")
def predictor(trained_run: Path):
    from jointseg.inference.predictor import Predictor

    return Predictor.from_run(trained_run, batch_size=8)
