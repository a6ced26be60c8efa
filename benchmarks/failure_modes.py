"""Real-anatomy failure modes, reproduced on synthetic knees: one controlled variant at a time.

    python benchmarks/failure_modes.py                           # the packaged model
    python benchmarks/failure_modes.py --runs before=OLD,after=pretrained --subjects 4

Each held-out knee (``subject_params("knee", "test", i, SEED)``) is rendered as its typical self
and as each variant of :mod:`jointseg.synth.variants` (a long field up the femoral shaft, closed
physes with a scar, a large Hoffa's fat pad, the fibula at the stack's edge, a T1 contrast), then
segmented by each run with the knee's domain given, as ``jointseg predict RUN SCAN --domain knee``
does (the run's postprocessing included), and recognized as ``--domain auto`` does (right,
refused or wrong). Measured per scan: Dice per bone; the femoral shaft's
sensitivity (true femur voxels in the upper half of its extent that are predicted femur); the
patella predicted outside the true patella (grown by 2 voxels), relative to the true patella's
volume. Written: ``OUT/failure_modes.json`` (every scan) and ``OUT/failure_modes.md`` (means).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from jointseg.utils.atomic import atomic_write_json, atomic_write_text  # noqa: E402

SEED = 1234  # held-out subjects drawn for this benchmark only
MODES = ("typical", "long_field", "closed_physes", "large_fat_pad", "bone_at_edge",
         "foreign_contrast")  # fmt: skip
BONES = ("femur", "tibia", "patella", "fibula")
RESULTS = ROOT / "benchmarks" / "results" / "failure_modes"


def render(index: int, mode: str, scale: float = 1.0):
    """(image, label array) of held-out knee ``index`` in variant ``mode``."""
    from jointseg.data.io import array_to_image
    from jointseg.synth.generate import subject_params
    from jointseg.synth.synthesis import synthesize_subject
    from jointseg.synth.variants import variant

    params, protocol = variant(subject_params("knee", "test", index, SEED), mode)
    volume = synthesize_subject(params, scale, protocol)
    g = volume.geometry
    image = array_to_image(volume.image, spacing=g.spacing, origin=g.origin,
                           direction=g.direction.ravel())  # fmt: skip
    return image, volume.label


def knee_scores(predicted: np.ndarray, truth: np.ndarray, structures: dict[str, int]) -> dict:
    """Dice per bone (None when the reference lacks it), the femoral shaft's sensitivity (the
    upper half of the femur) and the patella predicted outside the patella grown by 2 voxels
    (share of its volume): :mod:`jointseg.evaluation.regions`."""
    from jointseg.data.dice import dice
    from jointseg.evaluation.regions import far_part_sensitivity, outside_share

    scores: dict[str, float | None] = {
        name: round(dice(predicted == value, truth == value), 4) if (truth == value).any() else None
        for name, value in structures.items()
    }
    shaft = far_part_sensitivity(predicted, truth, structures["femur"])
    outside = outside_share(predicted, truth, structures["patella"])
    scores["femur_shaft_sensitivity"] = None if shaft is None else round(shaft, 4)
    scores["patella_outside"] = None if outside is None else round(outside, 4)
    return scores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="pretrained=pretrained",
                        help="NAME=RUN pairs, comma separated")  # fmt: skip
    parser.add_argument("--subjects", type=int, default=4)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument(
        "--out", type=Path, default=ROOT / "benchmarks" / "results" / "failure_modes"
    )
    args = parser.parse_args(argv)

    import SimpleITK as sitk
    from tqdm import tqdm

    from jointseg.inference.packaged import resolve_run
    from jointseg.inference.postprocess import Postprocessing
    from jointseg.inference.predictor import Predictor

    runs = dict(item.split("=", 1) for item in args.runs.split(","))
    modes = args.modes.split(",")
    predictors = {name: Predictor.from_run(run) for name, run in runs.items()}
    steps = {name: Postprocessing.load(resolve_run(run)) for name, run in runs.items()}
    records = []
    bar = tqdm(total=len(modes) * args.subjects, desc="failure modes", unit="scan")
    for mode in modes:
        for index in range(args.subjects):
            started = time.perf_counter()
            image, truth = render(index, mode)
            for name, predictor in predictors.items():
                result = predictor.predict(image, domain="knee")
                label_map = result.label_map
                if steps[name] is not None:  # as `jointseg predict` does
                    label_map = steps[name].apply_image(label_map, "knee", result.structures)
                predicted = sitk.GetArrayFromImage(label_map)
                recognized = predictor.recognize(image, refuse=False).domain  # --domain auto
                records.append({"run": name, "mode": mode, "subject": index,
                                "recognized": recognized or "refused",
                                **knee_scores(predicted, truth, result.structures)})  # fmt: skip
            bar.set_postfix(seconds=round(time.perf_counter() - started))
            bar.update()
    bar.close()
    args.out.mkdir(parents=True, exist_ok=True)
    record = {"runs": runs, "seed": SEED, "subjects": args.subjects, "records": records}
    atomic_write_json(args.out / "failure_modes.json", record)
    table = summary_table(records, list(runs), modes)
    atomic_write_text(args.out / "failure_modes.md", table)
    print(table)
    return 0


def summary_table(records: list[dict], runs: list[str], modes: list[str]) -> str:
    """Mean of each measure per run and variant (Markdown)."""
    measures = [*BONES, "femur_shaft_sensitivity", "patella_outside"]
    lines = ["| run | variant | " + " | ".join(measures) + " | --domain auto |",
             "|---|---|" + "---|" * (len(measures) + 1)]  # fmt: skip
    for run in runs:
        for mode in modes:
            rows = [r for r in records if r["run"] == run and r["mode"] == mode]
            cells = []
            for m in measures:
                values = [r[m] for r in rows if r.get(m) is not None]
                cells.append(f"{np.mean(values):.3f}" if values else "-")
            outcomes = [r["recognized"] for r in rows]
            right = sum(o == "knee" for o in outcomes)
            refused = sum(o == "refused" for o in outcomes)
            auto = f"{right} right, {refused} refused, {len(outcomes) - right - refused} wrong"
            lines.append(f"| {run} | {mode} | " + " | ".join(cells) + f" | {auto} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
