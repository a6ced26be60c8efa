"""Training speed on the CPU: slices per second per scheme, data-wait share, peak memory.

Trains each scheme for a few iterations with the demo configuration on a generated study
(three domains of 160x160x24 volumes), timing every step after a warm-up. Reports:

- slices/s of each scheme and its ratio to a plain U-Net of the same backbone (the `shared`
  scheme: one BatchNorm, one head, no regularizer);
- the step-time overhead of `full` over `mtmd` (aim: at most 25%);
- the share of step time spent waiting for data (aim: under 10%);
- the process's peak resident memory.

    python benchmarks/train.py [--quick] [--config configs/demo.yaml] [--iterations N]
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import lightning as L
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from jointseg.config import load_config  # noqa: E402
from jointseg.training.runner import train_run  # noqa: E402
from tests.conftest import write_dataset  # noqa: E402

SCHEMES = ("shared", "mtmd", "mtmd+con", "full")


class StepTimer(L.Callback):
    """Wall time of each training step, and the gap before it (data loading + loop)."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.steps: list[float] = []
        self.waits: list[float] = []
        self._end: float | None = None
        self._start = 0.0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        now = time.perf_counter()
        if self._end is not None and batch_idx >= self.warmup:
            self.waits.append(now - self._end)
        self._start = now

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._end = time.perf_counter()
        if batch_idx >= self.warmup:
            self.steps.append(self._end - self._start)


def make_study(root: Path, shape: tuple[int, int, int]) -> None:
    structures = {
        "Dataset001_Ankle": {"calcaneus": 1, "talus": 2, "tibia": 3},
        "Dataset002_Knee": {"femur": 1, "fibula": 2, "patella": 3, "tibia": 4},
        "Dataset003_Shoulder": {"humerus": 1, "scapula": 2},
    }
    for name, labels in structures.items():
        write_dataset(root, name, cases=3, structures=labels, shape=shape)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. training.precision=16-mixed (YAML value)",
    )
    args = parser.parse_args()
    overrides = {k: yaml.safe_load(v) for k, v in (item.split("=", 1) for item in args.set)}
    iterations = args.iterations or (12 if args.quick else 40)
    warmup = 3
    base = load_config(
        args.config,
        {
            "training.epochs": 1,
            "training.iterations_per_epoch": iterations + warmup,
            "training.validation_fraction": 0.0,
            "regularization.shape_prior.steps": 20,
            "training.iterations_per_dataset": False,
            **overrides,
        },
    )
    batch = base.training.batch_size
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        size = base.preprocessing.patch_size[0] + 32
        make_study(data, (24, size, size))
        for scheme in SCHEMES:
            timer = StepTimer(warmup)
            cfg = base.model_copy(update={"scheme": scheme})
            train_run(cfg, data, Path(tmp) / scheme, progress=False, callbacks=[timer])
            step = sum(timer.steps) / len(timer.steps)
            wait = sum(timer.waits) / max(1, len(timer.waits))
            results[scheme] = (step, wait)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    plain = results["shared"][0]
    print(
        f"\ntraining speed, {base.model.encoder} width {base.model.width}, "
        f"{base.preprocessing.patch_size[0]}x{base.preprocessing.patch_size[1]}, batch {batch}, "
        f"{iterations} timed steps, {device}, precision {base.training.precision}"
    )
    print(f"{'scheme':<10} {'s/step':>8} {'slices/s':>9} {'vs plain':>9} {'data wait':>10}")
    for scheme, (step, wait) in results.items():
        print(
            f"{scheme:<10} {step:8.3f} {batch / step:9.1f} {plain / step:9.2f} "
            f"{100 * wait / (step + wait):9.1f}%"
        )
    overhead = results["full"][0] / results["mtmd"][0] - 1
    print(f"\nfull over mtmd step-time overhead: {100 * overhead:+.1f}% (aim <= 25%)")
    print(f"peak resident memory: {peak_mb:.0f} MB")
    if torch.cuda.is_available():
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**20:.0f} MB")


if __name__ == "__main__":
    main()
