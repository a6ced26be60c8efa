"""The pretrained model end to end: synthesize, train (in pieces), evaluate, pack.

    python benchmarks/pretrained.py                    # all of it (hours on a CPU)
    python benchmarks/pretrained.py --max-minutes 50   # at most 50 minutes of training, then
                                                       # stop at an epoch end; rerun to go on
    python benchmarks/pretrained.py --smoke --out /tmp/p --package /tmp/p/pkg/model
                                                       # tiny volumes, 2 steps: checks the script
    python benchmarks/pretrained.py --from pretrained --set training.epochs=8
                                                       # fine-tune the shipped model on today's
                                                       # generator (dotted config overrides)

Every call does what is left: the study (``jointseg synth`` realistic and ``--randomize``d, the
config's joints, one seed) unless ``OUT/data`` already holds it; training of the ``pretrained``
config into ``OUT/run``, resumed from its last checkpoint (``jointseg train --resume``) when an
earlier call stopped; once training ends, ``jointseg evaluate`` on the held-out subjects and
the pack into the package (``src/jointseg/pretrained/model``, or ``--package``) with its
``training.json``: config, commands, steps, time, data seed, commit, evaluation. A call that
stops after ``--max-minutes`` exits with status 3 (``make pretrained`` loops on it); ``OUT/
pieces.json`` lists every call.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAUSED = 3  # exit status of a call that stopped at its time budget
FULL = {"subjects": 20, "test": 5, "scale": 1.0}
SMOKE = {"subjects": 2, "test": 1, "scale": 0.2}
SMOKE_CONFIG = {  # dotted overrides: tiny volumes, two epochs of one step, a tiny shape prior
    "preprocessing.target_spacing": 2.0,
    "preprocessing.patch_size": [64, 64],
    "preprocessing.jobs": 1,
    "training.epochs": 2,
    "training.iterations_per_epoch": 1,
    "training.iterations_per_dataset": False,
    "training.batch_size": 4,
    "training.validation_every": 1,
    "training.plateau_patience": None,
    "training.optimizer.warmup_epochs": 0,
    "regularization.shape_prior.steps": 2,
    "regularization.shape_prior.batch_size": 4,
}


def make_study(data: Path, joints: list[str], setting: dict, seed: int, jobs: int) -> None:
    """The realistic and randomized datasets of ``joints`` (skipped when already there)."""
    from jointseg.synth.generate import GENERATOR_VERSION, synthesize_study

    marker = data / "study.json"
    wanted = {"joints": joints, **setting, "seed": seed, "generator": GENERATOR_VERSION}
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == wanted:
        print(f"[pretrained] study: {data} (done)")
        return
    started = time.perf_counter()
    for randomize in (False, True):
        synthesize_study(data, setting["subjects"], setting["test"], joints, seed, jobs, False,
                         scale=setting["scale"], progress=False, randomize=randomize)  # fmt: skip
    marker.write_text(json.dumps(wanted, indent=2) + "\n", encoding="utf-8")
    print(f"[pretrained] study: {data} ({time.perf_counter() - started:.0f} s)")


def load_recipe(
    name: str, smoke: bool, seed: int, initial: str | None = None, sets: list[str] = ()
):
    """The config ``name`` with the smoke settings, the seed, the starting weights
    (``training.initial_weights``) and ``KEY=VALUE`` overrides (values read as YAML)."""
    import yaml

    from jointseg.config import load_config

    overrides = dict(SMOKE_CONFIG) if smoke else {}
    overrides["training.seed"] = seed
    if initial is not None:
        overrides["training.initial_weights"] = initial
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--set takes KEY=VALUE, got {item!r}")
        overrides[key] = yaml.safe_load(value)
    return load_config(name, overrides)


def starting_model(initial: str | None) -> dict | None:
    """What a fine-tuning starts from: the run and, when it has one, its own training record
    (read before packing replaces it)."""
    if initial is None:
        return None
    from jointseg.inference.packaged import resolve_run

    folder = resolve_run(initial)
    record = folder / "training.json"
    previous = json.loads(record.read_text(encoding="utf-8")) if record.is_file() else {}
    previous.pop("config", None)
    return {"run": initial, "training": previous}


def commit() -> dict:
    """The checkout's commit and whether it had changes (None outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            result = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                                    encoding="utf-8", check=True)  # fmt: skip
        except (OSError, subprocess.CalledProcessError):
            return None
        return result.stdout.strip()

    head = git("rev-parse", "HEAD")
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": head, "dirty": bool(status) if status is not None else None}


def steps_trained(run: Path) -> int | None:
    """Optimizer steps in the run's last checkpoint."""
    import torch

    paths = sorted((run / "checkpoints").glob("*/last.ckpt"))
    if not paths:
        return None
    state = torch.load(paths[0], map_location="cpu", weights_only=True, mmap=True)
    return int(state["global_step"])


def read_pieces(out: Path) -> list[dict]:
    path = out / "pieces.json"
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []


def write_pieces(out: Path, pieces: list[dict]) -> None:
    from jointseg.utils.atomic import atomic_write_json

    atomic_write_json(out / "pieces.json", pieces)


def train(cfg, data: Path, run: Path, max_minutes: float | None) -> tuple[bool, float]:
    """Train or resume; (finished, seconds)."""
    from jointseg.training.budget import TimeBudget, TrainingPaused
    from jointseg.workflows.train import train_run

    callbacks = [TimeBudget(60 * max_minutes)] if max_minutes is not None else []
    started = time.perf_counter()
    try:
        train_run(cfg, data, run, resume=run.exists(), progress=False, callbacks=callbacks)
    except TrainingPaused as paused:
        print(f"[pretrained] {paused}")
        return False, time.perf_counter() - started
    return True, time.perf_counter() - started


def training_record(
    cfg, args, setting: dict, pieces: list[dict], run: Path, started_from: dict | None = None
) -> dict:
    import torch

    from jointseg._version import __version__
    from jointseg.config import dump_config
    from jointseg.synth.generate import GENERATOR_VERSION

    command = ["python benchmarks/pretrained.py", *(["--smoke"] if args.smoke else [])]
    command += [f"--from {args.start}"] if args.start else []
    command += [f"--set {item}" for item in args.set]
    return {
        "config_name": cfg.name,
        "config": dump_config(cfg),
        "command": " ".join(command),
        "started_from": started_from,
        "pieces": pieces,
        "steps": steps_trained(run),
        "training_seconds": round(sum(p["train_seconds"] for p in pieces), 1),
        "data": {
            "generator": "jointseg synth",
            "generator_version": GENERATOR_VERSION,
            "seed": args.data_seed,
            "joints": [d.name for d in cfg.datasets],
            "randomized": True,
            **setting,
        },  # fmt: skip
        "training_seed": cfg.training.seed,
        **commit(),
        "jointseg_version": __version__,
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {platform.system()}, python {platform.python_version()}",
    }


def time_steps(config: str, steps: int, warmup: int = 2) -> float:
    """Seconds per training step of ``config`` (its scheme, network, patch and batch) on a
    generated study of its datasets (three 24-slice volumes each, no randomized data)."""
    import tempfile

    import torch

    sys.path.insert(0, str(ROOT))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from jointseg.training.timing import StepTimer
    from jointseg.workflows.train import train_run
    from tests.conftest import write_dataset

    cfg = load_recipe(config, False, 0)
    data = cfg.model_dump(mode="json")
    data["datasets"] = [{**d, "randomized_folder": None} for d in data["datasets"]]
    data["training"].update(epochs=1, iterations_per_epoch=steps + warmup, validation_fraction=0,
                            iterations_per_dataset=False, plateau_patience=None)  # fmt: skip
    data["regularization"]["shape_prior"]["steps"] = 5
    from jointseg.config import config_from_dict

    cfg = config_from_dict(data, "timing")
    timer = StepTimer(warmup)
    size = cfg.preprocessing.patch_size[0] + 52
    with tempfile.TemporaryDirectory() as tmp:
        for k, dataset in enumerate(cfg.datasets):
            structures = {f"bone{i}": i for i in range(1, 3 + k % 2)}
            write_dataset(Path(tmp), dataset.folder, cases=3, structures=structures,
                          shape=(24, size, size))  # fmt: skip
        train_run(cfg, Path(tmp), Path(tmp) / "run", progress=False, callbacks=[timer])
    seconds = sum(timer.steps) / len(timer.steps)
    print(f"[pretrained] {cfg.name}: {seconds:.2f} s per training step ({cfg.scheme}, "
          f"{cfg.model.encoder} width {cfg.model.width}, batch {cfg.training.batch_size}, "
          f"{torch.get_num_threads()} threads, {len(timer.steps)} timed steps)")  # fmt: skip
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "pretrained")
    parser.add_argument("--package", type=Path, default=None,
                        help="packed model folder (default: the package's)")  # fmt: skip
    parser.add_argument("--config", default="pretrained", help="config name or YAML file")
    parser.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop training at the first epoch end after this many minutes",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny volumes, 2 steps")
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0, help="training seed")
    parser.add_argument("--jobs", type=int, default=2, help="synthesis worker processes")
    parser.add_argument(
        "--from",
        dest="start",
        default=None,
        metavar="RUN",
        help="start from this run's weights (or `pretrained`): fine-tuning",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted config override, e.g. training.epochs=8")  # fmt: skip
    parser.add_argument("--time-steps", type=int, default=0, metavar="N",
                        help="only time N training steps of the config and exit")  # fmt: skip
    args = parser.parse_args(argv)
    if args.time_steps:
        time_steps(args.config, args.time_steps)
        return 0

    from jointseg.evaluation.evaluate import evaluate_run
    from jointseg.workflows.console import configure_logging
    from jointseg.workflows.pretrained import pack_run

    configure_logging()
    setting = SMOKE if args.smoke else FULL
    cfg = load_recipe(args.config, args.smoke, args.seed, args.start, args.set)
    out, data, run = args.out, args.out / "data", args.out / "run"
    out.mkdir(parents=True, exist_ok=True)
    started_from = out / "started_from.json"  # the starting model's record, kept across pieces
    if args.start is not None and not started_from.is_file():
        started_from.write_text(json.dumps(starting_model(args.start), indent=2), encoding="utf-8")
    make_study(data, [d.name for d in cfg.datasets], setting, args.data_seed, args.jobs)  # joints

    piece = {"argv": sys.argv[1:] if argv is None else argv,
             "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}  # fmt: skip
    finished, seconds = train(cfg, data, run, args.max_minutes)
    piece |= {"train_seconds": round(seconds, 1), "steps_after": steps_trained(run)}
    pieces = [*read_pieces(out), {**piece, "finished": finished}]
    write_pieces(out, pieces)
    if not finished:
        print(f"[pretrained] paused at {pieces[-1]['steps_after']} steps; run the same command "
              "again to continue")  # fmt: skip
        return PAUSED
    report = evaluate_run(run, progress=False)
    print(f"[pretrained] evaluation: {report}")
    origin = json.loads(started_from.read_text(encoding="utf-8")) if args.start else None
    record = training_record(cfg, args, setting, pieces, run, origin)
    dest = pack_run(run, args.package, record)
    size = sum(p.stat().st_size for p in dest.rglob("*.safetensors"))
    print(f"[pretrained] packed into {dest} ({size / 1e6:.1f} MB of weights, "
          f"{record['steps']} steps, {record['training_seconds']:.0f} s of training)")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
