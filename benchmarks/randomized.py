"""Contrast robustness: knee models trained on realistic scans only, or on realistic and
domain-randomized ones, scored on held-out knees of the realistic protocol and of a protocol
neither saw.

    python benchmarks/randomized.py --quick     # CPU: small volumes, a short schedule
    python benchmarks/randomized.py             # the demo's volumes and schedule
    python benchmarks/randomized.py --smoke     # tiny volumes, 2 steps: checks the script

The study (``jointseg synth``, knee only) holds the realistic dataset (sagittal PD-weighted fast
spin echo, fat suppressed: marrow and fat dark) and, with the same seed, its randomized
renderings (``--randomize``). The unseen protocol renders the realistic held-out subjects with
the protocol's geometry as T1-weighted spin echo without fat suppression (TR 550, TE 13 ms:
marrow and fat bright), through :func:`jointseg.synth.randomize.synthesize_randomized` with
the relaxation model's intensities (:func:`jointseg.synth.mr.signal_tables`). Runs (scheme
``individual``, the demo's network and augmentation):

- ``realistic``: the realistic training subjects only;
- ``mixed``: half of the patches from the randomized renderings (``randomized_fraction`` 0.5);
- ``mixed+aug`` (without ``--quick``, or with ``--runs``): also the contrast augmentations
  (``AUGMENTATION``: histogram shift, contrast, inversion, low resolution).

Each run's model predicts every held-out subject of both protocols (domain given, no
postprocessing); Dice per bone against the exact labels. Printed and written to ``--out``
(default benchmarks/out/randomized/): ``dice.csv`` (one row per run, protocol, case, bone) and
``summary.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import pandas as pd

QUICK = {"subjects": 6, "test": 4, "scale": 0.5, "epochs": 4, "iterations": 30, "spacing": 1.2}
SMOKE = {"subjects": 2, "test": 1, "scale": 0.2, "epochs": 1, "iterations": 2, "spacing": 2.0}
FULL = {"subjects": 15, "test": 5, "scale": 1.0, "epochs": 6, "iterations": 40, "spacing": 0.9}
AUGMENTATION = {
    "histogram_shift_points": 6,
    "contrast_range": [0.7, 1.4],
    "invert_probability": 0.2,
    "low_resolution_zoom": [0.4, 0.9],
}
UNSEEN = {"sequence": "se", "tr": 550.0, "te": 13.0, "flip": 90.0}  # T1 SE, no fat suppression


def unseen_rendering(params):
    """The realistic geometry with T1 spin-echo intensities (relative to the brightest)."""
    from jointseg.synth import phantom as ph
    from jointseg.synth.mr import signal_tables
    from jointseg.synth.randomize import sample_rendering

    water, fat, texture = signal_tables(
        UNSEEN["sequence"], UNSEEN["tr"], UNSEEN["te"], UNSEEN["flip"], params.tissue_jitter
    )
    fat_signal = float(fat[ph.FAT]) / max(float(params.tissue_jitter.get("fat", 1.0)), 1e-6)
    top = max(float(water.max()), fat_signal)
    return dataclasses.replace(
        sample_rendering(params, geometry=False),
        water=[float(v) / top for v in water],
        fat=fat_signal / top,
        texture=[float(v) for v in texture],
        blur=0.5,
        bias=0.15,
        snr=14.0 * 0.5 / max(float(water[ph.MUSCLE]) / top, 1e-3),  # muscle SNR 14
        motion=0.0,
        coil=None,
        gain=1500.0,
    )


def make_data(out: Path, setting: dict, seed: int, jobs: int) -> tuple[Path, Path]:
    """(study with realistic and randomized knees, study with the unseen-protocol test knees)."""
    from jointseg.data.io import array_to_image, write_image
    from jointseg.data.manifest import load_manifest, write_manifest
    from jointseg.synth.generate import subject_params, synthesize_study
    from jointseg.synth.randomize import synthesize_randomized

    study, unseen = out / "study", out / "unseen"
    marker = out / "data.json"
    wanted = {"setting": setting, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text(encoding="utf-8")) == wanted:
        return study, unseen
    shutil.rmtree(study, ignore_errors=True)
    shutil.rmtree(unseen, ignore_errors=True)
    for randomize in (False, True):
        synthesize_study(
            study,
            setting["subjects"],
            setting["test"],
            ["knee"],
            seed,
            jobs,
            False,
            scale=setting["scale"],
            progress=False,
            randomize=randomize,
        )
    folder = unseen / "Dataset002_Knee"
    write_manifest(folder, load_manifest(study / "Dataset002_Knee"))
    for index in range(setting["test"]):
        params = subject_params("knee", "test", index, seed)
        volume = synthesize_randomized(params, unseen_rendering(params), setting["scale"])
        geometry = volume.geometry
        info = dict(
            spacing=geometry.spacing, origin=geometry.origin, direction=geometry.direction.ravel()
        )
        case = params.case_id
        write_image(
            array_to_image(volume.image, **info), folder / "imagesTs" / f"{case}_0000.nii.gz"
        )
        write_image(array_to_image(volume.label, **info), folder / "labelsTs" / f"{case}.nii.gz")
    marker.write_text(json.dumps(wanted), encoding="utf-8")
    return study, unseen


def run_config(name: str, setting: dict, seed: int):
    from jointseg.config import load_config

    data = load_config("demo").model_dump(mode="json")
    if name == "mixed+aug":
        data["augmentation"].update(AUGMENTATION)
    data["name"] = f"randomized-{name}"
    data["scheme"] = "individual"
    data["datasets"] = [
        {
            "name": "knee",
            "folder": "Dataset002_Knee",
            "randomized_folder": "Dataset102_KneeRandomized" if name != "realistic" else None,
        }
    ]
    data["preprocessing"]["target_spacing"] = setting["spacing"]
    training = data["training"]
    training.update(
        epochs=setting["epochs"],
        iterations_per_epoch=setting["iterations"],
        randomized_fraction=0.0 if name == "realistic" else 0.5,
        seed=seed,
    )
    data["regularization"]["shape_prior"]["steps"] = 50
    from jointseg.config import config_from_dict

    return config_from_dict(data, f"benchmark run {name}")


def score(run: Path, studies: dict[str, Path]) -> list[dict]:
    """Dice per held-out case and bone of both protocols."""
    from jointseg.data.io import read_image
    from jointseg.data.manifest import list_cases, load_manifest
    from jointseg.evaluation.metrics import score_case
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run)
    rows = []
    for protocol, study in studies.items():
        folder = study / "Dataset002_Knee"
        structures = load_manifest(folder).structures
        for case in list_cases(folder, "test"):
            prediction = predictor.predict(read_image(case.image), "knee").label_map
            for row in score_case(prediction, read_image(case.label), structures):
                rows.append(
                    {
                        "protocol": protocol,
                        "case": case.case_id,
                        **{k: row[k] for k in ("structure", "dice")},
                    }
                )
    return rows


def markdown(table: pd.DataFrame) -> str:
    """A pipe table of mean Dice, one row per (run, protocol)."""
    lines = ["| run | protocol | " + " | ".join(table.columns) + " |"]
    lines.append("|---|---|" + "---|" * len(table.columns))
    for (run, protocol), values in table.iterrows():
        cells = " | ".join(f"{v:.3f}" for v in values)
        lines.append(f"| {run} | {protocol} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="tiny: checks the script runs")
    parser.add_argument("--runs", help="comma-separated runs (default: all of the setting)")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "out" / "randomized")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    from jointseg.workflows.train import train_run

    setting = SMOKE if args.smoke else QUICK if args.quick else FULL
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    study, unseen = make_data(out, setting, args.seed, args.jobs)
    print(f"[randomized] data ready in {time.perf_counter() - started:.0f} s", flush=True)
    names = ["realistic", "mixed"] + ([] if args.quick or args.smoke else ["mixed+aug"])
    if args.runs:
        names = [name.strip() for name in args.runs.split(",") if name.strip()]
        unknown = set(names) - {"realistic", "mixed", "mixed+aug"}
        if unknown:
            parser.error(f"unknown runs {sorted(unknown)}")
    rows = []
    for name in names:
        run = out / f"run-{name}"
        if not (run / "run.json").is_file():
            shutil.rmtree(run, ignore_errors=True)
            began = time.perf_counter()
            train_run(run_config(name, setting, args.seed), study, run, progress=False)
            print(f"[randomized] {name} trained in {time.perf_counter() - began:.0f} s", flush=True)
        for row in score(run, {"realistic": study, "unseen T1 SE": unseen}):
            rows.append({"run": name, **row})
    frame = pd.DataFrame(rows)
    frame.to_csv(out / "dice.csv", index=False)
    per_bone = frame.pivot_table(index=["run", "protocol"], columns="structure", values="dice")
    per_bone["mean"] = frame.groupby(["run", "protocol"])["dice"].mean()
    text = f"setting {json.dumps(setting)}, seed {args.seed}\n\n{markdown(per_bone)}\n"
    (out / "summary.md").write_text(text, encoding="utf-8")
    print(text, flush=True)
    print(f"[randomized] {time.perf_counter() - started:.0f} s in all", flush=True)


if __name__ == "__main__":
    main()
