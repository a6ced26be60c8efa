"""The paper's experiment with statistical power: six schemes (and nnU-Net) cross-validated over
subjects, trained to their plateau, scored per bone, tested pairwise; a scarce-data curve.

    python benchmarks/paper.py --profile smoke     # minutes: the pipeline end to end
    python benchmarks/paper.py --profile cpu --workers 2   # about 2 h 10 min on 2 cores, no nnU-Net
    python benchmarks/paper.py --profile gpu       # configs/paper.yaml, the paper's scale
    python benchmarks/paper.py --profile cpu --estimate       # measured step times -> duration
    python benchmarks/paper.py --profile gpu --update-page    # tables into BENCHMARKS.md
    python benchmarks/paper.py --profile cpu --workers 2 --only curve --curve-schemes all \
        --curve-epochs 24                                     # the plateau check (3x the cap)

What it does, for a profile (PROFILES):

1. A synthetic study (``jointseg synth``'s default generator): ``subjects`` training subjects
   per joint (``imagesTr``) and ``test_subjects`` held-out ones (``imagesTs``).
2. Cross-validation over the training subjects (:func:`jointseg.data.splits.make_splits`, one
   splits file for every scheme and nnU-Net): fold k is a folder of links, ``cv/fold_k/data``,
   whose ``imagesTr`` holds the fold's training subjects and ``imagesTs`` its held-out ones.
   Every scheme trains there (:func:`jointseg.workflows.train.train_run`; its validation
   subjects, ``training.validation_fraction`` of the fold's training subjects, decide the
   plateau stop, the best checkpoint and the postprocessing) and is scored on the held-out
   subjects (:func:`jointseg.evaluation.evaluate.evaluate_run`, subset ``test``): every subject
   is tested exactly once, by every scheme.
3. The scarce-data curve: the first n training subjects per joint (``scarce``), every scheme,
   scored on the fixed ``imagesTs`` subjects.
4. The Dice-against-steps curve: each of ``curve_schemes`` (``--curve-schemes``) on fold 0
   without the plateau stop, to the cap, validated every epoch; the plot marks where the plateau
   rule stops. ``--curve-epochs N`` beyond the profile's cap is the plateau check: those
   networks (``curve_<N>ep/``) are scored on fold 0's held-out subjects against the fold's cv
   cells, per scheme and bone, with the ranking at both caps (``plateau_curve_<N>ep.md``).
5. nnU-Net v2 (if installed: ``benchmarks/nnunet_env.sh``; ``--install-nnunet`` runs it) on the
   same folds: its default 2d plan with the wall-clock of the longest-trained scheme of the fold,
   and a plan matched to jointseg's input trained to its own plateau (``_paper_nnunet.py``);
   with ``--workers`` the worker processes share its networks too.
6. Tables (``_paper_stats.py``) and figures (``_paper_plots.py``) into ``paper.md``.

Every cell (scheme x fold, scheme x training subjects, curve scheme, nnU-Net variant x fold)
keeps its run folder and ``cell.json`` (timings, epochs and steps per network) on disk; a
rerun skips finished cells and resumes an interrupted one from its last checkpoint, so the
benchmark can run in pieces (``--only cv|scarce|curve|nnunet`` runs one part). With
``--records DIR`` (``_paper_records.py``) each finished cell's few text files (record, config,
index, scores, training curves; no checkpoint) are copied into DIR as it finishes and restored
from it into an output folder that lacks them: kept in git (``results/paper/cells/<profile>``),
they let the pieces run on different machines.
Output: ``benchmarks/out/paper/<profile>/`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

import _paper_records  # noqa: E402
from _locks import claimed  # noqa: E402 (benchmarks/_locks.py)
from _page import markers, update_section  # noqa: E402
from _paper_records import CELL_FILE  # noqa: E402

SCHEMES = ("individual", "transfer", "shared", "mtmd", "mtmd+con", "full")
JOINTS = ("ankle", "knee", "shoulder")
PAGE_BEGIN, PAGE_END = markers("paper")
PARTS = ("cv", "scarce", "curve", "nnunet")
#: Figures of the run that updates BENCHMARKS.md (``--update-page``), kept in git.
PAGE_FIGURES = HERE / "results" / "paper"


@dataclass(frozen=True)
class Profile:
    """One size of the experiment; ``overrides`` are dotted config keys."""

    config: str
    overrides: dict
    subjects: int
    test_subjects: int
    folds: int
    scarce: tuple[int, ...]
    curve_schemes: tuple[str, ...]
    synth_scale: float = 1.0
    nnunet: dict = field(default_factory=dict)


# a network of several datasets stops once every dataset's validation Dice has plateaued: on the
# mean of the three joints (about 2 validation subjects each) the rule stopped networks whose knee
# was still learning (cpu profile, Dec 3 2026: mtmd+con 0.819 -> 0.846 mean Dice; BENCHMARKS.md)
PLATEAU = {
    "training.plateau_patience": 3,
    "training.plateau_min_delta": 0.002,
    "training.plateau_per_dataset": True,
}
PROFILES: dict[str, Profile] = {
    # the pipeline end to end in minutes: 4 small subjects per joint in 2 folds (each fold
    # trains on 1 subject and validates on 1), 2 steps an epoch
    "smoke": Profile(
        config="demo",
        overrides={
            "preprocessing.target_spacing": 1.8,
            "preprocessing.patch_size": [64, 64],
            "model.width": 0.125,
            "training.epochs": 2,
            "training.iterations_per_epoch": 2,
            "training.iterations_per_dataset": False,
            "training.batch_size": 4,
            "training.validation_every": 1,
            "training.validation_fraction": 0.34,
            "training.transfer_pretrain_epochs": 1,
            "training.plateau_patience": 1,
            "regularization.shape_prior.steps": 3,
        },
        subjects=4,
        test_subjects=1,
        folds=2,
        scarce=(2, 3),
        curve_schemes=("full",),
        synth_scale=0.3,
        nnunet={"iterations": 2, "epochs": 2, "val_iterations": 1, "patience": 1},
    ),
    # 2 cores, two workers of one thread each (``--workers 2``): the demo network on 1.2 mm
    # slices, 96-pixel patches, batch 8, to a plateau stop or a cap of 600 steps per dataset
    # (half width learnt twice as slowly: validation Dice 0.32 against 0.58 at 100 steps per
    # dataset; the cap: every scheme's validation Dice is flat from about 300-400 steps per
    # dataset on, and the ranking at 200 was not the ranking there; BENCHMARKS.md)
    "cpu": Profile(
        config="demo",
        overrides={
            **PLATEAU,
            "preprocessing.target_spacing": 1.2,
            "preprocessing.patch_size": [96, 96],
            "training.epochs": 24,
            "training.iterations_per_epoch": 25,
            "training.iterations_per_dataset": True,
            "training.batch_size": 8,
            "training.validation_every": 1,
            "training.transfer_pretrain_epochs": 12,
            # no stop before 300 steps per dataset, where the curves flatten: without it the
            # rule stopped single-joint networks at epochs 7-11 (val Dice 0.44-0.73)
            "training.plateau_min_epochs": 12,
            # the prior's reconstruction Dice on fold 0's validation masks: 0.34 at 150 steps
            # (4 of 8 bones erased), 0.89 at 600, 0.93 at 1500
            "regularization.shape_prior.steps": 600,
        },
        subjects=12,
        test_subjects=4,
        folds=3,
        scarce=(2, 4, 8, 12),
        curve_schemes=("full",),
        # nnU-Net matched: jointseg's cap of 600 steps per dataset (60 epochs of 10) unless
        # its EMA pseudo-Dice stalls 5 epochs after the first 10 (it starts near 0 for
        # several epochs); default: 2-step epochs in its time budget
        nnunet={
            "iterations": 10,
            "default_iterations": 2,
            "epochs": 60,
            "val_iterations": 2,
            "patience": 5,
            "min_epochs": 10,
        },
    ),
    # configs/paper.yaml: 100 epochs cap, validation every 5, equal steps per dataset
    "gpu": Profile(
        config="paper",
        # no stop before half the cap, as on the cpu profile (not measured on a GPU)
        overrides={
            **PLATEAU,
            "training.iterations_per_dataset": True,
            "training.plateau_min_epochs": 50,
        },
        subjects=12,
        test_subjects=8,
        folds=6,
        scarce=(2, 4, 8, 12),
        curve_schemes=SCHEMES,
        nnunet={"iterations": 250, "epochs": 1000, "val_iterations": 50, "patience": 50},
    ),
}


def parse_schemes(text: str) -> list[str]:
    """Comma-separated scheme names, or ``all`` for :data:`SCHEMES`."""
    if text.strip() == "all":
        return list(SCHEMES)
    return [s.strip() for s in text.split(",") if s.strip()]


def step_counts(profile, cfg, schemes: list[str]) -> dict[str, float]:
    """Optimizer steps of one setting at the cap: one-dataset, multi-dataset, prior."""
    t = cfg.training
    datasets = len(cfg.datasets)
    pre = t.transfer_pretrain_epochs or t.epochs
    single = multi = prior = 0.0
    for scheme in schemes:
        if scheme == "individual":
            single += datasets * t.epochs * t.iterations(1)
        elif scheme == "transfer":
            multi += datasets * pre * t.iterations(datasets - 1)
            single += datasets * t.epochs * t.iterations(1)
        else:
            multi += t.epochs * t.iterations(datasets)
            if scheme == "full":
                prior += cfg.regularization.shape_prior.steps
    return {"single": single, "multi": multi, "prior": prior}


# -- data ------------------------------------------------------------------------------------
def make_study(folder: Path, profile: Profile, seed: int, jobs: int) -> Path:
    """The synthetic study, reused when ``synth.json`` records the same counts, seed and scale."""
    from jointseg.synth.generate import synthesize_study

    record = folder / "synth.json"
    wanted = (profile.subjects, profile.test_subjects, seed, profile.synth_scale)
    if record.is_file():
        data = json.loads(record.read_text(encoding="utf-8"))
        if tuple(data.get(k) for k in ("subjects", "test_subjects", "seed", "scale")) == wanted:
            return folder
    print(f"[paper] synthesizing {profile.subjects}+{profile.test_subjects} subjects per joint")
    return synthesize_study(
        folder,
        profile.subjects,
        profile.test_subjects,
        list(JOINTS),
        seed,
        jobs,
        False,
        scale=profile.synth_scale,
        progress=False,
    )


def link_view(study: Path, view: Path, train: dict[str, list], test: dict[str, list]) -> Path:
    """A study folder of links: per dataset folder, ``train`` cases as its ``imagesTr`` and
    ``test`` cases (:class:`~jointseg.data.manifest.Case`) as its ``imagesTs``."""
    from jointseg.data.manifest import load_manifest, write_manifest

    for folder in sorted(train):
        target = view / folder
        for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        for split, cases in (("Tr", train[folder]), ("Ts", test[folder])):
            for case in cases:
                for kind, path in (("images", case.image), ("labels", case.label)):
                    link = target / f"{kind}{split}" / path.name
                    if not link.is_symlink():
                        link.symlink_to(path.resolve())
        manifest = load_manifest(study / folder).model_copy(
            update={"numTraining": len(train[folder]), "numTest": len(test[folder])}
        )
        write_manifest(target, manifest)
    return view


def fold_views(study: Path, out: Path, folds: int, seed: int) -> list[Path]:
    """One view per fold of the study's subjects (the same splits for every scheme)."""
    from jointseg.data.manifest import list_cases
    from jointseg.data.splits import dataset_folders, make_splits
    from jointseg.utils.atomic import atomic_write_json

    splits_path = out / "splits.json"
    if not splits_path.is_file():
        atomic_write_json(splits_path, make_splits(study, folds, seed))
    splits = json.loads(splits_path.read_text(encoding="utf-8"))
    views = []
    for fold in range(folds):
        train, test = {}, {}
        for dataset in dataset_folders(study):
            cases = {c.case_id: c for c in list_cases(dataset, "train")}
            entry = splits["datasets"][dataset.name][fold]
            train[dataset.name] = [cases[c] for c in entry["train"]]
            test[dataset.name] = [cases[c] for c in entry["validation"]]
        views.append(link_view(study, out / f"fold_{fold}" / "data", train, test))
    return views


def scarce_view(study: Path, out: Path, subjects: int) -> Path:
    """The first ``subjects`` training subjects per joint and every held-out subject."""
    from jointseg.data.manifest import list_cases
    from jointseg.data.splits import dataset_folders

    train, test = {}, {}
    for dataset in dataset_folders(study):
        train[dataset.name] = list_cases(dataset, "train")[:subjects]
        test[dataset.name] = list_cases(dataset, "test")
    return link_view(study, out / f"n{subjects}" / "data", train, test)


# -- cells -----------------------------------------------------------------------------------
def run_workers(argv: list[str], workers: int) -> None:
    """Run the cells in ``workers`` processes of this script (``--worker``: it ignores
    ``--workers`` and returns before the report), one torch thread each, which claim cells as
    they go; raise if one fails."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, str(Path(__file__).resolve()), *argv, "--worker"]
    print(f"[paper] {workers} worker processes of one thread each", flush=True)
    processes = [subprocess.Popen(command, env=env) for _ in range(workers)]
    codes = [process.wait() for process in processes]
    if any(codes):
        raise SystemExit(f"[paper] a worker failed (exit codes {codes}); rerun to resume")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def network_progress(cfg, run: Path) -> dict[str, dict]:
    """Per trained network: epochs run, optimizer steps, steps per dataset, best val Dice, and
    whether it stopped before the cap."""
    from jointseg.training.curves import read_metrics
    from jointseg.training.schemes import plan_epochs, plan_scheme

    result = {}
    for plan in plan_scheme(cfg.scheme, cfg.domain_names):
        frame = read_metrics(run, plan.name)
        if frame is None or "epoch" not in frame:
            continue
        cap = plan_epochs(cfg.training, plan)
        epochs = int(frame["epoch"].max()) + 1
        per_epoch = cfg.training.iterations(len(plan.domains))
        dice = frame["val/dice"].dropna() if "val/dice" in frame else pd.Series(dtype=float)
        result[plan.name] = {
            "epochs": epochs,
            "cap_epochs": cap,
            "steps": epochs * per_epoch,
            "steps_per_dataset": epochs * per_epoch / len(plan.domains),
            "stopped_early": epochs < cap,
            "best_val_dice": float(dice.max()) if len(dice) else None,
        }
    return result


def shape_prior_dice(run: Path) -> float | None:
    """The run's shape prior: its reconstruction Dice on validation masks (training masks
    without them); None for a scheme without the prior."""
    from jointseg.models.shape_autoencoder import autoencoder_metadata, is_saved_autoencoder
    from jointseg.runs import RunFolder

    folder = RunFolder(run).shape_prior_dir
    if not is_saved_autoencoder(folder):
        return None
    metadata = autoencoder_metadata(folder)
    dice = metadata.get("validation_dice")
    dice = metadata.get("train_dice") if dice is None else dice
    return float(dice) if dice is not None else None


def _flat(data: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def config_changes(saved, current) -> dict[str, tuple]:
    """Dotted config keys whose values differ between the config a cell was trained with and
    the one a rerun would train it with: ``{key: (saved, current)}``. Settings that cannot
    change the scheme are left out: the shape prior's for schemes that train no prior, the
    per-dataset plateau rule without a plateau rule or for schemes whose every network trains
    one dataset (there both rules watch the same validation Dice)."""
    from jointseg.training.schemes import plan_scheme

    old = _flat(saved.model_dump(mode="json"))
    new = _flat(current.model_dump(mode="json"))
    plans = plan_scheme(current.scheme, current.domain_names)
    inert = set()
    if not any(p.shape_prior for p in plans):
        inert |= {k for k in old.keys() | new.keys() if k.startswith("regularization.shape_prior.")}
    no_rule = all(c.get("training.plateau_patience") is None for c in (old, new))
    if no_rule or all(len(p.domains) == 1 for p in plans):
        inert.add("training.plateau_per_dataset")
    return {
        key: (old.get(key), new.get(key))
        for key in sorted(old.keys() | new.keys())
        if old.get(key) != new.get(key) and key not in inert
    }


def describe_changes(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())


def run_cell(
    cfg, scheme: str, view: Path, run: Path, trained: list[str], keep_changed: bool = False
) -> dict:
    """Train (resuming an interrupted run) and evaluate one scheme on one view; the cell's
    record is written last, so a cell with ``cell.json`` is finished. A finished cell trained
    with another config than ``cfg`` stops the benchmark, unless ``keep_changed``: then its
    record carries the changes (``config_changes``) for the report."""
    from jointseg.config import load_config
    from jointseg.evaluation.evaluate import evaluate_run
    from jointseg.workflows.train import train_run

    cell_cfg = cfg.model_copy(update={"scheme": scheme})
    record_path = run / CELL_FILE
    if record_path.is_file():
        record = json.loads(record_path.read_text(encoding="utf-8"))
        changes = config_changes(load_config(run / "config.yaml"), cell_cfg)
        if changes and not keep_changed:
            raise SystemExit(
                f"[paper] {run} was trained with another config ({describe_changes(changes)}): "
                "delete it to train it again, or pass --keep-changed-cells to report it as it is"
            )
        return {**record, "config_changes": changes} if changes else record
    from jointseg.utils.atomic import atomic_write_json

    resumed = run.exists()
    print(f"[paper] training {scheme} -> {run}{' (resuming)' if resumed else ''}", flush=True)
    started, cpu = time.perf_counter(), _cpu_seconds()
    train_run(cell_cfg, view, run, resume=resumed, progress=False)
    seconds, cpu_seconds = time.perf_counter() - started, _cpu_seconds() - cpu
    evaluate_run(run, progress=False)
    record = {
        "scheme": scheme,
        "view": str(view),
        "train_seconds": seconds,
        "train_cpu_seconds": cpu_seconds,
        "resumed": resumed,
        "networks": network_progress(cell_cfg, run),
        "shape_prior_dice": shape_prior_dice(run),
    }
    atomic_write_json(record_path, record)
    trained.append(str(run))
    return record


def held_out_rows(run: Path, scheme: str) -> pd.DataFrame:
    """The cell's scores on its held-out subjects (postprocessed as the run decided)."""
    frame = pd.read_csv(run / "evaluation" / "metrics.csv")
    frame = frame[frame["subset"] == "test"].copy()
    frame["scheme"] = scheme
    return frame


def _slug(scheme: str) -> str:
    return scheme.replace("+", "_")


# -- the steps curve -------------------------------------------------------------------------
def plateau_stop_index(
    values: list[float] | list[dict[str, float]],
    patience: int,
    min_delta: float,
    min_epochs: int = 0,
) -> int | None:
    """Where the plateau rule (``training.plateau_patience``, allowed to stop from the
    ``min_epochs``-th value on) stops a series of one validation per epoch. Each value is the
    mean validation Dice, or with ``training.plateau_per_dataset`` a dict of every dataset's:
    a validation then gains when any dataset beats its own best."""
    best: dict[str, float] = {}
    wait = 0
    for index, value in enumerate(values):
        gained = False
        for name, dice in (value if isinstance(value, dict) else {"": value}).items():
            if dice - min_delta > best.get(name, float("-inf")):
                best[name], gained = dice, True
        wait = 0 if gained else wait + 1
        if wait >= patience and index + 1 >= min_epochs:
            return index
    return None


def steps_frame(cfg, runs: dict[str, Path], rule) -> pd.DataFrame:
    """Validation Dice per epoch of every curve network (``cfg``: the curve's config), its
    steps per dataset, and the epoch where the plateau rule of ``rule`` (the profile's
    ``training`` settings: patience, min delta, minimum epochs, caps) would stop it."""
    from jointseg.training.curves import read_metrics
    from jointseg.training.schemes import deliverable_plans, plan_epochs, plan_scheme

    rows = []
    for scheme, run in runs.items():
        for plan in deliverable_plans(plan_scheme(scheme, cfg.domain_names)):
            frame = read_metrics(run, plan.name)
            if frame is None or "val/dice" not in frame:
                continue
            series = frame[["epoch", "val/dice"]].dropna()
            per_epoch = cfg.training.iterations(len(plan.domains)) / len(plan.domains)
            columns = [f"val/dice_{d}" for d in plan.domains if f"val/dice_{d}" in frame]
            per_dataset = frame.loc[series.index, columns].rename(columns=lambda c: c[9:])
            stop = plateau_stop_index(
                per_dataset.to_dict("records")
                if rule.plateau_per_dataset and columns
                else series["val/dice"].tolist(),
                rule.plateau_patience,
                rule.plateau_min_delta,
                min(rule.plateau_min_epochs, plan_epochs(rule, plan)),
            )
            for index, (epoch, dice) in enumerate(series.itertuples(index=False)):
                name = (
                    scheme
                    if plan.name == "main" or plan.name == scheme
                    else f"{scheme}/{plan.name}"
                )
                rows.append(
                    {
                        "network": name,
                        "epoch": int(epoch) + 1,
                        "steps_per_dataset": (int(epoch) + 1) * per_epoch,
                        "val_dice": float(dice),
                        "plateau_stop": index == stop,
                    }
                )
    return pd.DataFrame(rows)


def curve_config(cfg, epochs: int):
    """The curve's config: no plateau stop, validation every epoch, a cap of ``epochs``
    (``transfer``'s pre-training scaled with it)."""
    curve = cfg.model_copy(deep=True)
    curve.training.plateau_patience = None
    curve.training.validation_every = 1
    pre = cfg.training.transfer_pretrain_epochs
    if epochs != cfg.training.epochs and pre:
        curve.training.transfer_pretrain_epochs = max(1, round(pre * epochs / cfg.training.epochs))
    curve.training.epochs = epochs
    return curve


def curve_folder(cfg, epochs: int) -> str:
    """``curve`` at the profile's cap, ``curve_<N>ep`` for a longer (or shorter) one."""
    return "curve" if epochs == cfg.training.epochs else f"curve_{epochs}ep"


def steps_per_dataset(cfg, epochs: int) -> float:
    """Optimizer steps per dataset of a network over every dataset after ``epochs``."""
    datasets = len(cfg.datasets)
    return epochs * cfg.training.iterations(datasets) / datasets


def plateau_check(
    short: pd.DataFrame,
    long: pd.DataFrame,
    schemes: list[str],
    short_steps: float,
    long_steps: float,
    curves: pd.DataFrame,
) -> str:
    """The plateau check's report: fold 0's held-out subjects scored by the cv cells (the
    profile's cap) and by the curve's networks (a longer cap), per scheme and per bone, and
    each step of the paper's ranking at both caps."""
    import _paper_stats as stats

    short_label, long_label = f"{short_steps:.0f}", f"{long_steps:.0f}"
    lines = [
        f"### Plateau check: fold 0 at {short_label} and at {long_label} steps per dataset\n",
        f"Fold 0's held-out subjects ({long.groupby('dataset')['case'].nunique().min()} per "
        f"joint), scored by the cross-validation cells (cap {short_label} steps per dataset, "
        f"plateau stop) and by the curve's networks (cap {long_label}, no plateau stop, best "
        "validation checkpoint).\n",
    ]
    if not len(short):
        lines.append("(fold 0's cross-validation cells are not finished: nothing to compare)\n")
        return "\n".join(lines)
    labels = (short_label, long_label)
    table = stats.cap_comparison(short, long, schemes, labels)
    lines += [stats.cap_comparison_table(table, labels) + "\n"]
    lines += [
        "#### Each step of the paper's ranking at both caps: mean Δ Dice (claimed better − "
        "worse) over fold 0's subjects and bones\n",
        stats.ranking_shift_table(short, long, labels) + "\n",
        "#### Dice per bone at both caps (mean ± SD over fold 0's subjects)\n",
        stats.metric_table(
            pd.concat(
                [
                    short.assign(scheme=short["scheme"] + f" ({short_label})"),
                    long.assign(scheme=long["scheme"] + f" ({long_label})"),
                ]
            ),
            [f"{s} ({n})" for s in schemes for n in labels],
            "dice",
        )
        + "\n",
    ]
    if len(curves):
        best = curves.loc[curves.groupby("network")["val_dice"].idxmax()]
        lines.append(
            "Best validation Dice of each curve network, and where: "
            + "; ".join(
                f"{r.network} {r.val_dice:.3f} at {r.steps_per_dataset:.0f}"
                for r in best.itertuples()
            )
            + " steps per dataset.\n"
        )
    return "\n".join(lines)


# -- the report ------------------------------------------------------------------------------
def report(
    cv: pd.DataFrame,
    scarce: pd.DataFrame,
    cells: pd.DataFrame,
    notes: list[str],
    schemes: list[str],
) -> str:
    """paper.md: the metric tables, the tests, what holds, the scarce-data table, the cells."""
    import _paper_stats as stats

    lines = ["### Cross-validation: every subject tested once\n"]
    if len(cv):
        subjects = cv.groupby("dataset")["case"].nunique()
        lines.append("Subjects per joint: " + ", ".join(f"{d} {n}" for d, n in subjects.items()))
        lines.append("")
        lines.append(stats.metric_tables(cv, schemes))
        tests = stats.reference_tests(cv, schemes, "dice")
        lines += [
            f"#### `{stats.REFERENCE}` against each scheme: median Δ Dice ({stats.REFERENCE} − "
            "scheme), two-sided Wilcoxon signed-rank p (Holm-adjusted over the table), "
            "rank-biserial r\n",
            stats.tests_table(tests) + "\n",
            "#### Say what holds: each step of the ranking, median Δ Dice (claimed better − "
            "worse), p (Holm over all steps and bones), r, verdict (holds: Holm p < 0.05 in the "
            "claimed direction)\n",
            stats.tests_table(stats.ranking_tests(cv, "dice"), row_key="step") + "\n",
            "![Dice per bone](cv_dice_boxes.png)\n",
        ]
    else:
        lines.append("(no finished cross-validation cell)\n")
    if len(scarce):
        lines += [
            "### Scarce data: mean Dice on the fixed held-out subjects\n",
            stats.scarce_table(scarce, schemes) + "\n",
            "![Dice against training subjects](scarce_dice.png)\n",
        ]
    if len(cells):
        lines += [
            "### Cells\n",
            "| part | setting | scheme | train s (wall / CPU) | networks: "
            "epochs / cap (best validation Dice) |",
            "|---|---|---|---|---|",
        ]
        for row in cells.itertuples(index=False):
            nets = "; ".join(
                f"{k} {v['epochs']}/{v['cap_epochs']}"
                + (f" ({v['best_val_dice']:.3f})" if v.get("best_val_dice") is not None else "")
                + (f", {v['steps']} steps" if "steps" in v and "best_val_dice" not in v else "")
                + (", plateau stop" if v.get("plateau_stop") else "")
                for k, v in (row.networks or {}).items()
            )
            prior = getattr(row, "shape_prior_dice", None)
            if prior is not None and not pd.isna(prior):
                nets += f"; shape prior: reconstruction Dice {prior:.3f}"
            lines.append(
                f"| {row.part} | {row.setting} | {row.scheme} | "
                f"{row.train_seconds:.0f} / {row.train_cpu_seconds:.0f} | {nets} |"
            )
        lines.append("")
    lines += [f"- {n}" for n in notes]
    return "\n".join(lines) + "\n"


def page_text(text: str, out: Path, figures: Path, root: Path = ROOT) -> str:
    """``paper.md`` for the page: its figures copied to ``figures`` (kept in git) and linked
    relative to ``root`` (the repository, where the page lies)."""
    import re
    import shutil

    figures.mkdir(parents=True, exist_ok=True)
    for name in re.findall(r"\]\(([\w.-]+\.png)\)", text):
        shutil.copyfile(out / name, figures / name)
        text = text.replace(f"]({name})", f"]({figures.relative_to(root).as_posix()}/{name})")
    return text


def update_page(page: Path, text: str) -> None:
    """Replace what lies between the paper markers of ``page`` with ``text``."""
    update_section(page, "paper", text)


# -- nnU-Net ---------------------------------------------------------------------------------
def run_nnunet_part(
    nn, cfg, profile: Profile, views, schemes, out: Path, device: str, threads: int,
    worker: bool = False, records_dir: Path | None = None,
):  # fmt: skip
    """Both nnU-Net variants on every fold whose cv cells are finished, each network trained
    with ``threads`` torch threads (those of a jointseg cell); returns scored rows and cell
    records. Worker processes share the networks (``_paper_nnunet.train_fold``) and score
    nothing; the parent trains what is left and scores. Finished networks are copied into
    ``records_dir`` (``_paper_records.save_nnunet``) when given."""
    import _paper_nnunet as pn
    from _nnunet import NnUNet

    frames, cells = [], []
    for fold, view in enumerate(views):
        fold_dir = out / "cv" / f"fold_{fold}"
        records = [
            json.loads((fold_dir / _slug(s) / CELL_FILE).read_text(encoding="utf-8"))
            for s in schemes
            if (fold_dir / _slug(s) / CELL_FILE).is_file()
        ]
        if not records or (worker and len(records) < len(schemes)):
            continue  # the budget needs the fold's longest cell
        longest = max(r["train_seconds"] for r in records)
        info_path = fold_dir / _slug(records[0]["scheme"]) / "run.json"
        info = json.loads(info_path.read_text(encoding="utf-8"))
        folder = fold_dir / "nnunet"
        setting_nn = NnUNet(nn.venv, folder, nn.version)
        budgets = pn.budgets(profile.nnunet, longest, len(cfg.datasets), threads)
        mirroring = bool(cfg.evaluation.tta)
        for variant, budget in budgets.items():
            pn.train_fold(setting_nn, cfg, view, info, variant, budget, device, mirroring, folder)
            if records_dir is not None:
                _paper_records.save_nnunet(out, folder, records_dir)
            scored = None if worker else pn.score_fold(cfg, view, variant, folder)
            if scored is None:
                continue
            rows, trained = scored
            frames.append(rows)
            cells.append(
                {
                    "part": "nnunet",
                    "setting": f"fold {fold}",
                    "scheme": pn.VARIANTS[variant],
                    "train_seconds": sum(r["seconds"] for r in trained.values()),
                    "train_cpu_seconds": sum(r["cpu_seconds"] for r in trained.values()),
                    "networks": {
                        k: {
                            "epochs": r["epochs"],
                            "steps": r["iterations"],
                            "cap_epochs": budget.get("epochs", "time"),
                            "plateau_stop": r.get("stopped_on_plateau", False),
                        }
                        for k, r in trained.items()
                    },
                }
            )
    return (pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()), cells


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="cpu")
    parser.add_argument("--schemes", default=",".join(SCHEMES))
    parser.add_argument("--only", default=",".join(PARTS), help="parts to run: " + ",".join(PARTS))
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra config override (YAML value), repeatable",
    )
    parser.add_argument("--no-nnunet", action="store_true", help="skip nnU-Net")
    parser.add_argument(
        "--install-nnunet",
        action="store_true",
        help="run benchmarks/nnunet_env.sh if nnU-Net is not installed",
    )
    parser.add_argument(
        "--update-page",
        action="store_true",
        help="write the tables into BENCHMARKS.md between the paper markers",
    )
    parser.add_argument(
        "--estimate",
        action="store_true",
        help="measure step times and print the profile's duration at the cap",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="cells trained at once, each in a process of one torch thread (2 on 2 cores: "
        "the profile's small networks train about 1.5x more steps per second in total)",
    )
    parser.add_argument(
        "--curve-schemes",
        default=None,
        help="schemes of the Dice-against-steps curve, comma-separated or 'all' "
        "(default: the profile's curve_schemes)",
    )
    parser.add_argument(
        "--curve-epochs",
        type=int,
        default=None,
        help="the curve's cap in epochs (default: the profile's cap); a longer one is the "
        "plateau check: its networks, scored on fold 0's held-out subjects, against the cv "
        "cells of fold 0 (plateau_curve_<N>ep.md)",
    )
    parser.add_argument(
        "--keep-changed-cells",
        action="store_true",
        help="report finished cells trained with another config (paper.md lists the changes) "
        "instead of stopping",
    )
    parser.add_argument(
        "--records",
        type=Path,
        default=None,
        help="a folder of finished cells' records (small text files, e.g. "
        "benchmarks/results/paper/cells/cpu): restored into --out before the run, each cell "
        "and nnU-Net network added as it finishes (_paper_records.py)",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2, help="synthesis worker processes")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    import _paper_plots as plots
    import torch
    import yaml

    from jointseg.config import load_config
    from jointseg.data.cache import preprocess_study
    from jointseg.utils.atomic import atomic_write_text

    profile = PROFILES[args.profile]
    overrides = dict(profile.overrides)
    for item in args.set:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    if profile.config == "paper":
        overrides.setdefault("model.encoder_weights", "none")
    cfg = load_config(profile.config, overrides)
    schemes = parse_schemes(args.schemes)
    parts = {p.strip() for p in args.only.split(",") if p.strip()}
    out = args.out or HERE / "out" / "paper" / args.profile
    out.mkdir(parents=True, exist_ok=True)
    if args.estimate:
        from _paper_estimate import estimate_profile

        return estimate_profile(profile, cfg, schemes, out / "estimate", args.seed, args.jobs)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.worker:
        torch.set_num_threads(1)
    if args.records is not None and not args.worker:
        restored = _paper_records.restore(args.records, out)
        print(f"[paper] {len(restored)} finished cells restored from {args.records}", flush=True)
    study = make_study(out / "study", profile, args.seed, args.jobs)
    views = fold_views(study, out / "cv", profile.folds, args.seed)
    nn, nn_why = None, "--no-nnunet given"
    if "nnunet" in parts and not args.no_nnunet:  # installed once, before any worker starts
        from _nnunet import NnUNet

        nn, nn_why = NnUNet.find(out / "nnunet", install=args.install_nnunet, setup=not args.worker)
    # the threads of a jointseg cell: one per worker process, else torch's
    threads = 1 if args.workers > 1 or args.worker else torch.get_num_threads()
    if args.workers > 1 and not args.worker:
        # the slice caches first, so that no worker waits on another's preprocessing
        for view in views if parts & {"cv", "curve"} else []:
            preprocess_study(cfg, view)
        for n in profile.scarce if "scarce" in parts else []:
            preprocess_study(cfg, scarce_view(study, out / "scarce", n))
        run_workers(sys.argv[1:] if argv is None else list(argv), args.workers)
    trained: list[str] = []
    notes: list[str] = []
    cv_frames, scarce_frames, cells = [], [], []

    def cell(part: str, setting: str, scheme: str, view: Path, run: Path, frames: list, **extra):
        """Run a cell of a selected part; of the other parts, report the finished cells."""
        if part not in parts and not (run / CELL_FILE).is_file():
            return
        with claimed(run) as mine:
            if not mine:  # another worker trains it
                return
            if not (run / CELL_FILE).is_file():  # the slice cache, outside the cell's timing
                preprocess_study(cfg, view)
            record = run_cell(cfg, scheme, view, run, trained, args.keep_changed_cells)
            if args.records is not None:
                _paper_records.save_cell(out, run, args.records)
        cells.append({"part": part, "setting": setting, **record})
        frames.append(held_out_rows(run, scheme).assign(**extra))

    for fold, view in enumerate(views):
        for scheme in schemes:
            run = out / "cv" / f"fold_{fold}" / _slug(scheme)
            cell("cv", f"fold {fold}", scheme, view, run, cv_frames, fold=fold)
    if "scarce" in parts or (out / "scarce").is_dir():
        for n in profile.scarce:
            view = scarce_view(study, out / "scarce", n)
            for scheme in schemes:
                run = out / "scarce" / f"n{n}" / _slug(scheme)
                cell("scarce", f"{n} subjects", scheme, view, run, scarce_frames, subjects=n)
    patience = cfg.training.plateau_patience or 0
    curve_schemes = (
        list(profile.curve_schemes)
        if args.curve_schemes is None
        else parse_schemes(args.curve_schemes)
    )
    curve_epochs = args.curve_epochs or cfg.training.epochs
    if patience:
        curve_cfg = curve_config(cfg, curve_epochs)
        folder = curve_folder(cfg, curve_epochs)
        runs = {}
        for scheme in [s for s in curve_schemes if s in schemes]:
            run = out / folder / _slug(scheme)
            if "curve" not in parts and not (run / CELL_FILE).is_file():
                continue
            with claimed(run) as mine:
                if not mine:
                    continue
                if not (run / CELL_FILE).is_file():
                    preprocess_study(curve_cfg, views[0])
                record = run_cell(
                    curve_cfg, scheme, views[0], run, trained, args.keep_changed_cells
                )
                if args.records is not None:
                    _paper_records.save_cell(out, run, args.records)
            cells.append({"part": "curve", "setting": "fold 0, no plateau stop", **record})
            runs[scheme] = run
        curves = steps_frame(curve_cfg, runs, cfg.training)
        if len(curves):
            stem = "steps_curve" if folder == "curve" else f"steps_{folder}"
            curves.to_csv(out / f"{stem}.csv", index=False)
            cap = cfg.training.epochs * cfg.training.iterations_per_epoch
            cap = cap if cfg.training.iterations_per_dataset else None
            plots.steps_curve(curves, out / f"{stem}.png", cap)
            stops = curves[curves["plateau_stop"]]
            notes.append(
                f"Dice against steps (fold 0, to {curve_epochs} epochs, validated every epoch): "
                f"the plateau rule (patience {patience}, min_delta "
                f"{cfg.training.plateau_min_delta}) stops "
                + (
                    ", ".join(
                        f"{r.network} at {r.steps_per_dataset:.0f} steps per dataset "
                        f"(Dice {r.val_dice:.3f})"
                        for r in stops.itertuples()
                    )
                    or "no network before the cap"
                )
                + f"; `{stem}.png`, `{stem}.csv`"
            )
        if folder != "curve" and runs:
            long_rows = pd.concat([held_out_rows(r, s) for s, r in runs.items()])
            short_rows = pd.concat(cv_frames) if cv_frames else pd.DataFrame({"fold": []})
            plateau_text = plateau_check(
                short_rows[short_rows["fold"] == 0],
                long_rows,
                [s for s in schemes if s in runs],
                steps_per_dataset(cfg, cfg.training.epochs),
                steps_per_dataset(cfg, curve_epochs),
                curves,
            )
            atomic_write_text(out / f"plateau_{folder}.md", plateau_text)
            plots.box_plots(
                long_rows.assign(scheme=long_rows["scheme"] + f" @{curve_epochs}ep"),
                [f"{s} @{curve_epochs}ep" for s in schemes if s in runs],
                "dice",
                out / f"dice_boxes_{folder}.png",
            )
            notes.append(f"plateau check: `plateau_{folder}.md`, `dice_boxes_{folder}.png`")
    if args.worker:  # the cells are done: share nnU-Net's networks; the parent reports
        if nn is not None:
            run_nnunet_part(
                nn, cfg, profile, views, schemes, out, device, threads, True, args.records
            )
        return {"trained": trained, "out": str(out), "cells": len(cells)}
    nn_schemes: list[str] = []
    if "nnunet" in parts:  # on the finished cv cells of the folds
        if nn is None:
            notes.append(f"**nnU-Net was not run**: {nn_why}")
            print(f"[paper] nnU-Net NOT RUN: {nn_why}", flush=True)
        else:
            rows, nn_cells = run_nnunet_part(
                nn, cfg, profile, views, schemes, out, device, threads, records_dir=args.records
            )
            if len(rows):
                cv_frames.append(rows)
                nn_schemes = list(dict.fromkeys(rows["scheme"]))
            cells += nn_cells
    if args.records is not None:  # cells finished by an earlier run without --records too
        _paper_records.save_all(out, args.records)
    cv = pd.concat(cv_frames, ignore_index=True) if cv_frames else pd.DataFrame()
    scarce = pd.concat(scarce_frames, ignore_index=True) if scarce_frames else pd.DataFrame()
    order = [*schemes, *nn_schemes]
    if len(cv):
        cv.to_csv(out / "cv_metrics.csv", index=False)
        plots.box_plots(cv, order, "dice", out / "cv_dice_boxes.png")
        plots.box_plots(cv, order, "hd95", out / "cv_hd95_boxes.png")
    if len(scarce):
        scarce.to_csv(out / "scarce_metrics.csv", index=False)
        plots.scarce_curve(scarce, schemes, out / "scarce_dice.png")
    notes.append(
        f"profile `{args.profile}`: config {profile.config} with "
        + ", ".join(f"{k}={v}" for k, v in overrides.items())
        + f"; {profile.subjects} cross-validated + {profile.test_subjects} held-out subjects "
        f"per joint (synth scale {profile.synth_scale}, seed {args.seed}), {profile.folds} folds; "
        f"device {device}"
    )
    changed: dict[str, list[str]] = {}
    for row in cells:
        if row.get("config_changes"):
            changed.setdefault(describe_changes(row["config_changes"]), []).append(
                f"{row['part']} {row['setting']} {row['scheme']}"
            )
    for change, names in changed.items():
        notes.append(
            f"trained with another config and kept (--keep-changed-cells; {change}): "
            + ", ".join(names)
        )
    text = report(cv, scarce, pd.DataFrame(cells), notes, order)
    atomic_write_text(out / "paper.md", text)
    if args.update_page:
        update_page(ROOT / "BENCHMARKS.md", page_text(text, out, PAGE_FIGURES))
    print(text)
    trained_by = "its workers" if args.workers > 1 else f"this run: {len(trained)}"
    print(f"[paper] cells trained by {trained_by}; wrote {out}/paper.md")
    return {"trained": trained, "out": str(out), "cells": len(cells)}


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
