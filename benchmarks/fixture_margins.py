"""Margins of the trained-model bounds in the test suite, for one CPU-kernel setting and seed.

The prediction tests train (tests/tiny_model.py) a small model to a target validation Dice and bound
what it predicts. This script trains that fixture with ``--seed`` and prints every bounded
quantity beside its bound, with the margin left. Run it under other CPU kernels to see how
far the bounds are from failing on other machines:

    ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 \
        python benchmarks/fixture_margins.py --seeds 1
    python benchmarks/fixture_margins.py --seeds 0 1 2 --threads 2 --json out.json

``benchmarks/kernels.sh`` runs it under every setting this machine can emulate.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import tests.tiny_model as tp  # noqa: E402
from jointseg.inference.predictor import Predictor  # noqa: E402


def _min_dice(got: sitk.Image, want: sitk.Image, values) -> float:
    a, b = sitk.GetArrayFromImage(got), sitk.GetArrayFromImage(want)
    return min(tp.dice(a, b, v) for v in values)


def measure(seed: int) -> dict[str, tuple[float, float, str]]:
    """Each bounded quantity as (value, bound, direction) for a fixture trained with ``seed``."""
    rows: dict[str, tuple[float, float, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        run = tp.train_run(Path(tmp), seed=seed)
        meta = json.loads((run / "models" / "main" / "model.json").read_text(encoding="utf-8"))
        rows["training steps"] = (meta["metadata"]["steps"], tp.MAX_STEPS, "<=")
        rows["training seconds"] = (time.perf_counter() - start, float("inf"), "<=")
        predictor = Predictor.from_run(run, batch_size=8)
        for domain in tp.DOMAINS:
            values = tp.DOMAINS[domain].values()
            for scan_seed in (0, 1):
                image, truth = tp.make_scan(domain, scan_seed, direction=tp.OBLIQUE)
                prediction = predictor.predict(image, domain="auto")
                ok = prediction.domain == domain
                rows[f"{domain} {scan_seed} recognized"] = (float(ok), 1.0, ">=")
                rows[f"{domain} {scan_seed} confidence"] = (prediction.confidence, 0.9, ">")
                rows[f"{domain} {scan_seed} Dice"] = (
                    _min_dice(prediction.label_map, truth, values),
                    tp.DICE_BOUND,
                    ">",
                )
        tta = Predictor.from_run(run, tta=True, batch_size=7)
        image, truth = tp.make_scan("shoulder", 2)
        got = tta.predict(image, domain="shoulder").label_map
        rows["shoulder 2 TTA Dice"] = (_min_dice(got, truth, (3, 7)), tp.DICE_BOUND, ">")
        image, truth = tp.make_scan("knee", 7, direction=tp.OBLIQUE)
        got = predictor.predict(image, domain="auto").label_map
        rows["knee 7 femur Dice"] = (_min_dice(got, truth, (1,)), tp.DICE_BOUND, ">")
        rows["knee 7 femur mesh/label volume"] = (_mesh_ratio(got, 1), 0.05, "|1-x|<")
        (left, left_truth), (right, right_truth) = (
            tp.make_scan("knee", 11),
            tp.make_scan("knee", 12),
        )
        got = predictor.predict(tp.side_by_side(left, right), domain="knee").label_map
        truth = tp.side_by_side(left_truth, right_truth)
        rows["wide knee Dice"] = (_min_dice(got, truth, (1, 2)), tp.DICE_BOUND, ">")
        for name in tp.DOMAINS:
            for scan_seed in (36, 37, 22):
                decision = predictor.recognize(tp.make_scan(name, scan_seed)[0])
                ok = decision.domain == name
                rows[f"{name} {scan_seed} recognition"] = (float(ok), 1.0, ">=")
                ratio = decision.scores[1].distance / max(decision.scores[0].distance, 1e-12)
                rows[f"{name} {scan_seed} runner-up / winner distance"] = (ratio, 1.0, ">")
        for noise_seed in (0, 1, 2, 3):
            decision = predictor.recognize(tp.noise_scan(noise_seed), refuse=False)
            threshold = predictor.calibration.threshold
            rows[f"noise {noise_seed} distance / threshold"] = (
                decision.scores[0].distance / threshold,
                1.0,
                ">",
            )
    return rows


def measure_prior(seed: int) -> dict[str, tuple[float, float, str]]:
    """The shape auto-encoder fixture of tests/test_shape_prior.py, trained with ``seed``."""
    import test_shape_prior as tsp

    from jointseg.config import ShapePriorConfig
    from jointseg.training.shape_prior import train_shape_autoencoder

    cfg = ShapePriorConfig(
        steps=320, batch_size=16, lr=5e-3, base_channels=8, code_channels=16, depth=2, pool=1
    )
    _, report = train_shape_autoencoder(
        tsp.shapes(320, seed=seed), 4, cfg, seed=seed,
        validation_masks=tsp.shapes(64, seed=seed + 1), progress=False,
    )  # fmt: skip
    rows = {
        "prior validation Dice": (report["validation_dice"], 0.85, ">="),
        "prior training Dice": (report["train_dice"], 0.85, ">="),
        "prior smallest class Dice": (min(report["validation_dice_per_class"]), 0.7, ">="),
        "prior last / first loss": (
            report["loss_per_pass"][-1] / report["loss_per_pass"][0],
            0.5,
            "<",
        ),
    }
    return rows


_STUDY: dict[str, Path] = {}


def measure_recognition(seed: int) -> dict[str, tuple[float, float, str]]:
    """The slow recognition test (tests/test_recognition_synth.py) with training seed ``seed``.

    The study is synthesized once per process; each test scan's runner-up / winner distance is
    signed: negative when the scan went to the wrong joint.
    """
    import test_recognition_synth as trs

    from jointseg.data.manifest import list_cases

    if "study" not in _STUDY:
        _STUDY["root"] = Path(tempfile.mkdtemp(prefix="recognition-"))
        _STUDY["study"] = trs.synthesize(_STUDY["root"])
    run = trs.train(_STUDY["study"], _STUDY["root"] / f"seed{seed}", seed=seed)
    frame = _read_metrics(run)
    rows: dict[str, tuple[float, float, str]] = {
        "recognition training epochs": (len(frame), trs.MAX_EPOCHS, "<="),
        "recognition validation Dice": (frame[-1], trs.TARGET_DICE, ">="),
    }
    predictor = Predictor.from_run(run)
    for joint, folder in trs.JOINTS.items():
        for case in list_cases(_STUDY["study"] / folder, "test"):
            decision = predictor.recognize(case.image)
            ratio = decision.scores[1].distance / max(decision.scores[0].distance, 1e-12)
            rows[f"{case.case_id} runner-up / winner"] = (
                ratio if decision.domain == joint else -ratio,
                1.0,
                ">",
            )
    return rows


def _read_metrics(run: Path) -> list[float]:
    import csv

    with open(run / "logs" / "main" / "metrics.csv", encoding="utf-8") as handle:
        return [float(r["val/dice"]) for r in csv.DictReader(handle) if r.get("val/dice")]


FIXTURES = {"predict": measure, "prior": measure_prior, "recognition": measure_recognition}


def _mesh_ratio(label_map: sitk.Image, value: int) -> float:
    from jointseg.inference.meshes import Geometry, mask_to_mesh

    labels = sitk.GetArrayFromImage(label_map)
    mesh = mask_to_mesh(labels == value, Geometry.of(label_map))
    voxels = (labels == value).sum() * np.prod(label_map.GetSpacing())
    return float(mesh.volume / voxels)


def _margin(value: float, bound: float, direction: str) -> float:
    if direction == "|1-x|<":
        return bound - abs(1.0 - value)
    return value - bound if direction in (">", ">=") else bound - value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--fixtures", nargs="+", choices=sorted(FIXTURES), default=["predict"])
    parser.add_argument(
        "--threads", type=int, default=int(os.environ.get("JOINTSEG_TEST_THREADS", "1"))
    )
    parser.add_argument("--json", type=Path, default=None, help="Append the rows here.")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    setting = {
        key: os.environ.get(key, "")
        for key in ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")
    }
    setting["capability"] = torch.backends.cpu.get_cpu_capability()
    setting["threads"] = args.threads
    print(f"setting: {setting}")
    results = []
    for fixture, seed in ((f, s) for f in args.fixtures for s in args.seeds):
        rows = FIXTURES[fixture](seed)
        print(f"\nfixture {fixture}, seed {seed}")
        print(f"{'quantity':48s} {'value':>9s} {'bound':>9s} {'margin':>9s}")
        for name, (value, bound, direction) in rows.items():
            margin = _margin(value, bound, direction)
            print(f"{name:48s} {value:9.4f} {direction:>3s}{bound:6.3g} {margin:9.4f}")
        results.append({"setting": setting, "fixture": fixture, "seed": seed, "rows": rows})
    if args.json is not None:
        previous = json.loads(args.json.read_text()) if args.json.is_file() else []
        args.json.write_text(json.dumps(previous + results, indent=1))


if __name__ == "__main__":
    main()
