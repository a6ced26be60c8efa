"""Segmentation quality with scarce training data: every scheme and nnU-Net v2 2D, held-out set.

    python benchmarks/quality.py --quick        # CPU: demo config, short schedule, 5 subjects/joint
    python benchmarks/quality.py                # GPU: paper config, 5 and 10 subjects/joint
    python benchmarks/quality.py --no-nnunet    # jointseg schemes only

A synthetic study (``jointseg synth``) with the largest number of training subjects per joint
and ``--test-subjects`` held-out subjects per joint is written once; each setting (e.g. 5 and
10 training subjects) is a folder of links to its first N training subjects and to the same
test subjects. In each setting:

- every scheme (individual, transfer, shared, mtmd, mtmd+con, full) is trained with the config
  (``jointseg.workflows.train.train_run``; its epoch budget: ``training.epochs`` x
  ``training.iterations_per_epoch`` batches per network) and evaluated
  (``jointseg.evaluation.evaluate.evaluate_run``; rows of ``metrics.csv`` with subset ``test``);
- nnU-Net v2 (its own virtualenv, ``benchmarks/nnunet_env.sh``) reads the same dataset folders
  (linked under ``nnUNet_raw``), plans and preprocesses the ``2d`` configuration with its
  defaults, trains fold 0 with the same training/validation subjects as the jointseg runs
  (``splits_final.json``) using the short-budget trainer, and predicts ``imagesTs``
  (``nnUNetv2_predict``, with its default mirroring); its label maps are scored with
  ``jointseg.evaluation.metrics.score_case`` against ``labelsTs``.

nnU-Net's budget (``--nnunet-budget``): ``cpu`` (default) gives it the CPU time of jointseg
``full``'s training (train_run in this process: shape-prior pre-training, training, validation;
``getrusage`` user + system, all threads) split evenly over the datasets, one nnU-Net network
per dataset, counted by the trainer as its own process time (augmentation in-process,
``nnUNet_n_proc_DA=0``), so that other load on a shared machine stretches neither side; ``time``
does the same with wall-clock seconds; ``iterations`` gives each nnU-Net network as many
optimizer steps as one jointseg network (``training.epochs x training.iterations_per_epoch``)
at nnU-Net's own batch size. ``--quick`` shortens the demo schedule (QUICK_OVERRIDES:
2 epochs of 40 batches per network whatever its number of datasets, 1 transfer pre-training
epoch, 200 shape-prior steps) and predicts
without nnU-Net's mirroring, as jointseg evaluates without flips (``evaluation.tta``).

Printed and written to ``--out`` (default benchmarks/out/quality/): Dice per structure
(mean +- SD over the test subjects) per scheme, and paired two-sided Wilcoxon signed-rank tests
of ``full`` against every other scheme per structure (subjects paired), Holm-adjusted over all
tests of a setting. Files: ``dice.csv`` (one row per setting, scheme, subject and structure),
``summary.csv`` (means, SDs, tests), ``timings.csv``, ``quality.md``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from _nnunet import NnUNet  # noqa: E402

SCHEMES = ("individual", "transfer", "shared", "mtmd", "mtmd+con", "full")
REFERENCE = "full"
NNUNET = "nnU-Net 2d"
JOINTS = ("ankle", "knee", "shoulder")
#: --quick: the demo config with a shorter schedule, so that all six schemes fit an hour.
QUICK_OVERRIDES = {
    "training.iterations_per_dataset": False,  # every network 80 steps, as measured
    "training.epochs": 2,
    "training.transfer_pretrain_epochs": 1,
    "regularization.shape_prior.steps": 200,
}


# -- data ------------------------------------------------------------------------------------
def make_study(folder: Path, subjects: int, test_subjects: int, seed: int, jobs: int) -> Path:
    """The synthetic study, reused when ``folder`` holds that very study
    (:func:`jointseg.synth.generate.ensure_study`)."""
    from jointseg.synth.generate import ensure_study

    if ensure_study(folder, subjects, test_subjects, list(JOINTS), seed, jobs, False):
        print(f"[quality] synthesized {subjects}+{test_subjects} subjects per joint into {folder}")
    else:
        print(f"[quality] reusing the study in {folder}")
    return folder


def make_view(study: Path, view: Path, subjects: int) -> Path:
    """A study folder holding links to the first ``subjects`` training subjects of each
    dataset of ``study`` and to all of its test subjects."""
    from jointseg.data.manifest import list_cases, load_manifest, write_manifest

    for dataset in sorted(p for p in study.iterdir() if (p / "dataset.json").is_file()):
        target = view / dataset.name
        train = list_cases(dataset, "train")[:subjects]
        test = list_cases(dataset, "test")
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        for case in train + test:
            for path in (case.image, case.label):
                link = target / path.parent.name / path.name
                if not link.is_symlink():
                    link.symlink_to(path.resolve())
        manifest = load_manifest(dataset).model_copy(
            update={"numTraining": len(train), "numTest": len(test)}
        )
        write_manifest(target, manifest)
    return view


# -- jointseg --------------------------------------------------------------------------------
def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_scheme(cfg, scheme: str, data: Path, run: Path) -> dict[str, float]:
    """Train (unless done) and evaluate one scheme; returns its training wall and CPU seconds
    (CPU: this process, all threads; training loads data in-process on the CPU)."""
    from jointseg.evaluation.evaluate import evaluate_run
    from jointseg.workflows.train import train_run

    timing = run / "train_seconds.json"
    if not timing.is_file():
        if run.exists():
            shutil.rmtree(run)  # an interrupted run: start it again
        print(f"[quality] training {scheme} -> {run}", flush=True)
        started, cpu = time.perf_counter(), _cpu_seconds()
        train_run(cfg.model_copy(update={"scheme": scheme}), data, run, progress=False)
        seconds = {"seconds": time.perf_counter() - started, "cpu_seconds": _cpu_seconds() - cpu}
        timing.write_text(json.dumps(seconds))
    seconds = json.loads(timing.read_text())
    if not (run / "evaluation" / "metrics.csv").is_file():
        print(f"[quality] evaluating {scheme}", flush=True)
        evaluate_run(run, progress=False)
    return seconds


def scheme_rows(run: Path, scheme: str) -> pd.DataFrame:
    frame = pd.read_csv(run / "evaluation" / "metrics.csv")
    frame = frame[frame["subset"] == "test"].copy()
    frame["scheme"] = scheme
    return frame[["scheme", "dataset", "case", "structure", "dice", "hd95"]]


# -- nnU-Net ---------------------------------------------------------------------------------
def run_nnunet(
    nn: NnUNet,
    cfg,
    data: Path,
    folder: Path,
    reference_run: Path,
    budget: dict,
    device: str,
    mirroring: bool,
    parallel: int = 1,
) -> tuple[pd.DataFrame, list[dict]]:
    """Plan, preprocess, train and predict every dataset of the setting with nnU-Net 2d."""
    import SimpleITK as sitk

    from jointseg.data.manifest import list_cases, load_manifest
    from jointseg.evaluation.metrics import score_case

    info = json.loads((reference_run / "run.json").read_text())
    folders = {d.name: d.folder for d in cfg.datasets}
    ids = {name: nn.add_dataset(data / f) for name, f in folders.items()}
    logs = folder / "logs"
    if not all((nn.preprocessed / nn.dataset_name(i) / "nnUNetPlans.json").is_file()
               for i in ids.values()):  # fmt: skip
        print("[quality] nnU-Net: plan and preprocess (2d)", flush=True)
        nn.plan_and_preprocess(list(ids.values()), logs / "plan_and_preprocess.log")

    def train(name: str) -> dict:
        dataset_id = ids[name]
        nn.write_splits(dataset_id, info["training_cases"][name], info["validation_cases"][name])
        record_path = folder / f"train_{name}.json"
        if not record_path.is_file():
            dataset_budget = dict(budget)
            if "epochs_from_iterations" in dataset_budget:  # same optimizer steps as jointseg
                steps = dataset_budget.pop("epochs_from_iterations")
                per_epoch = dataset_budget["iterations"]
                dataset_budget["epochs"] = max(1, math.ceil(steps / per_epoch))
            print(f"[quality] nnU-Net: training {name} ({dataset_budget})", flush=True)
            record = nn.train(dataset_id, logs / f"train_{name}.log", dataset_budget, device)
            record_path.write_text(json.dumps(record, indent=1))
        return json.loads(record_path.read_text())

    def predict(name: str) -> dict:
        cases = list_cases(data / folders[name], "test")
        pred_dir = folder / "predictions" / name
        stats_path = folder / f"predict_{name}.json"
        if not stats_path.is_file() or not all(
            (pred_dir / f"{c.case_id}.nii.gz").is_file() for c in cases
        ):
            print(f"[quality] nnU-Net: predicting {name} imagesTs", flush=True)
            stats = nn.predict(
                ids[name],
                data / folders[name] / "imagesTs",
                pred_dir,
                logs / f"predict_{name}.log",
                mirroring=mirroring,
                device=device,
            )
            stats_path.write_text(json.dumps(stats))
        return json.loads(stats_path.read_text())

    # One process per dataset at a time; with a CPU-time budget, running the datasets side by
    # side changes no network's budget, only the wall-clock of the whole.
    names = list(ids)
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        records = dict(zip(names, pool.map(train, names), strict=True))
    with ThreadPoolExecutor(max_workers=parallel) as pool:
        predictions = dict(zip(names, pool.map(predict, names), strict=True))
    rows, timings = [], []
    for name in names:
        cases = list_cases(data / folders[name], "test")
        timings.append(
            {"dataset": name, **nn.plan_2d(ids[name]), **records[name],
             "predict_seconds": predictions[name]["seconds"], "test_cases": len(cases)}
        )  # fmt: skip
        pred_dir = folder / "predictions" / name
        structures = load_manifest(data / folders[name]).structures
        for case in cases:
            if case.label is None:
                continue
            predicted = sitk.ReadImage(str(pred_dir / f"{case.case_id}.nii.gz"))
            reference = sitk.ReadImage(str(case.label))
            predicted = sitk.Cast(predicted, reference.GetPixelID())
            for row in score_case(predicted, reference, structures):
                rows.append(
                    {
                        "scheme": NNUNET,
                        "dataset": name,
                        "case": case.case_id,
                        "structure": row["structure"],
                        "dice": row["dice"],
                        "hd95": row["hd95"],
                    }
                )
    return pd.DataFrame(rows), timings


# -- statistics and tables -------------------------------------------------------------------
def summarize(frame: pd.DataFrame, schemes: list[str]) -> pd.DataFrame:
    """Mean, SD and the Wilcoxon test of the reference against every scheme, per structure;
    Holm over all tests of a setting."""
    from jointseg.evaluation.statistics import describe, holm, paired_test

    out = []
    for setting, by_setting in frame.groupby("setting", sort=False):
        rows = []
        for (dataset, structure), group in by_setting.groupby(["dataset", "structure"], sort=False):
            wide = group.pivot_table(index="case", columns="scheme", values="dice")
            for scheme in schemes:
                if scheme not in wide:
                    continue
                stats = describe(wide[scheme].to_numpy())
                row = {"setting": setting, "scheme": scheme, "dataset": dataset,
                       "structure": structure, **stats}  # fmt: skip
                if scheme != REFERENCE and REFERENCE in wide:
                    test = paired_test(wide[REFERENCE].to_numpy(), wide[scheme].to_numpy())
                    row.update({f"test_{k}": v for k, v in test.as_dict().items()})
                rows.append(row)
        part = pd.DataFrame(rows)
        if "test_p_value" in part:
            part["test_p_holm"] = holm(part["test_p_value"].to_numpy(dtype=float))
        out.append(part)
    return pd.concat(out, ignore_index=True)


def _cell(mean: float, sd: float) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    return f"{mean:.3f} ± {sd:.3f}" if sd == sd and sd is not None else f"{mean:.3f}"


def markdown(summary: pd.DataFrame, frame: pd.DataFrame, timings: pd.DataFrame, notes: list[str]):
    lines = []
    for setting, part in summary.groupby("setting", sort=False):
        structures = list(dict.fromkeys(zip(part["dataset"], part["structure"], strict=True)))
        schemes = list(dict.fromkeys(part["scheme"]))
        header = ["scheme", *[f"{d} {s}" for d, s in structures], "mean", "train s (wall / CPU)"]
        lines += [f"\n### {setting}: Dice on the held-out test subjects (mean ± SD)\n",
                  "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]  # fmt: skip
        sub = frame[frame["setting"] == setting]
        for scheme in schemes:
            cells = []
            for dataset, structure in structures:
                r = part[(part["scheme"] == scheme) & (part["dataset"] == dataset)
                         & (part["structure"] == structure)]  # fmt: skip
                cells.append(_cell(r["mean"].iloc[0], r["sd"].iloc[0]) if len(r) else "–")
            # mean over structures per subject, then mean ± SD over subjects
            per_case = sub[sub["scheme"] == scheme].groupby(["dataset", "case"])["dice"].mean()
            overall = _cell(per_case.mean(), per_case.std(ddof=1))
            t = timings[(timings["setting"] == setting) & (timings["scheme"] == scheme)]
            seconds = (
                f"{t['train_seconds'].iloc[0]:.0f} / {t['cpu_seconds'].iloc[0]:.0f}"
                if len(t)
                else "–"
            )
            lines.append(f"| {scheme} | " + " | ".join(cells) + f" | {overall} | {seconds} |")
        tests = part[part["scheme"] != REFERENCE]
        if "test_p_holm" in tests:
            lines += [f"\n### {setting}: `{REFERENCE}` against each scheme, Wilcoxon signed-rank "
                      "(two-sided, paired by subject): median Δ Dice (full − scheme), "
                      "p (Holm-adjusted p)\n",
                      "| scheme | " + " | ".join(f"{d} {s}" for d, s in structures) + " |",
                      "|" + "---|" * (len(structures) + 1)]  # fmt: skip
            for scheme in [s for s in schemes if s != REFERENCE]:
                cells = []
                for dataset, structure in structures:
                    r = tests[(tests["scheme"] == scheme) & (tests["dataset"] == dataset)
                              & (tests["structure"] == structure)]  # fmt: skip
                    if not len(r) or pd.isna(r["test_p_value"].iloc[0]):
                        cells.append("–")
                        continue
                    cells.append(
                        f"{r['test_median_difference'].iloc[0]:+.3f}, "
                        f"{r['test_p_value'].iloc[0]:.2g} "
                        f"({r['test_p_holm'].iloc[0]:.2g})"
                    )
                lines.append(f"| {scheme} | " + " | ".join(cells) + " |")
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


# -- main ------------------------------------------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CPU profile: demo config, 5 training subjects per joint",
    )
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="default: the shipped demo config with --quick, else paper",
    )
    parser.add_argument(
        "--subjects",
        default=None,
        help="training subjects per joint, comma-separated (quick: 5; else 5,10)",
    )
    parser.add_argument(
        "--test-subjects",
        type=int,
        default=None,
        help="held-out subjects per joint (quick: 4; else 8)",
    )
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument(
        "--encoder-weights",
        default="none",
        help="model.encoder_weights: none, or a local torchvision ResNet file",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override (YAML value), repeatable",
    )
    parser.add_argument("--no-nnunet", action="store_true", help="skip the nnU-Net rows")
    parser.add_argument("--nnunet-budget", choices=("cpu", "time", "iterations"), default="cpu")
    parser.add_argument(
        "--nnunet-iterations-per-epoch",
        type=int,
        default=None,
        help="nnU-Net iterations per epoch (quick: 10; else 250)",
    )
    parser.add_argument(
        "--nnunet-mirroring",
        choices=("config", "on", "off"),
        default="config",
        help="nnU-Net's test-time mirroring; 'config': as the jointseg config's evaluation.tta",
    )
    parser.add_argument(
        "--nnunet-parallel",
        type=int,
        default=1,
        help="nnU-Net trainings/predictions run side by side (one per dataset at most)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="synth worker processes")
    parser.add_argument("--out", type=Path, default=HERE / "out" / "quality")
    args = parser.parse_args()

    import torch
    import yaml

    from jointseg.config import load_config

    quick = args.quick
    config = args.config or ("demo" if quick else "paper")
    settings = [int(s) for s in (args.subjects or ("5" if quick else "5,10")).split(",")]
    test_subjects = args.test_subjects or (4 if quick else 8)
    schemes = [s.strip() for s in args.schemes.split(",") if s.strip()]
    # full first: it sets nnU-Net's budget (without it there is neither nnU-Net nor tests)
    schemes = sorted(schemes, key=lambda s: s != REFERENCE)
    if REFERENCE not in schemes and not args.no_nnunet:
        raise SystemExit(f"nnU-Net's budget is {REFERENCE}'s: add it to --schemes or --no-nnunet")
    overrides = {"model.encoder_weights": args.encoder_weights}
    if quick:
        overrides.update(QUICK_OVERRIDES)
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    cfg = load_config(config, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    tta = bool(cfg.evaluation.tta)
    mirroring = {"config": tta, "on": True, "off": False}[args.nnunet_mirroring]
    per_epoch = args.nnunet_iterations_per_epoch or (10 if quick else 250)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)

    study = make_study(out / "study", max(settings), test_subjects, args.seed, args.jobs)
    nn, why = (None, "--no-nnunet given") if args.no_nnunet else NnUNet.find(out / "nnunet")
    notes = []
    if nn is None:
        notes.append(f"nnU-Net rows skipped: {why}")
        print(f"[quality] nnU-Net rows SKIPPED: {why}", flush=True)

    frames, timing_rows, nnunet_records = [], [], []
    for n in settings:
        setting = f"{n} training subjects per joint"
        view = make_view(study, out / f"n{n}" / "data", n)
        from jointseg.data.cache import preprocess_study

        preprocess_study(cfg, view)  # the slice cache, outside every scheme's timing
        seconds = {}
        for scheme in schemes:
            run = out / f"n{n}" / "runs" / scheme.replace("+", "_")
            seconds[scheme] = run_scheme(cfg, scheme, view, run)
            frames.append(scheme_rows(run, scheme).assign(setting=setting))
            timing_rows.append(
                {"setting": setting, "scheme": scheme,
                 "train_seconds": seconds[scheme]["seconds"],
                 "cpu_seconds": seconds[scheme]["cpu_seconds"]}
            )  # fmt: skip
            if scheme == REFERENCE and nn is not None:
                nn_folder = out / f"n{n}" / "nnunet"
                setting_nn = NnUNet(nn.venv, nn_folder, nn.version)
                if args.nnunet_budget in ("time", "cpu"):
                    key = "seconds" if args.nnunet_budget == "time" else "cpu_seconds"
                    budget = {key: seconds[REFERENCE][key] / len(cfg.datasets),
                              "iterations": per_epoch, "epochs": 1000,
                              "val_iterations": 2}  # fmt: skip
                else:
                    steps = cfg.training.epochs * cfg.training.iterations_per_epoch
                    budget = {"epochs_from_iterations": steps, "iterations": per_epoch,
                              "val_iterations": 2}  # fmt: skip
                try:
                    rows, records = run_nnunet(
                        setting_nn,
                        cfg,
                        view,
                        nn_folder,
                        run,
                        budget,
                        device,
                        mirroring,
                        args.nnunet_parallel,
                    )
                except RuntimeError as error:
                    notes.append(f"nnU-Net rows of '{setting}' skipped: {str(error)[:400]}")
                    print(f"[quality] nnU-Net FAILED, rows skipped: {error}", flush=True)
                else:
                    frames.append(rows.assign(setting=setting))
                    timing_rows.append(
                        {"setting": setting, "scheme": NNUNET,
                         "train_seconds": sum(r["seconds"] for r in records),
                         "cpu_seconds": sum(r["cpu_seconds"] for r in records)}
                    )  # fmt: skip
                    for r in records:
                        nnunet_records.append({"setting": setting, **r})
        frame = pd.concat(frames, ignore_index=True)
        frame.to_csv(out / "dice.csv", index=False)
    all_schemes = [*schemes, NNUNET]
    order = [s for s in ("individual", "transfer", "shared", "mtmd", "mtmd+con", "full", NNUNET)
             if s in all_schemes]  # fmt: skip
    summary = summarize(frame, order)
    summary.to_csv(out / "summary.csv", index=False)
    timings = pd.DataFrame(timing_rows)
    timings.to_csv(out / "timings.csv", index=False)
    if nnunet_records:
        pd.DataFrame(nnunet_records).to_json(
            out / "nnunet_training.json", orient="records", indent=1
        )
        for r in nnunet_records:
            notes.append(
                f"nnU-Net {r['dataset']} ({r['setting']}): 2d plan patch "
                f"{'x'.join(map(str, r['patch_size']))}, batch {r['batch_size']}, "
                f"{r['n_stages']} stages; trained {r['iterations']} iterations "
                f"({r['epochs']} epochs of {r['iterations_per_epoch']}) in {r['seconds']:.0f} s"
                f" ({r['cpu_seconds']:.0f} CPU s; budget {r['budget_seconds']:.0f} "
                f"{r['budget_clock']} s)"
                + f"; predicted its {r['test_cases']} test scans in {r['predict_seconds']:.0f} s"
            )
    notes.append(
        f"config {config.relative_to(ROOT) if config.is_relative_to(ROOT) else config} "
        f"(encoder_weights {args.encoder_weights}"
        + "".join(f", {k} {v}" for k, v in overrides.items() if k != "model.encoder_weights")
        + f"); {test_subjects} test subjects per joint; "
        f"device {device}; jointseg test-time flips: {tta}; nnU-Net budget: "
        f"{args.nnunet_budget}, test-time mirroring: {mirroring}"
    )
    text = markdown(summary, frame, timings, notes)
    (out / "quality.md").write_text(text)
    print(text)
    print(f"[quality] wrote {out}/quality.md, summary.csv, dice.csv, timings.csv")


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
