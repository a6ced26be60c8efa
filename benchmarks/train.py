"""Training speed on the CPU: slices per second per scheme, data-wait share, peak memory.

Trains each scheme for a few iterations with the demo configuration on a generated study
(three domains of 160x160x24 volumes), timing every step after a warm-up. Reports:

- slices/s of each scheme and its ratio to a plain U-Net of the same backbone (the `shared`
  scheme: one BatchNorm, one head, no regularizer);
- the step-time overhead of `full` over `mtmd` (aim: at most 25%);
- the share of step time spent waiting for data (aim: under 10%);
- the process's peak resident memory;
- whole view against crop: the `mtmd` scheme's step time and peak memory (each in a fresh
  process) with the whole-view slice cache (patches drawn inside larger slices) against a
  crop-equivalent baseline (the same slices centre-cropped to the patch in memory, as the
  former cache held them), as a ratio (aim: at most 1.1x), and the cache's size on disk per
  case.

    python benchmarks/train.py [--quick] [--config demo] [--iterations N]
                               [--view-only]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _child import run_json_child  # noqa: E402

from jointseg.config import ExperimentConfig, load_config  # noqa: E402
from jointseg.data.cache import CaseRows, SliceCache, class_locations  # noqa: E402
from jointseg.data.patches import centred_corner, crop_patch  # noqa: E402
from jointseg.training import runner  # noqa: E402
from jointseg.training.timing import StepTimer  # noqa: E402
from jointseg.workflows.train import train_run  # noqa: E402
from tests.conftest import write_dataset  # noqa: E402

SCHEMES = ("shared", "mtmd", "mtmd+con", "full")


def make_study(root: Path, shape: tuple[int, int, int]) -> None:
    structures = {
        "Dataset001_Ankle": {"calcaneus": 1, "talus": 2, "tibia": 3},
        "Dataset002_Knee": {"femur": 1, "fibula": 2, "patella": 3, "tibia": 4},
        "Dataset003_Shoulder": {"humerus": 1, "scapula": 2},
    }
    for name, labels in structures.items():
        write_dataset(root, name, cases=3, structures=labels, shape=shape)


def cropped(cache: SliceCache, patch: tuple[int, int]) -> SliceCache:
    """The crop-equivalent of a whole-view cache: every case's slices centre-cropped to the
    patch in memory (images padded with the slice's minimum), with their own locations."""
    images, labels, locations = [], [], []
    for index, (image, label) in enumerate(
        zip(cache.images.arrays, cache.labels.arrays, strict=True)
    ):
        corner = [centred_corner(n // 2, n, p) for n, p in zip(image.shape[1:], patch, strict=True)]
        images.append(
            np.stack([crop_patch(np.asarray(s), corner, patch, float(s.min())) for s in image])
        )
        labels.append(np.stack([crop_patch(np.asarray(s), corner, patch, 0) for s in label]))
        start = int(cache.images.starts[index])
        classes = int(cache.locations[:, 0].max()) + 1 if len(cache.locations) else 1
        locations.append(class_locations(labels[-1], start, cache.case_ids[index], classes))
    foreground = np.concatenate([a.reshape(len(a), -1).any(axis=1) for a in labels])
    return dataclasses.replace(
        cache,
        images=CaseRows(images),
        labels=CaseRows(labels),
        foreground=foreground,
        locations=np.concatenate(locations),
    )


def view_child(spec: dict) -> dict:
    """Train `mtmd` on the study, whole view or crop-equivalent; step time and peak memory."""
    cfg = ExperimentConfig.model_validate(spec["config"])
    if spec["variant"] == "crop":
        original = runner.preprocess_study
        patch = tuple(cfg.preprocessing.patch_size)
        runner.preprocess_study = lambda c, d: {  # type: ignore[assignment]
            name: cropped(cache, patch) for name, cache in original(c, d).items()
        }
    timer = StepTimer(spec["warmup"])
    train_run(cfg, Path(spec["data"]), Path(spec["out"]), progress=False, callbacks=[timer])
    return {
        "step": sum(timer.steps) / len(timer.steps),
        "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def cache_size_per_case(data: Path) -> float:
    """MB on disk per case of the study's whole-view slice caches (images and labels)."""
    files = list((data / ".jointseg_cache").glob("*/*/images/*.npy"))
    files += list((data / ".jointseg_cache").glob("*/*/labels/*.npy"))
    whole = sum(f.stat().st_size for f in files)
    cases = len(files) // 2
    return whole / 2**20 / cases


def view_comparison(base: ExperimentConfig, data: Path, out: Path, warmup: int) -> None:
    cfg = base.model_copy(update={"scheme": "mtmd"})
    results = {}
    for variant in ("crop", "whole"):  # the crop first: the whole-view cache is then warm
        spec = {"config": cfg.model_dump(mode="json"), "variant": variant, "warmup": warmup,
                "data": str(data), "out": str(out / f"view_{variant}")}  # fmt: skip
        results[variant] = run_json_child(__file__, spec, f"the {variant} run")
    whole_mb = cache_size_per_case(data)
    patch = base.preprocessing.patch_size
    caches = list((data / ".jointseg_cache").glob("*/*/meta.json"))
    slices = sum(c["stop"] - c["start"] for m in caches
                 for c in json.loads(m.read_text())["cases"])  # fmt: skip
    cases = sum(len(json.loads(m.read_text())["cases"]) for m in caches)
    crop_mb = slices * patch[0] * patch[1] * 5 / 2**20 / cases
    whole, crop = results["whole"], results["crop"]
    print(f"\nwhole view against crop (mtmd, patch {patch[0]}x{patch[1]}, fresh process each)")
    print(f"{'':<8} {'s/step':>8} {'peak MB':>8} {'cache MB/case':>14}")
    print(f"{'crop':<8} {crop['step']:8.3f} {crop['peak_mb']:8.0f} {crop_mb:14.2f}")
    print(f"{'whole':<8} {whole['step']:8.3f} {whole['peak_mb']:8.0f} {whole_mb:14.2f}")
    print(
        f"ratio whole/crop: step time {whole['step'] / crop['step']:.2f}x (aim <= 1.1x), "
        f"peak memory {whole['peak_mb'] / crop['peak_mb']:.2f}x, "
        f"disk {whole_mb / crop_mb:.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=Path("demo"))
    parser.add_argument("--iterations", type=int, default=None)
    parser.add_argument("--quick", action="store_true", help="fewer iterations")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="config override, e.g. training.precision=16-mixed (YAML value)",
    )
    parser.add_argument(
        "--view-only", action="store_true", help="only the whole-view against crop comparison"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(view_child(json.loads(args.child))))
        return
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
        size = base.preprocessing.patch_size[0] + 52  # a field of view wider than the patch
        make_study(data, (24, size, size))
        for scheme in () if args.view_only else SCHEMES:
            timer = StepTimer(warmup)
            cfg = base.model_copy(update={"scheme": scheme})
            train_run(cfg, data, Path(tmp) / scheme, progress=False, callbacks=[timer])
            step = sum(timer.steps) / len(timer.steps)
            wait = sum(timer.waits) / max(1, len(timer.waits))
            results[scheme] = (step, wait)
        view_comparison(base, data, Path(tmp), warmup)
    if args.view_only:
        return
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
