"""Few-subject learning curves of a new joint and a new site (docs/adapt.md).

For each new dataset (default: the elbow and the knee's second site, ``knee_t1``, synthesized
when ``--data`` holds none) and each number of labelled training subjects (1, 2, 4, 8), trains:

- ``source``: no training, the run's nearest domain on the new scans as it is;
- ``adapt-head``, ``adapt-norm+head``, ``adapt-all``, ``adapt-branch``: ``jointseg adapt`` of
  the trained run;
- ``individual``: one network from scratch on the new dataset alone (plain BN, one head);
- ``transfer``: the trained run's network (the nearest domain's BN as plain BN) fine-tuned as a
  whole on the new dataset, at the full learning rate;
- ``full``: the run's scheme retrained from scratch with the new dataset added;

(an adapt method with ``:pooled``, e.g. ``adapt-head:pooled``, starts the new BN from the pool
of the run's domains instead of the nearest one; with ``:reestimated`` the new BN's statistics
are re-estimated on the new scans instead of kept) and scores Dice per bone on the dataset's
held-out subjects (imagesTs/labelsTs, the domain given), with each cell's wall time (training
and prediction). Every finished cell is kept in
``OUT/results.json`` (atomically): a rerun continues where it stopped. ``--quick``: 1 and 2
subjects, 20 steps, one test subject, the first dataset only. ``--old-domains N`` (after the
cells) scores the run's own domains on N synthesized held-out subjects each, by the run and by
every adapted run: what adaptation cost them.

    python benchmarks/adapt.py --run RUN --out OUT [--data STUDY] [--quick]
        [--sizes 1,2,4,8] [--methods ...] [--steps 300] [--datasets elbow,knee_t1]
    python benchmarks/adapt.py --run RUN --out OUT --old-domains 4
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _locks import claimed, locked  # noqa: E402 (benchmarks/_locks.py)
from _page import update_section  # noqa: E402

from jointseg.config import DatasetConfig, load_config, save_config  # noqa: E402
from jointseg.data.io import read_image  # noqa: E402
from jointseg.data.manifest import list_cases, load_manifest, write_manifest  # noqa: E402
from jointseg.evaluation.metrics import dice  # noqa: E402
from jointseg.models import load_model, save_model  # noqa: E402
from jointseg.runs import load_run_info  # noqa: E402
from jointseg.synth.anatomy import joint_spec  # noqa: E402
from jointseg.utils.atomic import atomic_write_json  # noqa: E402

METHODS = (
    "source", "adapt-head", "adapt-norm+head", "adapt-all", "adapt-branch", "individual",
    "transfer", "full",
)  # fmt: skip
SIZES = (1, 2, 4, 8)
RESULTS = "results.json"


def ensure_study(data: Path, datasets: list[str], train: int, test: int, seed: int) -> None:
    """Synthesize the new datasets into ``data`` unless their folders are there; a folder
    with fewer training or held-out cases than the curve needs is refused at once."""
    missing = [d for d in datasets if not (data / joint_spec(d).folder / "dataset.json").is_file()]
    for joint in set(datasets) - set(missing):
        folder = data / joint_spec(joint).folder
        have = len(list_cases(folder, "train")), len(list_cases(folder, "test"))
        if have[0] < train or have[1] < test:
            raise SystemExit(
                f"{folder}: {have[0]} training and {have[1]} held-out cases, the curve needs "
                f"{train} and {test}; give another --data or remove the folder"
            )
    if missing:
        from jointseg.synth.generate import synthesize_study

        synthesize_study(data, train, test, missing, seed, 1, False, progress=False)


def subset(source: Path, target: Path, subjects: int, test: int | None) -> Path:
    """A dataset folder of the first ``subjects`` training cases (symbolic links) and the first
    ``test`` held-out ones (all when None); kept as it is when an earlier call finished it."""
    done = target / ".complete"
    if done.is_file():
        return target
    if target.exists():
        shutil.rmtree(target)
    manifest = load_manifest(source)
    cases = list_cases(source, "train")[:subjects]
    if len(cases) < subjects:
        raise SystemExit(f"{source}: {len(cases)} training cases, the curve needs {subjects}")
    held = list_cases(source, "test")[:test]
    for case, (images, labels) in [(c, ("imagesTr", "labelsTr")) for c in cases] + [
        (c, ("imagesTs", "labelsTs")) for c in held
    ]:
        for path, folder in ((case.image, images), (case.label, labels)):
            (target / folder).mkdir(parents=True, exist_ok=True)
            os.symlink(path.resolve(), target / folder / path.name)
    write_manifest(target, manifest.model_copy(update={"numTraining": subjects}))
    done.touch()
    return target


def score(predict, dataset: Path, name: str) -> dict:
    """Mean Dice per bone over the dataset's held-out subjects, ``predict(image, name)``."""
    structures = load_manifest(dataset).structures
    per_bone: dict[str, list[float]] = {s: [] for s in structures}
    for case in list_cases(dataset, "test"):
        got = sitk.GetArrayFromImage(predict(read_image(case.image), name))
        want = sitk.GetArrayFromImage(read_image(case.label))
        for structure, value in structures.items():
            per_bone[structure].append(float(dice(got == value, want == value)))
    return {s: float(np.mean(v)) for s, v in per_bone.items()}


def run_predictor(run: Path):
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run)
    return lambda image, name: predictor.predict(image, name).label_map


def train_scheme(cfg, study: Path, out: Path) -> Path:
    from jointseg.workflows.train import train_run

    train_run(cfg, study, out, progress=False)
    return out


def step_config(cfg, steps: int):
    """``cfg`` trained for ``steps`` optimizer steps (epochs of at most 50)."""
    per_epoch = min(steps, 50)
    return cfg.model_copy(
        update={
            "training": cfg.training.model_copy(
                update={
                    "epochs": -(-steps // per_epoch),
                    "iterations_per_epoch": per_epoch,
                    "iterations_per_dataset": False,
                    "validation_fraction": 0.0,
                    "target_dice": None,
                }
            )
        }
    )


def transfer_model(run: Path, nearest: str, out: Path, classes: int) -> None:
    """The run's network as a plain-BN, one-head network: the nearest domain's BN, a head
    started as ``jointseg adapt`` starts a new domain's (:func:`branch_network`)."""
    from jointseg.training.adaptation import branch_network

    net, _ = load_model(run / "models" / "main")
    index = load_run_info(run).models[0].domains.index(nearest)
    branch = branch_network(
        net, classes, source=index, seed=load_config(run / "config.yaml").training.seed
    )
    save_model(branch, out / "models" / "source")


def run_cell(
    method: str, run: Path, dataset: Path, name: str, steps: int, work: Path, quick: bool
) -> dict:
    """Train one method on one subset; returns its Dice per bone and wall times. ``full``
    retrains with the run's own config (``steps`` steps with ``quick``)."""
    from jointseg.workflows.adapt import adapt_run, nearest_domain_of

    began = time.perf_counter()
    cfg = load_config(run / "config.yaml")
    study = dataset.parent
    if method.startswith("adapt-"):
        out = work / "run"
        mode, *options = method[6:].split(":")
        unknown = set(options) - {"pooled", "reestimated"}
        if unknown:
            raise SystemExit(f"{method}: unknown option(s) {sorted(unknown)}")
        adapt_run(
            run, dataset, out, mode=mode, steps=steps, name=name, progress=False,
            init="pooled" if "pooled" in options else "nearest",
            statistics="reestimated" if "reestimated" in options else "fixed",
        )  # fmt: skip
    elif method == "individual":
        single = cfg.model_copy(
            update={
                "scheme": "individual",
                "datasets": [DatasetConfig(name=name, folder=dataset.name)],
            }
        )
        out = train_scheme(step_config(single, steps), study, work / "run")
    elif method == "transfer":
        out = work / "run"
        nearest, _ = nearest_domain_of(run, dataset, name)
        out.mkdir(parents=True)
        transfer_model(run, nearest, out, len(load_manifest(dataset).structures) + 1)
        single = cfg.model_copy(
            update={
                "scheme": "individual",
                "datasets": [DatasetConfig(name=name, folder=dataset.name)],
            }
        )
        _train_from(step_config(single, steps), study, out)
    elif method == "source":  # no training: the run's nearest domain as it is
        nearest, _ = nearest_domain_of(run, dataset, name)
        predict = run_predictor(run)
        dice_per_bone = score(lambda image, _: predict(image, nearest), dataset, name)
        seconds = round(time.perf_counter() - began, 1)
        return {"dice": dice_per_bone, "mean_dice": float(np.mean(list(dice_per_bone.values()))),
                "train_seconds": 0.0, "seconds": seconds, "nearest_domain": nearest}  # fmt: skip
    elif method == "full":
        info = load_run_info(run)
        for entry in info.domains:  # the run's datasets beside the subset, as links
            link = study / entry.folder
            if not link.exists():
                os.symlink((Path(info.data_dir) / entry.folder).resolve(), link)
        grown = cfg.model_copy(
            update={"datasets": [*cfg.datasets, DatasetConfig(name=name, folder=dataset.name)]}
        )
        out = train_scheme(step_config(grown, steps) if quick else grown, study, work / "run")
    else:
        raise SystemExit(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    trained = time.perf_counter()
    dice_per_bone = score(run_predictor(out), dataset, name)
    return {
        "dice": dice_per_bone,
        "mean_dice": float(np.mean(list(dice_per_bone.values()))),
        "train_seconds": round(trained - began, 1),
        "seconds": round(time.perf_counter() - began, 1),
    }


def _train_from(cfg, study: Path, out: Path) -> None:
    """Train an individual network initialized from ``out/models/source`` into a run folder."""
    from jointseg.training import runner
    from jointseg.training.schemes import ModelPlan
    from jointseg.workflows.train import train_run

    name = cfg.datasets[0].name
    original = runner.plan_scheme

    def plans(scheme, domains):  # the individual plan, initialized from the source model
        return [ModelPlan(name=name, domains=(name,), init_from="source")]

    runner.plan_scheme = plans
    try:
        save_config(cfg, out / "config.yaml")
        train_run(cfg, study, out, resume=True, progress=False)
    finally:
        runner.plan_scheme = original


def _cells(results: dict) -> dict[str, dict[int, dict[str, dict]]]:
    """``joint|size|method`` keys -> {joint: {size: {method: cell}}}."""
    table: dict[str, dict[int, dict[str, dict]]] = {}
    for key, cell in results.items():
        joint, size, method = key.split("|")
        table.setdefault(joint, {}).setdefault(int(size), {})[method] = cell
    return table


def _methods(cells: dict[int, dict[str, dict]]) -> list[str]:
    seen = {m for by_method in cells.values() for m in by_method}
    known = [m for m in METHODS if m in seen]
    return known + sorted(seen - set(known))


def aim(cells: dict[int, dict[str, dict]], few: int = 2, many: int = 8) -> str | None:
    """The issue's aim on one dataset: the best adapt mode with ``few`` subjects against an
    individual network with ``many``; None when a cell is missing."""
    adapted = {m: c["mean_dice"] for m, c in cells.get(few, {}).items() if m.startswith("adapt-")}
    individual = cells.get(many, {}).get("individual")
    if not adapted or individual is None:
        return None
    best = max(adapted, key=adapted.get)
    verdict = "meets" if adapted[best] >= individual["mean_dice"] else "falls short of"
    return (
        f"best adapt mode with {few} subjects, `{best}`: {adapted[best]:.3f}; individual with "
        f"{many}: {individual['mean_dice']:.3f}: {verdict} the aim "
        f"({adapted[best] - individual['mean_dice']:+.3f})"
    )


def report(results: dict, figure: str | None = None, old_domains: dict | None = None) -> str:
    """Markdown: per dataset, mean Dice and wall time per method and number of subjects, Dice
    per bone, and the aim (adapting with 2 subjects against an individual network with 8)."""
    lines = []
    for joint, cells in sorted(_cells(results).items()):
        sizes = sorted(cells)
        methods = _methods(cells)
        any_cell = next(iter(cells[sizes[0]].values()))
        nearest: dict[str, set[int]] = {}
        for s in sizes:
            for c in cells[s].values():
                if "nearest_domain" in c:
                    nearest.setdefault(c["nearest_domain"], set()).add(s)
        named = ", ".join(
            f"{d} ({', '.join(map(str, sorted(n)))} subjects)" for d, n in sorted(nearest.items())
        )
        lines += [
            f"#### {joint}",
            "",
            f"{any_cell['steps']} steps per cell"
            + (" (`full`: the run's own schedule)" if "full" in methods else "")
            + (f"; nearest domain: {named}" if nearest else "")
            + ". Mean Dice over the bones on the held-out subjects (wall seconds: training "
            "and prediction).",
            "",
            "| method | " + " | ".join(f"{s} subject{'s' * (s > 1)}" for s in sizes) + " |",
            "|---" * (len(sizes) + 1) + "|",
        ]
        for method in methods:
            row = [
                f"{cells[s][method]['mean_dice']:.3f} ({cells[s][method]['seconds']:.0f} s)"
                if method in cells[s]
                else "-"
                for s in sizes
            ]
            lines.append(f"| {method} | " + " | ".join(row) + " |")
        bones = list(any_cell["dice"])
        lines += ["", "| method | subjects | " + " | ".join(bones) + " |",
                  "|---|---" + "|---" * len(bones) + "|"]  # fmt: skip
        for method in methods:
            for s in sizes:
                if method in cells[s]:
                    dice_row = " | ".join(f"{cells[s][method]['dice'][b]:.3f}" for b in bones)
                    lines.append(f"| {method} | {s} | {dice_row} |")
        verdict = aim(cells)
        if verdict:
            lines += ["", f"Aim: {verdict}."]
        lines.append("")
    if old_domains:
        lines += old_domains_report(old_domains)
    if figure:
        lines.append(f"![Learning curves of the new datasets]({figure})")
    return "\n".join(lines)


def curves_figure(results: dict, target: Path) -> Path:
    """One panel per dataset: mean Dice against labelled subjects, one line per method."""
    import matplotlib.pyplot as plt
    from _paper_plots import save_figure  # sets the Agg backend

    table = _cells(results)
    fig, axes = plt.subplots(1, len(table), figsize=(5.2 * len(table), 3.8), squeeze=False)
    for ax, (joint, cells) in zip(axes[0], sorted(table.items()), strict=True):
        sizes = sorted(cells)
        for method in _methods(cells):
            points = [(s, cells[s][method]["mean_dice"]) for s in sizes if method in cells[s]]
            ax.plot(*zip(*points, strict=True), marker="o", label=method,
                    linestyle="-" if method.startswith("adapt") else "--")  # fmt: skip
        ax.set(title=joint, xlabel="labelled training subjects", ylabel="mean Dice",
               ylim=(0, 1), xscale="log")  # fmt: skip
        ax.set_xticks(sizes, [str(s) for s in sizes])
        ax.minorticks_off()
    axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return save_figure(fig, target)


def run_cells(args, datasets, sizes, methods, steps, test, data) -> None:
    """Train and score every missing cell. Several processes may share ``--out``: each cell
    is claimed by one, and results.json is updated under a lock."""
    path = args.out / RESULTS
    for joint in datasets:
        source = data / joint_spec(joint).folder
        for size in sizes:
            cell_root = args.out / "cells" / f"{joint}_n{size}"
            with locked(cell_root / "study"):
                dataset = subset(source, cell_root / "study" / source.name, size, test)
            for method in methods:
                key = f"{joint}|{size}|{method}"
                work = cell_root / method
                with claimed(work) as mine:
                    if not mine or key in read_results(path):
                        print(f"{key}: done or claimed, skipped", flush=True)
                        continue
                    if work.exists():
                        shutil.rmtree(work)  # an unfinished cell starts again
                    work.mkdir(parents=True)
                    cell = {
                        "steps": steps,
                        **run_cell(method, args.run, dataset, joint, steps, work, args.quick),
                    }
                    if method.startswith("adapt-"):
                        record = json.loads((work / "run" / "adaptation.json").read_text("utf-8"))
                        cell["nearest_domain"] = record["nearest_domain"]
                        cell["lr"] = record["lr"]
                    with locked(path):
                        atomic_write_json(path, {**read_results(path), key: cell})
                print(f"{key}: mean Dice {cell['mean_dice']:.3f} in {cell['seconds']:.0f} s",
                      flush=True)  # fmt: skip


OLD_DOMAINS = "old_domains.json"


def score_old_domains(run: Path, out: Path, test: int, seed: int) -> dict:
    """What adaptation did to the run's own domains: each domain that is a generator joint,
    scored (mean Dice over bones and subjects) on ``test`` held-out subjects synthesized into
    ``OUT/old_data`` (seed ``seed + 1``), by the source run and by every finished ``adapt-*``
    cell's run; kept in ``OUT/old_domains.json`` ({"source": ..., cell key: ...})."""
    from jointseg.synth.anatomy import JOINTS

    domains = [d.name for d in load_run_info(run).domains if d.name in JOINTS]
    data = out / "old_data"
    with locked(data):
        ensure_study(data, domains, 1, test, seed + 1)
    path = out / OLD_DOMAINS
    scores = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    runs = {"source": run}
    for key in read_results(out / RESULTS):
        joint, size, method = key.split("|")
        folder = out / "cells" / f"{joint}_n{size}" / method / "run"
        if method.startswith("adapt-") and (folder / "run.json").is_file():
            runs[key] = folder
    for key, folder in runs.items():
        if key in scores:
            continue
        predict = run_predictor(folder)
        scores[key] = {
            d: float(np.mean(list(score(predict, data / joint_spec(d).folder, d).values())))
            for d in domains
        }
        atomic_write_json(path, scores)
        print(f"old domains, {key}: " + ", ".join(f"{d} {v:.3f}" for d, v in scores[key].items()),
              flush=True)  # fmt: skip
    return scores


def old_domains_report(scores: dict) -> list[str]:
    """Markdown lines: each adapt cell's mean Dice on the run's own domains, against the source
    run's (the forgetting)."""
    source = scores.get("source")
    cells = {k: v for k, v in scores.items() if k != "source"}
    if not source or not cells:
        return []
    domains = list(source)
    lines = [
        "#### The run's own domains after adaptation",
        "",
        "Mean Dice on held-out subjects of each of the run's domains (`--old-domains`): the "
        "source run, then each adapted run and its change.",
        "",
        "| run | " + " | ".join(domains) + " | largest change |",
        "|---" * (len(domains) + 2) + "|",
        "| source | " + " | ".join(f"{source[d]:.3f}" for d in domains) + " | |",
    ]
    for key, values in sorted(cells.items()):
        worst = min(values[d] - source[d] for d in domains)
        row = " | ".join(f"{values[d]:.3f} ({values[d] - source[d]:+.3f})" for d in domains)
        lines.append(f"| {key.replace('|', ' ')} | {row} | {worst:+.3f} |")
    return [*lines, ""]


def read_results(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, help="trained mtmd/full run folder")
    parser.add_argument("--out", type=Path, required=True, help="benchmark folder (resumable)")
    parser.add_argument("--data", type=Path, help="study with the new datasets (default OUT/data)")
    parser.add_argument("--datasets", default="elbow,knee_t1")
    parser.add_argument("--sizes", default=None, help="labelled subjects, e.g. 1,2,4,8")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps per cell")
    parser.add_argument("--test-subjects", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="1-2 subjects, 20 steps, 1 dataset")
    parser.add_argument(
        "--report", action="store_true", help="no training: OUT/adapt.md, OUT/adapt_curves.png"
    )
    parser.add_argument(
        "--old-domains",
        type=int,
        default=0,
        help="no training: score the run's own domains on N synthesized held-out subjects "
        "each, by the run and by every finished adapt cell (the forgetting)",
    )
    parser.add_argument(
        "--update-page", action="store_true", help="with --report: also into BENCHMARKS.md"
    )
    parser.add_argument("--section", default="adapt", help="BENCHMARKS.md's section to fill")
    args = parser.parse_args()
    if args.report:
        write_report(args.out, args.update_page, args.section)
        return
    if args.run is None:
        parser.error("--run is needed to train (or pass --report)")
    if args.old_domains:
        score_old_domains(args.run, args.out, args.old_domains, args.seed)
        return
    datasets = args.datasets.split(",")[:1] if args.quick else args.datasets.split(",")
    sizes = [int(s) for s in (args.sizes or ("1,2" if args.quick else "1,2,4,8")).split(",")]
    steps = args.steps or (20 if args.quick else 300)
    test = args.test_subjects or (1 if args.quick else 4)
    methods = args.methods.split(",")
    data = args.data or args.out / "data"
    # slice caches are keyed by content: one shared folder serves every cell
    os.environ.setdefault("JOINTSEG_CACHE", str((args.out / "cache").resolve()))
    with locked(data):
        ensure_study(data, datasets, max(sizes), test, args.seed)
    run_cells(args, datasets, sizes, methods, steps, test, data)
    print(json.dumps(read_results(args.out / RESULTS), indent=1))


def write_report(out: Path, update_page: bool, section: str = "adapt") -> None:
    """OUT/adapt.md and OUT/adapt_curves.png; with ``update_page`` also BENCHMARKS.md's
    ``section``, its figure copied to benchmarks/results/adapt/ (named after the section)."""
    results = read_results(out / RESULTS)
    if not results:
        raise SystemExit(f"{out / RESULTS}: no finished cell to report")
    figure = curves_figure(results, out / "adapt_curves.png")
    old_path = out / OLD_DOMAINS
    old = json.loads(old_path.read_text(encoding="utf-8")) if old_path.is_file() else None
    (out / "adapt.md").write_text(report(results, figure.name, old) + "\n", encoding="utf-8")
    print(report(results, figure.name, old))
    if update_page:
        name = figure.name if section == "adapt" else f"{section}_curves.png"
        kept = ROOT / "benchmarks" / "results" / "adapt" / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(figure, kept)
        update_section(ROOT / "BENCHMARKS.md", section,
                       report(results, kept.relative_to(ROOT).as_posix(), old))  # fmt: skip


if __name__ == "__main__":
    main()
