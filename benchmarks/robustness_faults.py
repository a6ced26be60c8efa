"""Fault scenarios for ``benchmarks/robustness.py``: each a plain function in its own temporary
folder that returns what happened, or raises :class:`Unhandled` saying what went wrong.

Kills are real: a ``jointseg`` process started with ``JOINTSEG_FAULT_AT=<point>`` sends itself
SIGKILL at that point (see ``jointseg.utils.faults``). A full disk is simulated in-process by an
``os.write`` (or ``posix_fallocate``) that fails with ENOSPC.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests/

from jointseg.config import PreprocessingConfig, config_from_dict, save_config  # noqa: E402
from jointseg.data import cache as cache_module
from jointseg.data.cache import build_slice_cache, verify_cache
from jointseg.data.io import write_image
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import DatasetManifest, list_cases, write_manifest
from jointseg.models import load_model
from jointseg.training.checkpoint_io import AtomicCheckpointIO
from jointseg.utils.atomic import DiskFullError, atomic_write_json
from jointseg.utils.faults import FAULT_ENV
from tests.disk_budget import budgeted_write

KILLED = -9
STRUCTURES = {"femur": 1, "tibia": 2}
PREPROCESSING = {"target_spacing": None, "patch_size": [32, 32], "jobs": 1}


class Unhandled(RuntimeError):
    """A fault that was not survived; the message says how."""


def check(condition: bool, failure: str) -> None:
    if not condition:
        raise Unhandled(failure)


# ----------------------------------------------------------------------------- helpers


def jointseg(*args: str, fault: str | None = None) -> subprocess.CompletedProcess:
    """``python -m jointseg.cli ARGS`` in a fresh one-thread process, killed at ``fault``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "jointseg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
    )


def tree_hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def write_toy_dataset(folder: Path, cases: int = 3, shape=(8, 32, 32)) -> Path:
    """Noisy boxes, one per structure, in the nnU-Net layout."""
    for index in range(cases):
        rng = np.random.default_rng(index)
        label = np.zeros(shape, np.uint8)
        for k, value in enumerate(STRUCTURES.values()):
            label[1:-1, 4 + 12 * k : 12 + 12 * k, 6:-6] = value
        image = (rng.normal(100, 10, shape) + 80.0 * label).astype(np.float32)
        for array, path in (
            (image, folder / "imagesTr" / f"toy_{index:03d}_0000.nii.gz"),
            (label, folder / "labelsTr" / f"toy_{index:03d}.nii.gz"),
        ):
            itk = sitk.GetImageFromArray(array)
            itk.SetSpacing((0.8, 0.8, 3.0))
            write_image(itk, path)
    manifest = DatasetManifest(
        name=folder.name,
        channel_names={"0": "MR"},
        labels={"background": 0, **STRUCTURES},
        numTraining=cases,
        file_ending=".nii.gz",
    )
    write_manifest(folder, manifest)
    return folder


def write_config(path: Path, datasets: list[str], **extra) -> Path:
    config = {
        "name": "robustness",
        "datasets": [{"name": f"d{i}", "folder": f} for i, f in enumerate(datasets)],
        "preprocessing": PREPROCESSING,
        **extra,
    }
    save_config(config_from_dict(config), path)
    return path


TRAINING = {
    "scheme": "full",
    "augmentation": {"enabled": False},
    "model": {
        "encoder": "resnet18",
        "width": 0.125,
        "decoder_channels": [64, 32, 16, 16, 16],
        "projector_hidden": 16,
        "projector_dim": 8,
    },
    "training": {
        "epochs": 2,
        "iterations_per_epoch": 3,
        "batch_size": 4,
        "validation_every": 1,  # a checkpoint per epoch
        "validation_fraction": 0.34,
        "optimizer": {"lr": 0.01, "warmup_epochs": 0},
    },
    "regularization": {"shape_prior": {"steps": 4, "base_channels": 4, "code_channels": 4}},
}


@functools.cache
def _training_study() -> tuple[Path, Path, Path]:
    """(config, study, uninterrupted run), made once per process, removed when it exits."""
    root = Path(tempfile.mkdtemp(prefix="jointseg-robustness-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    folders = ["Dataset001_Knee", "Dataset002_Ankle"]
    for folder in folders:
        write_toy_dataset(root / folder)
    config = write_config(root / "train.yaml", folders, **TRAINING)
    straight = root / "straight"
    done = jointseg("train", "-c", str(config), "-d", str(root), "-o", str(straight))
    if done.returncode != 0:
        raise RuntimeError(f"the uninterrupted training failed:\n{done.stderr[-2000:]}")
    return config, root, straight


def _same_weights(a: Path, b: Path) -> bool:
    net_a, meta_a = load_model(a / "models" / "main")
    net_b, meta_b = load_model(b / "models" / "main")
    state_a, state_b = net_a.state_dict(), net_b.state_dict()
    same = all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    metrics = "logs/main/metrics.csv"
    return (
        same
        and meta_a["best_validation_dice"] == meta_b["best_validation_dice"]
        and (a / metrics).read_text() == (b / metrics).read_text()
    )


def _train_killed_at(fault: str) -> str:
    config, study, straight = _training_study()
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        args = ("train", "-c", str(config), "-d", str(study), "-o", str(run))
        killed = jointseg(*args, fault=fault)
        check(killed.returncode == KILLED, f"not killed at {fault} (exit {killed.returncode})")
        resumed = jointseg(*args, "--resume")
        check(resumed.returncode == 0, f"--resume failed: {resumed.stderr[-500:]}")
        check(_same_weights(straight, run), "resumed weights or metrics differ")
    return "resumed: weights and metrics bit-identical to an uninterrupted run"


@contextlib.contextmanager
def disk_full(folder: Path, budget: int) -> Iterator[None]:
    """Writes (``os.write``) into ``folder`` fail with ENOSPC after ``budget`` bytes (Linux)."""
    real_write = os.write
    write = budgeted_write(folder, budget, real_write)
    os.write = write
    try:
        yield
    finally:
        os.write = real_write


def _toy_cache(root: Path):
    dataset = write_toy_dataset(root / "Dataset001_Toy")
    cfg = PreprocessingConfig(**PREPROCESSING)
    labels = DomainLabels("toy", STRUCTURES)
    return lambda: build_slice_cache(
        dataset, list_cases(dataset), labels, cfg, cache_root=root / "cache", progress=False
    )


# ----------------------------------------------------------------------------- scenarios


def train_killed_in_shape_prior() -> str:
    return _train_killed_at("prior.step@2")


def train_killed_mid_epoch() -> str:
    return _train_killed_at("train.step@5")


def train_killed_writing_checkpoint() -> str:
    return _train_killed_at("write:last.ckpt@2")


def predict_killed_mid_folder() -> str:
    config, study, straight = _training_study()
    with tempfile.TemporaryDirectory() as tmp:
        scans, out = Path(tmp) / "scans", Path(tmp) / "out"
        scans.mkdir()
        for case in ("toy_000", "toy_001", "toy_002"):
            source = study / "Dataset001_Knee" / "imagesTr" / f"{case}_0000.nii.gz"
            shutil.copy(source, scans / f"{case}.nii.gz")
        args = ("predict", str(straight), str(scans), "-o", str(out), "--domain", "d0")
        killed = jointseg(*args, fault="write:toy_001_measurements.json")
        check(killed.returncode == KILLED, f"not killed (exit {killed.returncode})")
        check(not (out / "toy_001_outputs.json").exists(), "a half-written case looks complete")
        rerun = jointseg(*args)
        check(rerun.returncode == 0, f"rerun failed: {rerun.stderr[-500:]}")
        check("toy_000: outputs complete, skipped" in rerun.stdout, "complete scan not skipped")
        leftovers = [p for p in out.rglob(".*.tmp*")]
        check(not leftovers, f"temporary files left: {leftovers}")
    return "no partial file; the rerun skipped the complete scan and finished the others"


SYNTH = (
    "from jointseg.synth.generate import synthesize_study as s; "
    "s({!r}, 2, 1, ['knee'], 5, 1, False, scale=0.2, progress=False)"
)


def synth_killed() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "study"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        subprocess.run([sys.executable, "-c", SYNTH.format(str(out))], env=env, check=True)
        expected = tree_hashes(out)
        shutil.rmtree(out)
        killed = subprocess.run(
            [sys.executable, "-c", SYNTH.format(str(out))], env={**env, FAULT_ENV: "synth.case@2"}
        )
        check(killed.returncode == KILLED, f"not killed (exit {killed.returncode})")
        subprocess.run([sys.executable, "-c", SYNTH.format(str(out))], env=env, check=True)
        check(tree_hashes(out) == expected, "the rerun's files differ from an uninterrupted run's")
    return "rerun byte-identical to an uninterrupted run"


def preprocess_killed() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        write_toy_dataset(study / "Dataset001_Knee", cases=4)
        config = write_config(Path(tmp) / "pre.yaml", ["Dataset001_Knee"])
        args = ("preprocess", "-c", str(config), "-d", str(study))
        check(jointseg(*args).returncode == 0, "preprocessing failed")
        expected = tree_hashes(study / ".jointseg_cache")
        shutil.rmtree(study / ".jointseg_cache")
        killed = jointseg(*args, fault="preprocess.case@2")
        check(killed.returncode == KILLED, f"not killed (exit {killed.returncode})")
        check(jointseg(*args).returncode == 0, "the rerun failed")
        check(tree_hashes(study / ".jointseg_cache") == expected, "the rerun's cache differs")
    return "rerun byte-identical to an uninterrupted run"


def _damaged_cache(damage: Callable[[Path], None]) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        build = _toy_cache(Path(tmp))
        first = build()
        images, folder = np.array(first.images), first.path
        del first
        damage(folder)
        check(verify_cache(folder) is not None, "damage not detected")
        second = build()
        check(np.array_equal(second.images, images), "the rebuilt cache differs")
        check(verify_cache(folder) is None, "the rebuilt cache does not verify")
    return "detected by its SHA-256 and rebuilt"


def cache_half_written() -> str:
    return _damaged_cache(lambda folder: (folder / "labels.npy").unlink())


def cache_truncated() -> str:
    def truncate(folder: Path) -> None:
        path = folder / "images.npy"
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return _damaged_cache(truncate)


def cache_flipped_bit() -> str:
    def flip(folder: Path) -> None:
        path = folder / "images.npy"
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x10
        path.write_bytes(bytes(data))

    return _damaged_cache(flip)


def disk_full_checkpoint() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.ckpt"
        writer = AtomicCheckpointIO()
        writer.save_checkpoint({"epoch": 0}, path)
        before = path.read_bytes()
        try:
            with disk_full(Path(tmp), 1000):
                writer.save_checkpoint({"epoch": 1, "w": torch.rand(10_000)}, path)
        except DiskFullError as error:
            message = str(error)
        else:
            raise Unhandled("no error on a full disk")
        check(path.read_bytes() == before, "the previous checkpoint changed")
    return f"previous checkpoint intact; {message.replace(tmp, '<tmp>')}"


def disk_full_output() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "case_measurements.json"
        atomic_write_json(path, {"version": 1})
        try:
            with disk_full(Path(tmp), 10):
                atomic_write_json(path, {"version": 2, "rows": list(range(100))})
        except DiskFullError as error:
            message = str(error)
        else:
            raise Unhandled("no error on a full disk")
        check(json.loads(path.read_text()) == {"version": 1}, "the previous output changed")
    return f"previous output intact; {message.replace(tmp, '<tmp>')}"


def disk_full_cache() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        build = _toy_cache(Path(tmp))

        def no_space(fd: int, offset: int, length: int) -> None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

        real = getattr(os, "posix_fallocate", None)
        cache_module.os.posix_fallocate = no_space  # type: ignore[attr-defined]
        try:
            build()
        except DiskFullError:
            pass
        else:
            raise Unhandled("no error on a full disk")
        finally:
            if real is not None:
                os.posix_fallocate = real
        entries = list((Path(tmp) / "cache" / "Dataset001_Toy").iterdir())
        check(not entries, f"left behind: {entries}")
    return "no cache entry left; the error names the cache folder"


def concurrent_preprocess() -> str:
    with tempfile.TemporaryDirectory() as tmp:
        study = Path(tmp) / "study"
        write_toy_dataset(study / "Dataset001_Knee", cases=4)
        config = write_config(Path(tmp) / "pre.yaml", ["Dataset001_Knee"])
        command = [sys.executable, "-m", "jointseg.cli", "preprocess", "-c", str(config)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop(FAULT_ENV, None)
        procs = [
            subprocess.Popen(
                [*command, "-d", str(study)],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(2)
        ]
        for proc in procs:
            proc.communicate()
        check(all(p.returncode == 0 for p in procs), "a process failed")
        together = tree_hashes(study / ".jointseg_cache")
        shutil.rmtree(study / ".jointseg_cache")
        single = jointseg("preprocess", "-c", str(config), "-d", str(study))
        check(single.returncode == 0, "the single-process build failed")
        check(tree_hashes(study / ".jointseg_cache") == together, "differs from one process's")
    return "both finished; the cache is identical to a single process's"


FAULTS: list[Callable[[], str]] = [
    train_killed_in_shape_prior,
    train_killed_mid_epoch,
    train_killed_writing_checkpoint,
    predict_killed_mid_folder,
    synth_killed,
    preprocess_killed,
    cache_half_written,
    cache_truncated,
    cache_flipped_bit,
    disk_full_checkpoint,
    disk_full_output,
    disk_full_cache,
    concurrent_preprocess,
]
