"""Faults survived, nothing lost: real processes killed with SIGKILL, a disk that fills up, two
processes building one cache.

Kills use the fault points of :mod:`jointseg.utils.faults`: the test starts a real ``jointseg``
process with ``JOINTSEG_FAULT_AT=<point>`` and the process sends itself SIGKILL when it gets
there (return code -9), so the kill lands at a chosen, reproducible moment. A full disk is
simulated in-process by an ``os.write`` that fails with ENOSPC once a byte budget is spent (and
``posix_fallocate`` for the cache's arrays); where mounting works, a real 256 KiB tmpfs too.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from jointseg.config import ExperimentConfig, PreprocessingConfig, config_from_dict, save_config
from jointseg.data import cache as cache_module
from jointseg.data.cache import build_slice_cache, verify_cache
from jointseg.data.io import write_image
from jointseg.data.labels import DomainLabels
from jointseg.data.manifest import list_cases
from jointseg.models import build_model, load_model, save_model
from jointseg.runs import DomainEntry, ModelEntry, RunInfo, save_run_info
from jointseg.training.checkpoint_io import AtomicCheckpointIO
from jointseg.utils.atomic import DiskFullError, atomic_write_json
from jointseg.utils.faults import FAULT_ENV
from tests.conftest import write_dataset
from tests.disk_budget import budgeted_write

ROOT = Path(__file__).resolve().parents[1]
KILLED = -9


def run_cli(
    *args: str, fault: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """``python -m jointseg.cli ARGS`` in a fresh process (one thread), killed at ``fault``."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src"), str(ROOT), env.get("PYTHONPATH", "")])
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-m", "jointseg.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=timeout,
    )


def run_python(code: str, fault: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    env.pop(FAULT_ENV, None)
    if fault:
        env[FAULT_ENV] = fault
    return subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        encoding="utf-8",
        timeout=300,
    )


def tree_hashes(root: Path) -> dict[str, str]:
    """SHA-256 of every file under ``root``, by relative path."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*.tmp*") if p.is_file()]


# --------------------------------------------------------------------------- training


def _training_config(tmp: Path) -> Path:
    from tests.test_training import tiny_config

    config = tiny_config(epochs=2, iterations_per_epoch=3)
    config["regularization"]["shape_prior"]["steps"] = 4
    path = tmp / "tiny.yaml"
    save_config(config_from_dict({**config, "scheme": "full"}), path)
    return path


@pytest.fixture(scope="module")
def training_setup(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(config, study, uninterrupted run): the run trained by one ``jointseg train`` process."""
    root = tmp_path_factory.mktemp("faults_training")
    write_dataset(root, "Dataset001_Knee", cases=3, structures={"femur": 1, "tibia": 2})
    write_dataset(root, "Dataset002_Ankle", cases=3, structures={"talus": 1, "tibia": 2})
    config = _training_config(root)
    straight = root / "straight"
    done = run_cli("train", "-c", str(config), "-d", str(root), "-o", str(straight))
    assert done.returncode == 0, done.stderr[-3000:]
    return config, root, straight


def _same_run(a: Path, b: Path) -> None:
    net_a, meta_a = load_model(a / "models" / "main")
    net_b, meta_b = load_model(b / "models" / "main")
    state_a, state_b = net_a.state_dict(), net_b.state_dict()
    assert state_a.keys() == state_b.keys()
    for key in state_a:
        assert torch.equal(state_a[key], state_b[key]), key
    assert meta_a["best_validation_dice"] == meta_b["best_validation_dice"]
    prior = "models/shape_prior/shape_autoencoder.safetensors"
    assert (a / prior).read_bytes() == (b / prior).read_bytes()
    metrics = "logs/main/metrics.csv"
    assert (a / metrics).read_text() == (b / metrics).read_text()
    assert not temporaries(b)


@pytest.mark.slow
@pytest.mark.parametrize(
    "fault",
    [
        "prior.step@2",  # during shape-prior pre-training
        "train.step@5",  # mid-epoch: second batch of the second epoch
        "write:last.ckpt@2",  # the second epoch's checkpoint written, not yet renamed
    ],
)
def test_killed_training_resumes_to_the_same_weights_and_metrics(
    training_setup, tmp_path: Path, fault: str
) -> None:
    config, study, straight = training_setup
    run = tmp_path / "run"
    args = ("train", "-c", str(config), "-d", str(study), "-o", str(run))
    killed = run_cli(*args, fault=fault)
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert not (run / "models" / "main" / "model.json").exists()
    if fault.startswith("write:"):
        assert temporaries(run / "checkpoints")  # killed between write and rename
        assert torch.load(run / "checkpoints/main/last.ckpt", weights_only=True)["epoch"] == 0
    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    _same_run(straight, run)


# --------------------------------------------------------------------------- predict


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory) -> Path:
    """A run folder holding an untrained two-domain network: predictions need not be good."""
    from tests.tiny_model import DOMAINS, MODEL, PREPROCESSING

    run = tmp_path_factory.mktemp("faults_run")
    torch.manual_seed(0)
    net = build_model(MODEL, [3, 3], domain_specific_bn=True).eval()
    datasets = [{"name": d, "folder": f"Dataset00{i + 1}_{d}"} for i, d in enumerate(DOMAINS)]
    cfg = ExperimentConfig(
        name="tiny", datasets=datasets, scheme="mtmd", preprocessing=PREPROCESSING, model=MODEL
    )
    save_config(cfg, run / "config.yaml")
    save_model(net, run / "models" / "main")
    domains = [
        DomainEntry(name=d, folder=f"Dataset00{i + 1}_{d}", structures=s)
        for i, (d, s) in enumerate(DOMAINS.items())
    ]
    info = RunInfo(
        scheme="mtmd",
        domains=domains,
        models=[ModelEntry(name="main", path="models/main", domains=list(DOMAINS))],
    )
    save_run_info(run, info)
    return run


@pytest.fixture(scope="module")
def scans(tmp_path_factory) -> Path:
    from tests.tiny_model import make_scan

    folder = tmp_path_factory.mktemp("faults_scans")
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        sitk.WriteImage(make_scan("knee", seed)[0], str(folder / f"{name}.nii.gz"))
    return folder


def _check_complete_files(out: Path) -> None:
    """Every visible file under ``out`` is whole: it parses in its format."""
    import trimesh

    for path in out.rglob("*"):
        if not path.is_file() or path.name.startswith("."):
            continue
        if path.name.endswith(".nii.gz"):
            sitk.ReadImage(str(path))
        elif path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".png":
            assert (
                path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
                and path.read_bytes()[-8:-4] == b"IEND"
            )
        elif path.suffix in (".stl", ".ply"):
            assert len(trimesh.load(path).faces) > 0


@pytest.mark.slow
def test_killed_predict_leaves_whole_files_and_the_rerun_skips_complete_scans(
    untrained_run: Path, scans: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from jointseg.inference.predict import predict_path

    straight = tmp_path / "straight"
    predict_path(untrained_run, scans, straight, domain="knee", threads=1)
    out = tmp_path / "out"
    args = ("predict", str(untrained_run), str(scans), "-o", str(out), "--domain", "knee")
    killed = run_cli(*args, "--threads", "1", fault="write:b_measurements.json")
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    assert (out / "a_outputs.json").is_file() and not (out / "b_outputs.json").exists()
    assert (out / "b_seg.nii.gz").is_file()  # b was being written
    assert temporaries(out)  # the measurement file, fully written but not renamed
    _check_complete_files(out)

    with caplog.at_level(logging.INFO, logger="jointseg.inference.predict"):
        results = predict_path(untrained_run, scans, out, domain="knee", threads=1)
    assert [r.skipped for r in results] == [True, False, False]
    assert "a: outputs complete, skipped" in caplog.text  # logged; the CLI shows the log
    assert not temporaries(out)
    assert sorted(tree_hashes(out)) == sorted(tree_hashes(straight))
    for case in "abc":
        name = f"{case}_seg.nii.gz"
        assert (out / name).read_bytes() == (straight / name).read_bytes()

    (out / "c_seg.nii.gz").unlink()  # an output gone: c is no longer complete
    again = predict_path(untrained_run, scans, out, domain="knee", threads=1)
    assert [r.skipped for r in again] == [True, True, False]
    forced = predict_path(untrained_run, scans, out, domain="knee", threads=1, overwrite=True)
    assert not any(r.skipped for r in forced)
    other = predict_path(untrained_run, scans, out, domain="knee", threads=1, meshes=False)
    assert not any(r.skipped for r in other)  # other settings: redone


# --------------------------------------------------------------------------- synth, preprocess

SYNTH = (
    "from jointseg.synth.generate import synthesize_study as s; "
    "s({out!r}, 2, 1, ['knee'], 5, 1, False, scale=0.2, progress=False)"
)


@pytest.mark.slow
def test_killed_synth_reruns_to_identical_bytes(tmp_path: Path) -> None:
    out = tmp_path / "study"
    done = run_python(SYNTH.format(out=str(out)))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = tree_hashes(out)
    for fault in ("synth.case@2", "write:knee_test_000_0000.nii.gz"):
        import shutil

        shutil.rmtree(out)
        killed = run_python(SYNTH.format(out=str(out)), fault=fault)
        assert killed.returncode == KILLED, killed.stderr[-3000:]
        assert not (out / "synth.json").exists()
        rerun = run_python(SYNTH.format(out=str(out)))
        assert rerun.returncode == 0, rerun.stderr[-3000:]
        assert tree_hashes(out) == expected, fault


def _preprocess_config(tmp: Path) -> Path:
    config = {
        "name": "tiny",
        "datasets": [{"name": "knee", "folder": "Dataset001_Knee"}],
        "preprocessing": {"target_spacing": None, "patch_size": [32, 32], "jobs": 1},
    }
    path = tmp / "pre.yaml"
    save_config(config_from_dict(config), path)
    return path


@pytest.fixture
def preprocess_setup(tmp_path: Path) -> tuple[Path, Path]:
    study = tmp_path / "study"
    write_dataset(study, "Dataset001_Knee", cases=4, shape=(12, 40, 40))
    return _preprocess_config(tmp_path), study


def test_killed_preprocess_reruns_to_identical_bytes(preprocess_setup) -> None:
    import shutil

    config, study = preprocess_setup
    cache = study / ".jointseg_cache"
    done = run_cli("preprocess", "-c", str(config), "-d", str(study))
    assert done.returncode == 0, done.stderr[-3000:]
    expected = tree_hashes(cache)
    shutil.rmtree(cache)
    killed = run_cli("preprocess", "-c", str(config), "-d", str(study), fault="preprocess.case@2")
    assert killed.returncode == KILLED, killed.stderr[-3000:]
    entries = [p for p in (cache / "Dataset001_Knee").iterdir() if not p.name.startswith(".")]
    assert entries == []  # only the temporary folder of the killed build
    rerun = run_cli("preprocess", "-c", str(config), "-d", str(study))
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "built" in rerun.stdout
    assert tree_hashes(cache) == expected


CFG = PreprocessingConfig(target_spacing=None, patch_size=(32, 32), jobs=1)


def _build(dataset: Path):
    labels = DomainLabels("toy", {"femur": 1, "tibia": 2})
    return build_slice_cache(
        dataset, list_cases(dataset), labels, CFG, cache_root=dataset.parent / "c", progress=False
    )


def _truncate(folder: Path) -> None:
    path = folder / "images" / "toy_001.npy"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_bit(folder: Path) -> None:
    path = folder / "images" / "toy_001.npy"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


def _half_written(folder: Path) -> None:
    (folder / "labels" / "toy_002.npy").unlink()


@pytest.mark.parametrize("damage", [_half_written, _truncate, _flip_bit])
def test_damaged_cache_is_detected_and_rebuilt(tmp_path: Path, damage, caplog) -> None:
    dataset = write_dataset(tmp_path)
    first = _build(dataset)
    images = [np.array(a) for a in first.images.arrays]
    labels = [np.array(a) for a in first.labels.arrays]
    folder = first.path
    del first
    damage(folder)
    assert verify_cache(folder) is not None
    with caplog.at_level("WARNING", logger="jointseg.data.cache"):
        second = _build(dataset)
    assert "is damaged" in caplog.text and "rebuilt" in caplog.text
    assert second.path == folder and verify_cache(folder) is None
    for kind, before in (("images", images), ("labels", labels)):
        after = getattr(second, kind).arrays
        assert all(np.array_equal(a, b) for a, b in zip(after, before, strict=True))


def test_two_processes_preprocessing_into_one_cache(preprocess_setup) -> None:
    config, study = preprocess_setup
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
    env.pop(FAULT_ENV, None)
    command = [sys.executable, "-m", "jointseg.cli", "preprocess", "-c", str(config)]
    processes = [
        subprocess.Popen(
            [*command, "-d", str(study)],
            env=env,
            stdout=subprocess.PIPE,
            text=True,
            encoding="utf-8",
        )
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    said = sorted("reused" if "reused in" in text else "built" for text in outputs)
    assert said == ["built", "reused"]  # the lock made the second wait and reuse
    cache = study / ".jointseg_cache"
    concurrent = tree_hashes(cache)
    entry = next(p for p in (cache / "Dataset001_Knee").iterdir() if not p.name.startswith("."))
    assert verify_cache(entry) is None
    import shutil

    shutil.rmtree(cache)
    single = run_cli("preprocess", "-c", str(config), "-d", str(study))
    assert single.returncode == 0
    assert tree_hashes(cache) == concurrent


# --------------------------------------------------------------------------- full disk


@pytest.fixture
def disk_full_after(monkeypatch):
    """``limit(folder, budget)``: writes into ``folder`` fail with ENOSPC after ``budget`` bytes
    (through ``os.write``; Linux, where /proc names each descriptor's file)."""
    if not Path("/proc/self/fd").is_dir():
        pytest.skip("needs /proc/self/fd")
    real_write = os.write

    def limit(folder: Path, budget: int) -> None:
        monkeypatch.setattr(os, "write", budgeted_write(folder, budget, real_write))

    return limit


def test_full_disk_while_writing_a_checkpoint_keeps_the_previous_one(
    tmp_path: Path, disk_full_after
) -> None:
    path = tmp_path / "checkpoints" / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"epoch": 0, "w": torch.arange(10.0)}, path)
    before = path.read_bytes()
    disk_full_after(tmp_path, 2000)
    with pytest.raises(DiskFullError, match=r"no space left on device while writing .*last\.ckpt"):
        io.save_checkpoint({"epoch": 1, "w": torch.rand(10_000)}, path)
    assert path.read_bytes() == before
    assert io.load_checkpoint(path)["epoch"] == 0
    assert not temporaries(tmp_path)


def test_full_disk_while_writing_an_output_keeps_the_previous_one(
    tmp_path: Path, disk_full_after
) -> None:
    path = tmp_path / "case_measurements.json"
    atomic_write_json(path, {"version": 1})
    disk_full_after(tmp_path, 100)
    with pytest.raises(DiskFullError, match="while writing .*case_measurements.json"):
        atomic_write_json(path, {"version": 2, "rows": list(range(1000))})
    assert json.loads(path.read_text()) == {"version": 1}
    assert not temporaries(tmp_path)


def test_full_disk_while_building_a_cache_leaves_no_entry(tmp_path: Path, monkeypatch) -> None:
    dataset = write_dataset(tmp_path)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(cache_module.os, "posix_fallocate", no_space, raising=False)
    with pytest.raises(DiskFullError, match="no space left on device while writing the slice"):
        _build(dataset)
    assert [p.name for p in (tmp_path / "c" / dataset.name).iterdir()] == []
    monkeypatch.undo()
    assert verify_cache(_build(dataset).path) is None


def test_cli_reports_a_full_disk_with_exit_1_and_no_traceback(
    untrained_run: Path, scans: Path, tmp_path: Path, disk_full_after
) -> None:
    from typer.testing import CliRunner

    from jointseg.cli import app

    out = tmp_path / "out"
    disk_full_after(out, 0)
    result = CliRunner().invoke(
        app,
        ["predict", str(untrained_run), str(scans), "-o", str(out), "--domain", "knee"],
        catch_exceptions=False,
    )
    assert result.exit_code == 1
    assert "error: no space left on device while writing" in result.output
    assert "Traceback" not in result.output
    assert not [p for p in out.rglob("*") if p.is_file() and p.suffix != ".gz"]


@pytest.fixture
def small_tmpfs(tmp_path: Path):
    """A real 256 KiB tmpfs, where this machine allows mounting one (root); skipped elsewhere."""
    folder = tmp_path / "small"
    folder.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.parametrize("name", ["label.nii.gz", "label.nrrd"])
def test_full_real_disk_while_writing_an_image(small_tmpfs: Path, name: str) -> None:
    path = small_tmpfs / name
    small = sitk.GetImageFromArray(np.zeros((4, 8, 8), np.uint8))
    write_image(small, path)
    before = path.read_bytes()
    noise = np.random.default_rng(0).random((20, 64, 64)).astype(np.float32)  # incompressible
    with pytest.raises(DiskFullError, match=f"no space left on device while writing .*{name}"):
        write_image(sitk.GetImageFromArray(noise), path)
    assert path.read_bytes() == before
    assert not temporaries(small_tmpfs)


def test_last_checkpoint_is_written_at_every_epoch_end(tmp_path: Path, monkeypatch) -> None:
    """Also when validation does not improve (Lightning's save_last would skip it then)."""
    from jointseg.training.module import SegmentationModule
    from jointseg.workflows.train import train_run
    from tests.test_training import tiny_config

    def constant_dice(self) -> None:
        self.log("val/dice", 0.5)

    monkeypatch.setattr(SegmentationModule, "on_validation_epoch_end", constant_dice)
    write_dataset(tmp_path, "Dataset001_Knee", cases=3, structures={"femur": 1, "tibia": 2})
    write_dataset(tmp_path, "Dataset002_Ankle", cases=3, structures={"talus": 1, "tibia": 2})
    config = {**tiny_config(epochs=3, iterations_per_epoch=1), "scheme": "mtmd"}
    train_run(config_from_dict(config), tmp_path, tmp_path / "run", progress=False)
    folder = tmp_path / "run" / "checkpoints" / "main"
    assert torch.load(folder / "best.ckpt", weights_only=True)["epoch"] == 0
    assert torch.load(folder / "last.ckpt", weights_only=True)["epoch"] == 2
