"""A tiny two-domain model trained on an easy synthetic task, and its scans: the prediction
tests' fixture (conftest.py makes it one session-wide run folder).

knee and shoulder scans hold two ellipsoid bones each with exact label maps; `train_run` trains
an `mtmd` network on them to a validation Dice target and writes a complete run folder.
"""

from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk
import torch

from jointseg.config import ExperimentConfig, ModelConfig, PreprocessingConfig
from jointseg.data.context import context_stack
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import DatasetManifest, write_manifest
from jointseg.data.preprocess import preprocess_case
from jointseg.models import build_model, save_model
from jointseg.runs import DomainEntry, ModelEntry, RunFolder, RunInfo

DOMAINS = {"knee": {"femur": 1, "tibia": 2}, "shoulder": {"humerus": 3, "scapula": 7}}
SHAPE = (20, 64, 64)  # z, y, x
SPACING = (1.0, 1.1, 2.5)  # x, y, z (mm): z is the slice axis
PREPROCESSING = PreprocessingConfig(target_spacing=None, patch_size=(64, 64), jobs=1)
MODEL = ModelConfig(
    encoder="resnet18", width=0.25, decoder_channels=(128, 64, 64, 64, 64), projector_hidden=8,
    projector_dim=8, feature_taps=("enc4",),
)  # fmt: skip


def _rotation(degrees: float) -> tuple[float, ...]:
    a = np.deg2rad(degrees)
    return (np.cos(a), -np.sin(a), 0.0, np.sin(a), np.cos(a), 0.0, 0.0, 0.0, 1.0)


def make_scan(
    domain: str, seed: int, direction: tuple[float, ...] | None = None
) -> tuple[sitk.Image, sitk.Image]:
    """A scan of ``domain`` with two ellipsoid bones and its exact label map.

    knee: bright bones on a dark, smooth background; shoulder: dark bones on a bright background
    with coarse texture. The two bones differ in brightness. Positions and sizes vary with ``seed``.
    """
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[: SHAPE[0], : SHAPE[1], : SHAPE[2]].astype(np.float32)
    labels = np.zeros(SHAPE, np.uint8)
    values = list(DOMAINS[domain].values())
    for k, value in enumerate(values):
        centre = np.array([SHAPE[0] / 2, 20 + 24 * k, 32]) + rng.uniform(-3, 3, 3)
        radii = np.array([7.0, 9.0, 12.0]) * rng.uniform(0.85, 1.15, 3)
        inside = ((z - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2
        inside += ((x - centre[2]) / radii[2]) ** 2
        labels[inside <= 1] = value
    first, second = labels == values[0], labels == values[1]
    if domain == "knee":
        image = 0.3 + 0.7 * first + 0.35 * second + rng.normal(0, 0.05, SHAPE)
    else:
        texture = 0.1 * np.sin(x / 1.5 + rng.uniform(0, 6)) * np.sin(y / 2.0)
        image = 0.8 - 0.8 * first - 0.4 * second + texture + rng.normal(0, 0.05, SHAPE)
    image = (image * 400).astype(np.float32)
    img = sitk.GetImageFromArray(image)
    lab = sitk.GetImageFromArray(labels)
    for item in (img, lab):
        item.SetSpacing(SPACING)
        item.SetOrigin((-30.0, 12.5, 100.0))
        item.SetDirection(direction or _rotation(0.0))
    return img, lab


def _training_slices(domain: str, seeds: range, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Network inputs [N, k, H, W] (k context slices within each scan) and label slices."""
    lut = DomainLabels(domain, DOMAINS[domain]).local_lookup()
    images, labels = [], []
    for seed in seeds:
        case = preprocess_case(*make_scan(domain, seed), PREPROCESSING)
        images.append(context_stack(case.image, np.arange(len(case.image)), k))
        labels.append(lut[case.label])
    return np.concatenate(images), np.concatenate(labels)


def _dice_ce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    probs = logits.softmax(1)
    onehot = torch.nn.functional.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    overlap = 2 * (probs * onehot).sum((0, 2, 3)) + 1
    dice = overlap / (probs.sum((0, 2, 3)) + onehot.sum((0, 2, 3)) + 1)
    return torch.nn.functional.cross_entropy(logits, target) + 1 - dice[1:].mean()


# Training stops once every structure's validation Dice reaches TARGET_DICE (checked every
# CHECK_EVERY steps, at most MAX_STEPS): a fixed step count gives a model whose quality follows
# the CPU's floating-point kernels, a target gives one of the same quality on every CPU.
TARGET_DICE = 0.95
CHECK_EVERY = 10
MAX_STEPS = 400
VALIDATION_SEEDS = range(50, 52)


def train_run(
    run_dir, max_steps: int = MAX_STEPS, seed: int | None = None, context_slices: int = 1
):
    """Train a two-domain mtmd model to TARGET_DICE and write a complete run folder.

    ``max_steps=0`` writes the run folder of an untrained model; ``context_slices`` is the
    model's (k neighbouring slices as input channels).
    The seed defaults to ``JOINTSEG_FIXTURE_SEED`` (0), so that the bounds' margins can be
    measured over fixture seeds with the same tests.
    """
    if seed is None:
        seed = int(os.environ.get("JOINTSEG_FIXTURE_SEED", "0"))
    return _train_run(run_dir, max_steps, seed, context_slices)


def validation_dice(net, validation) -> dict[tuple[int, int], float]:
    """3D Dice per (domain, local class) of ``net`` on preprocessed validation volumes."""
    net.eval()
    scores = {}
    with torch.no_grad():
        for d, (images, labels) in enumerate(validation):
            x = torch.from_numpy(images)
            logits = net(x, torch.full((len(images),), d)).logits[d]
            got = logits.argmax(1).numpy()
            for value in range(1, logits.shape[1]):
                scores[d, value] = dice(got, labels, value)
    net.train()
    return scores


def _train_run(run_dir, max_steps: int, seed: int, k: int):
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    data = [_training_slices(d, range(100, 106), k) for d in DOMAINS]
    validation = [_training_slices(d, VALIDATION_SEEDS, k) for d in DOMAINS]
    model = MODEL.model_copy(update={"context_slices": k})
    net = build_model(model, [3, 3], domain_specific_bn=True)
    optimizer = torch.optim.AdamW(net.parameters(), lr=5e-3)
    net.train()
    per_domain = 8
    steps, reached = 0, 0.0
    while steps < max_steps:
        xs, ys, ds = [], [], []
        for d, (images, labels) in enumerate(data):
            pick = rng.integers(0, len(images), per_domain)
            xs.append(images[pick])
            ys.append(labels[pick])
            ds += [d] * per_domain
        x = torch.from_numpy(np.concatenate(xs))
        y = torch.from_numpy(np.concatenate(ys))
        for dim in (1, 2):  # random in-plane flips, so that test-time flips are in distribution
            if rng.random() < 0.5:
                x, y = x.flip(dim + 1), y.flip(dim)
        out = net(x, torch.tensor(ds))
        loss = sum(_dice_ce(out.logits[d], y[out.index[d]]) for d in out.logits)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        steps += 1
        if steps % CHECK_EVERY == 0:
            reached = min(validation_dice(net, validation).values())
            if reached >= TARGET_DICE:
                break
    if max_steps > 0 and reached < TARGET_DICE:
        raise AssertionError(
            f"the test model reached validation Dice {reached:.3f} < {TARGET_DICE} "
            f"after {steps} steps"
        )
    net.eval()
    config = ExperimentConfig(
        name="tiny",
        datasets=[{"name": d, "folder": f"Dataset00{i + 1}_{d}"} for i, d in enumerate(DOMAINS)],
        scheme="mtmd",
        preprocessing=PREPROCESSING,
        model=model,
        augmentation={"flip_axes": [0, 1]},
    )
    run = RunFolder(run_dir)
    run.save_config(config)
    save_model(net, run.model_dir("main"), {"steps": steps, "validation_dice": reached})
    info = RunInfo(
        scheme="mtmd",
        domains=[
            DomainEntry(name=d, folder=f"Dataset00{i + 1}_{d}", structures=s)
            for i, (d, s) in enumerate(DOMAINS.items())
        ],
        models=[ModelEntry(name="main", path=run.model_path("main"), domains=list(DOMAINS))],
    )
    run.save_info(info)
    return run_dir


def write_study(run_dir, study) -> None:
    """Two validation scans per domain of the run in a study folder, recorded as the run's
    study and validation cases."""
    run = RunFolder(run_dir)
    info = run.info()
    for entry in info.domains:
        folder = study / entry.folder
        (folder / "imagesTr").mkdir(parents=True)
        labels = {"background": 0, **entry.structures}
        manifest = DatasetManifest(
            channel_names={"0": "MR"}, labels=labels, numTraining=2, file_ending=".nii.gz"
        )
        write_manifest(folder, manifest)
        for seed in (20, 21):
            image, _ = make_scan(entry.name, seed)
            sitk.WriteImage(image, str(folder / "imagesTr" / f"{entry.name}{seed}_0000.nii.gz"))
        info.validation_cases[entry.name] = [f"{entry.name}20", f"{entry.name}21"]
    info.data_dir = str(study)
    run.save_info(info)


# ----------------------------------------------------------------------------------- helpers
def dice(a: np.ndarray, b: np.ndarray, value: int) -> float:
    x, y = a == value, b == value
    return 2.0 * (x & y).sum() / (x.sum() + y.sum())


def same_geometry(a: sitk.Image, b: sitk.Image) -> bool:
    return (a.GetSize(), a.GetSpacing(), a.GetOrigin(), a.GetDirection()) == (
        b.GetSize(), b.GetSpacing(), b.GetOrigin(), b.GetDirection(),
    )  # fmt: skip


def write_dicom_series(image: sitk.Image, folder) -> None:
    """One MR DICOM file per slice, with the position/orientation tags readers rely on."""
    folder.mkdir(parents=True)
    image = sitk.Cast(sitk.RescaleIntensity(image, 0, 4000), sitk.sitkInt16)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    series = "1.2.826.0.1.3680043.2.1125.1.42"
    orientation = "\\".join(f"{v:.10f}" for v in (*direction[0::3], *direction[1::3]))
    for k in range(image.GetDepth()):
        plane = image[:, :, k]
        position = image.TransformIndexToPhysicalPoint((0, 0, k))
        tags = {
            "0008|0060": "MR",
            "0008|0008": "ORIGINAL\\PRIMARY\\AXIAL",
            "0020|000d": "1.2.826.0.1.3680043.2.1125.1.41",
            "0020|000e": series,
            "0020|0052": "1.2.826.0.1.3680043.2.1125.1.43",  # Frame of Reference UID
            "0020|0013": str(k + 1),
            "0020|0032": "\\".join(f"{v:.10f}" for v in position),
            "0020|0037": orientation,
            "0028|0030": f"{image.GetSpacing()[1]:.10f}\\{image.GetSpacing()[0]:.10f}",
            "0018|0050": f"{image.GetSpacing()[2]:.10f}",
            "0008|0018": f"{series}.{k + 1}",
        }
        for tag, value in tags.items():
            plane.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"slice{k:03d}.dcm"))
        writer.Execute(plane)


def noise_scan(seed: int = 0) -> sitk.Image:
    noise = np.random.default_rng(seed).normal(100, 30, SHAPE).astype(np.float32)
    image = sitk.GetImageFromArray(noise)
    image.SetSpacing(SPACING)
    return image


OBLIQUE = _rotation(20.0)

# The Dice the prediction tests ask of the trained model on unseen scans (it trains to 0.95).
DICE_BOUND = 0.85


def side_by_side(left: sitk.Image, right: sitk.Image) -> sitk.Image:
    joined = np.concatenate([sitk.GetArrayFromImage(left), sitk.GetArrayFromImage(right)], axis=2)
    image = sitk.GetImageFromArray(joined)
    image.SetSpacing(left.GetSpacing())
    image.SetOrigin(left.GetOrigin())
    image.SetDirection(left.GetDirection())
    return image
