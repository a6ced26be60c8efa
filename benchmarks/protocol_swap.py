"""Protocol swap: every joint under every protocol, through one or more trained runs.

    python benchmarks/protocol_swap.py --runs full=demo/runs/full,pretrained=pretrained
        [--data-seed 0] [--test 5] [--joints ankle,knee] [--protocols ankle,knee,knee_t1]
        [--scale 1.0] [--jobs 2] [--out benchmarks/out/protocol_swap] [--update-page]
    python benchmarks/protocol_swap.py --report --out OUT [--update-page]   # tables only

The held-out subjects of a study (``subject_params(joint, "test", i, seed)``: with the study's
seed they are its own held-out subjects, so that the own-protocol column is that study's test
set, voxel for voxel) are rendered under every protocol (:mod:`jointseg.synth.protocol_swap`:
the protocol's contrast, matrix, slice thickness and SNR, placed on the joint as its own
protocol places it) into ``OUT/data/PROTOCOL/JOINT/`` (kept: a rerun renders what is missing).
Each run predicts every scan as ``jointseg predict`` does (the joint's domain given, the run's
postprocessing) and recognizes its joint as ``--domain auto`` does (a refusal counts as wrong);
Dice per bone against the exact labels. Written: ``OUT/scores-RUN.csv`` per run (kept: a rerun
scores a run again only when its file lacks a scan asked for), ``OUT/protocol_swap.md`` and
``OUT/protocol_swap.png`` (one heat map per run); ``--update-page`` puts the tables into
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from _page import update_section  # noqa: E402

from jointseg.synth.generate import FILE_ENDING, render_case, subject_params  # noqa: E402
from jointseg.synth.protocol_swap import imaging_protocol, protocol_names  # noqa: E402
from jointseg.synth.subject import PROTOCOLS  # noqa: E402
from jointseg.utils.atomic import atomic_write_text  # noqa: E402

RECORD = "protocol_swap.json"


def protocol_title(name: str) -> str:
    """``knee_t1 (T1 SE)``, ``knee (PD SE FS)``: a protocol's name and contrast."""
    protocol = PROTOCOLS[name]
    sequence = "SE" if protocol.sequence == "se" else "GRE"
    return f"{name} ({protocol.weighting} {sequence}{' FS' if protocol.fat_sat else ''})"


def scan_paths(data: Path, protocol: str, joint: str, index: int) -> tuple[Path, Path]:
    """(image, label) of held-out subject ``index`` of ``joint`` under ``protocol``."""
    folder = data / protocol / joint
    case = f"{joint}_test_{index:03d}"
    return (folder / "imagesTs" / f"{case}_0000{FILE_ENDING}",
            folder / "labelsTs" / f"{case}{FILE_ENDING}")  # fmt: skip


def _render(task: tuple[str, str, int, int, str, float]) -> str:
    joint, protocol, index, seed, folder, scale = task
    render_case(subject_params(joint, "test", index, seed), folder, scale, imaging=protocol)
    return f"{joint} under {protocol}, subject {index}"


def render_all(data: Path, joints: list[str], protocols: list[str], test: int, seed: int,
               scale: float, jobs: int) -> None:  # fmt: skip
    """Render every missing (joint, protocol, subject) scan; a different study is refused."""
    wanted = {"seed": seed, "scale": scale}
    record = data / RECORD
    if record.is_file() and json.loads(record.read_text(encoding="utf-8")) != wanted:
        raise SystemExit(f"{data} holds renderings of {record.read_text(encoding='utf-8')}; "
                         f"this call asks for {wanted}: give another --out")  # fmt: skip
    data.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(wanted) + "\n")
    tasks = [
        (joint, protocol, index, seed, str(data / protocol / joint), scale)
        for joint in joints
        for protocol in protocols
        for index in range(test)
        if not all(p.is_file() for p in scan_paths(data, protocol, joint, index))
    ]
    if not tasks:
        return
    from tqdm import tqdm

    with tqdm(total=len(tasks), desc="render", unit="scan") as bar:
        if jobs == 1:
            for task in tasks:
                bar.set_postfix_str(_render(task))
                bar.update()
            return
        with ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=get_context("spawn")) as pool:
            for done in pool.map(_render, tasks, chunksize=1):
                bar.set_postfix_str(done)
                bar.update()


def by_name(label_map, predicted: dict[str, int], joint: str):
    """(label map, structures) in the rendering's label values: the run's bones that the joint's
    labels name (a run may number them otherwise, or label other bones)."""
    import SimpleITK as sitk

    from jointseg.synth.anatomy import joint_spec

    reference = {n: v for n, v in joint_spec(joint).labels.items() if n != "background"}
    common = {n: v for n, v in reference.items() if n in predicted}
    if not common:
        raise SystemExit(f"the run labels none of the {joint}'s bones ({', '.join(reference)})")
    lut = np.zeros(max(predicted.values()) + 1, np.uint8)
    for name, value in common.items():
        lut[predicted[name]] = value
    remapped = sitk.GetImageFromArray(lut[sitk.GetArrayFromImage(label_map)])
    remapped.CopyInformation(label_map)
    return remapped, common


def score_run(run: str, data: Path, joints: list[str], protocols: list[str],
              test: int) -> pd.DataFrame:  # fmt: skip
    """Dice per scan and bone of ``run`` (its joints only), and the joint it recognized."""
    from tqdm import tqdm

    from jointseg.data.io import read_image
    from jointseg.evaluation.metrics import score_case
    from jointseg.inference.postprocess import Postprocessing
    from jointseg.inference.predict import postprocess_prediction
    from jointseg.inference.predictor import Predictor

    predictor = Predictor.from_run(run)
    postprocessing = Postprocessing.load(predictor.run_dir)
    known = [j for j in joints if j in predictor.domains]
    if not known:
        raise SystemExit(f"{run}: none of the joints {joints} is a domain of the run "
                         f"({', '.join(predictor.domains)})")  # fmt: skip
    rows = []
    scans = [(j, p, i) for j in known for p in protocols for i in range(test)]
    for joint, protocol, index in tqdm(scans, desc=f"score {run}", unit="scan"):
        image_path, label_path = scan_paths(data, protocol, joint, index)
        image = read_image(image_path)
        recognized = predictor.recognize(image, refuse=False).domain
        prediction = postprocess_prediction(postprocessing, predictor.predict_checked(image, joint))
        label_map, structures = by_name(prediction.label_map, predictor.structures(joint), joint)
        for row in score_case(label_map, read_image(label_path), structures):
            rows.append({"joint": joint, "protocol": protocol, "subject": index,
                         "structure": row["structure"], "dice": float(row["dice"]),
                         "recognized": recognized or "refused"})  # fmt: skip
    return pd.DataFrame(rows)


def mean_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean Dice over bones and subjects: one row per joint, one column per protocol."""
    table = scores.groupby(["joint", "protocol"], sort=False)["dice"].mean().unstack()
    return table.reindex(columns=list(dict.fromkeys(scores["protocol"])))


def recognized_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Scans recognized as their own joint, and scans, per joint and protocol."""
    scans = scores.drop_duplicates(["joint", "protocol", "subject"])
    right = scans["recognized"] == scans["joint"]
    return right.groupby([scans["joint"], scans["protocol"]], sort=False).agg(["sum", "count"])


def report(runs: dict[str, pd.DataFrame], figure: str | None = None) -> str:
    """Markdown: per run, mean Dice per joint and protocol (own protocol in bold) with the
    recognized scans; with two or more runs, each run against the first."""
    lines: list[str] = []
    for label, scores in runs.items():
        table, right = mean_table(scores), recognized_table(scores)
        subjects = scores["subject"].nunique()
        lines += [f"#### {label}", "",
                  f"Mean Dice over the bones of {subjects} held-out subject"
                  f"{'s' * (subjects > 1)} per joint, the joint given; in brackets, the scans "
                  "`--domain auto` called that joint. The joint's own protocol in bold.", "",
                  "| joint | " + " | ".join(protocol_title(p) for p in table.columns) + " |",
                  "|---" * (len(table.columns) + 1) + "|"]  # fmt: skip
        for joint, values in table.iterrows():
            cells = []
            for protocol, value in values.items():
                hits, count = right.loc[(joint, protocol)]
                text = f"{value:.3f} ({hits}/{count})"
                cells.append(f"**{text}**" if protocol == joint else text)
            lines.append(f"| {joint} | " + " | ".join(cells) + " |")
        lines.append("")
    labels = list(runs)
    for label in labels[1:]:
        base, other = mean_table(runs[labels[0]]), mean_table(runs[label])
        joints = [j for j in other.index if j in base.index]
        protocols = [p for p in other.columns if p in base.columns]
        if not joints or not protocols:
            continue
        lines += [f"#### {label} minus {labels[0]}", "",
                  "Mean Dice difference (positive: " + label + " better).", "",
                  "| joint | " + " | ".join(protocols) + " |",
                  "|---" * (len(protocols) + 1) + "|"]  # fmt: skip
        for joint in joints:
            cells = [f"{other.loc[joint, p] - base.loc[joint, p]:+.3f}" for p in protocols]
            lines.append(f"| {joint} | " + " | ".join(cells) + " |")
        lines.append("")
    if figure:
        lines.append(f"![Mean Dice of every joint under every protocol]({figure})")
    return "\n".join(lines)


def heat_maps(runs: dict[str, pd.DataFrame], target: Path) -> Path:
    """One heat map per run: joints down, protocols across, mean Dice written in each cell."""
    import matplotlib.pyplot as plt
    from _paper_plots import save_figure  # sets the Agg backend

    widest = max(len(mean_table(scores).columns) for scores in runs.values())
    fig, axes = plt.subplots(1, len(runs), figsize=(1.3 * widest * len(runs) + 1.0, 3.6),
                             squeeze=False)  # fmt: skip
    for ax, (label, scores) in zip(axes[0], runs.items(), strict=True):
        table = mean_table(scores)
        ax.imshow(table.to_numpy(dtype=float), vmin=0, vmax=1, cmap="viridis")
        ax.set_xticks(range(len(table.columns)), table.columns, rotation=30, ha="right")
        ax.set_yticks(range(len(table.index)), table.index)
        for (row, col), value in np.ndenumerate(table.to_numpy(dtype=float)):
            own = table.index[row] == table.columns[col]
            ax.text(col, row, f"{value:.2f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 0.6 else "white",
                    fontweight="bold" if own else "normal")  # fmt: skip
        ax.set(title=label, xlabel="protocol", ylabel="joint")
    return save_figure(fig, target)


def read_scores(out: Path) -> dict[str, pd.DataFrame]:
    """The runs scored in ``out``, in the order they were scored."""
    order = out / "runs.json"
    labels = json.loads(order.read_text(encoding="utf-8")) if order.is_file() else []
    return {label: pd.read_csv(out / f"scores-{label}.csv") for label in labels
            if (out / f"scores-{label}.csv").is_file()}  # fmt: skip


def write_report(out: Path, update_page: bool, section: str = "protocol-swap") -> str:
    """OUT/protocol_swap.md and its heat maps; with ``update_page`` also BENCHMARKS.md's
    ``section``, the figure copied to benchmarks/results/protocol_swap/ (named after it)."""
    runs = read_scores(out)
    if not runs:
        raise SystemExit(f"{out}: no scored run to report")
    figure = heat_maps(runs, out / "protocol_swap.png")
    text = report(runs, figure.name)
    atomic_write_text(out / "protocol_swap.md", text + "\n")
    if update_page:
        name = figure.name if section == "protocol-swap" else f"{section}.png"
        kept = ROOT / "benchmarks" / "results" / "protocol_swap" / name
        kept.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(figure, kept)
        update_section(ROOT / "BENCHMARKS.md", section,
                       report(runs, kept.relative_to(ROOT).as_posix()))  # fmt: skip
    return text


def scored(path: Path) -> set[tuple[str, str, int]]:
    """The (joint, protocol, subject) scans a kept score file holds (none without one)."""
    if not path.is_file():
        return set()
    frame = pd.read_csv(path)
    return set(zip(frame["joint"], frame["protocol"], frame["subject"].astype(int), strict=True))


def run_domains(run: str) -> set[str]:
    """The domain names of ``run`` (a run folder or ``pretrained``), from its index."""
    from jointseg.inference.packaged import resolve_run
    from jointseg.runs import load_run_info

    return {domain.name for domain in load_run_info(resolve_run(run)).domains}


def parse_runs(text: str) -> dict[str, str]:
    """``LABEL=RUN,...`` (or bare RUNs, labelled by their folder name) -> {label: run}."""
    runs = {}
    for item in filter(None, text.split(",")):
        label, _, run = item.rpartition("=")
        label = label or Path(run).name
        if label in runs:
            raise SystemExit(f"--runs: label {label!r} given twice")
        runs[label] = run
    return runs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="", help="LABEL=RUN,... (a run folder or 'pretrained')")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "protocol_swap")
    parser.add_argument("--joints", default="ankle,knee,shoulder,elbow")
    parser.add_argument("--protocols", default=",".join(protocol_names()))
    parser.add_argument("--test", type=int, default=5, help="held-out subjects per joint")
    parser.add_argument("--data-seed", type=int, default=0, help="the study's seed")
    parser.add_argument("--scale", type=float, default=1.0, help="< 1: smaller volumes (tests)")
    parser.add_argument("--jobs", type=int, default=2, help="rendering processes")
    parser.add_argument("--report", action="store_true", help="no scoring: the tables only")
    parser.add_argument("--update-page", action="store_true", help="also into BENCHMARKS.md")
    parser.add_argument("--section", default="protocol-swap", help="BENCHMARKS.md's section")
    args = parser.parse_args(argv)
    if not args.report:
        runs = parse_runs(args.runs)
        if not runs:
            parser.error("--runs is needed (or pass --report)")
        joints, protocols = args.joints.split(","), args.protocols.split(",")
        for joint in joints:
            imaging_protocol(joint, joints[0])  # unknown joints and protocols: a clear error
        for protocol in protocols:
            imaging_protocol(joints[0], protocol)
        domains = set().union(*(run_domains(run) for run in runs.values()))
        joints = [joint for joint in joints if joint in domains]  # rendered for some run only
        if not joints:
            raise SystemExit(f"no run has any of the joints {args.joints}")
        data = args.out / "data"
        render_all(data, joints, protocols, args.test, args.data_seed, args.scale, args.jobs)
        order = args.out / "runs.json"
        done = json.loads(order.read_text(encoding="utf-8")) if order.is_file() else []
        for label, run in runs.items():
            path = args.out / f"scores-{label}.csv"
            wanted = {(j, p, i) for j in joints if j in run_domains(run) for p in protocols
                      for i in range(args.test)}  # fmt: skip
            if not wanted <= scored(path):
                scores = score_run(run, data, joints, protocols, args.test)
                atomic_write_text(path, scores.to_csv(index=False))
            done = [*[d for d in done if d != label], label]
            atomic_write_text(order, json.dumps(done) + "\n")
    print(write_report(args.out, args.update_page, args.section))


if __name__ == "__main__":
    main()
