"""Repeated trainings of one cross-validation: how far runs of the same scheme differ, whether
each step of the paper's ranking keeps its sign from run to run, and the ranking tested on the
per-subject scores averaged over the runs.

    # a repeat on the same study and folds with another training seed (or the same config on
    # another CPU type: training is deterministic on one machine, not across CPU types)
    python benchmarks/paper.py --profile cpu --workers 2 --only cv --no-nnunet \\
        --set training.seed=1 --out RUN1
    python benchmarks/paper_repeats.py RUN0 RUN1 --labels "seed 0,seed 1" --out repeats.md

Each argument is a ``paper.py`` output folder (or its ``cv_metrics.csv``); every run must have
tested the same subjects. Prints the report and writes it to ``--out`` when given.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

KEYS = ["dataset", "case", "structure"]


def read_run(path: Path) -> pd.DataFrame:
    """A run's jointseg scores (nnU-Net's rows left out)."""
    from paper_ablation import read_cv

    if path.suffix == ".csv":
        if not path.is_file():
            raise SystemExit(f"{path}: no such scores file")
        frame = pd.read_csv(path)
        return frame[~frame["scheme"].str.startswith("nnU-Net")]
    return read_cv(path)


def check_same_subjects(runs: dict[str, pd.DataFrame]) -> list[str]:
    """The schemes every run trained; exits when the runs tested different subjects."""
    subjects = [set(zip(f["dataset"], f["case"], strict=True)) for f in runs.values()]
    if any(s != subjects[0] for s in subjects[1:]):
        raise SystemExit("the runs were tested on different subjects: not the same folds")
    schemes = [list(dict.fromkeys(f["scheme"])) for f in runs.values()]
    common = [s for s in schemes[0] if all(s in other for other in schemes[1:])]
    if not common:
        raise SystemExit("no scheme was trained in every run: nothing to compare")
    return common


def run_to_run(runs: dict[str, pd.DataFrame], schemes: list[str]) -> pd.DataFrame:
    """Per scheme: its mean Dice in each run, and over every pair of runs the per-(subject,
    bone) differences: median |Δ| and the share above 0.1."""
    from _paper_stats import _paired_over_bones

    rows = []
    for scheme in schemes:
        row: dict = {"scheme": scheme}
        for label, frame in runs.items():
            row[label] = frame[frame["scheme"] == scheme]["dice"].mean()
        gaps: list[float] = []
        for a, b in itertools.combinations(runs.values(), 2):
            left, right = _paired_over_bones(a, scheme, b, scheme, "dice")
            gaps += [abs(x - y) for x, y in zip(left, right, strict=True)]
        row["median_abs_difference"] = pd.Series(gaps).median()
        row["share_above_0.1"] = sum(g > 0.1 for g in gaps) / len(gaps)
        row["pairs"] = len(gaps)
        rows.append(row)
    return pd.DataFrame(rows)


def step_means(runs: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Each step of the paper's ranking: the mean paired Dice difference (claimed better −
    worse) over subjects and bones in each run, and whether every run gives it one sign."""
    from _paper_stats import RANKING_STEPS, _paired_over_bones

    rows = []
    for better, worse in RANKING_STEPS:
        row: dict = {"step": f"{worse} → {better}"}
        for label, frame in runs.items():
            a, b = _paired_over_bones(frame, better, frame, worse, "dice")
            row[label] = sum(x - y for x, y in zip(a, b, strict=True)) / len(a) if a else None
        values = [row[label] for label in runs]
        if any(v is None for v in values):
            continue
        row["same_sign"] = all(v > 0 for v in values) or all(v < 0 for v in values)
        rows.append(row)
    return pd.DataFrame(rows)


def averaged(runs: dict[str, pd.DataFrame], schemes: list[str]) -> pd.DataFrame:
    """Per scheme, subject and bone: every metric averaged over the runs."""
    frames = [f[f["scheme"].isin(schemes)] for f in runs.values()]
    both = pd.concat(frames, ignore_index=True)
    metrics = [c for c in both.select_dtypes("number").columns if c not in ("fold",)]
    return both.groupby(["scheme", *KEYS], sort=False)[metrics].mean().reset_index()


def report(runs: dict[str, pd.DataFrame]) -> str:
    """The markdown report of :func:`run_to_run`, :func:`step_means` and the tests on the
    averaged scores."""
    import _paper_stats as stats

    schemes = check_same_subjects(runs)
    labels = list(runs)
    spread = run_to_run(runs, schemes)
    lines = [
        f"### {len(runs)} runs of the same cross-validation: {', '.join(labels)}\n",
        "#### Run to run: mean Dice per run, and the per-(subject, bone) differences "
        "between runs\n",
        "| scheme | " + " | ".join(labels) + " | median abs Δ | share abs Δ > 0.1 | pairs |",
        "|" + "---|" * (len(labels) + 4),
    ]
    for row in spread.to_dict("records"):
        cells = " | ".join(f"{row[label]:.3f}" for label in labels)
        lines.append(
            f"| {row['scheme']} | {cells} | {row['median_abs_difference']:.3f} | "
            f"{row['share_above_0.1']:.0%} | {row['pairs']} |"
        )
    steps = step_means(runs)
    lines += [
        "\n#### Each step of the paper's ranking: mean Δ Dice (claimed better − worse) per run\n",
        "| step | " + " | ".join(labels) + " | one sign in every run |",
        "|" + "---|" * (len(labels) + 2),
    ]
    for row in steps.to_dict("records"):
        cells = " | ".join(f"{row[label]:+.3f}" for label in labels)
        lines.append(f"| {row['step']} | {cells} | {'yes' if row['same_sign'] else 'no'} |")
    mean = averaged(runs, schemes)
    lines += [
        "\n#### Averaged over the runs: Dice (mean ± SD over subjects)\n",
        stats.metric_table(mean, schemes, "dice") + "\n",
        "#### Averaged over the runs: each step of the ranking, median Δ Dice, two-sided "
        "Wilcoxon p (Holm over all steps and bones), r, verdict\n",
        stats.tests_table(stats.ranking_tests(mean, "dice"), row_key="step") + "\n",
        "#### Averaged over the runs: `full` against each scheme (Holm over the table)\n",
        stats.tests_table(stats.reference_tests(mean, schemes, "dice")) + "\n",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="paper.py output folders or CSVs")
    parser.add_argument("--labels", help="comma-separated names of the runs (default: run 1, ...)")
    parser.add_argument("--out", type=Path, help="write the report here too")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give at least two runs")
    labels = (
        [x.strip() for x in args.labels.split(",")]
        if args.labels
        else [f"run {i + 1}" for i in range(len(args.runs))]
    )
    if len(labels) != len(args.runs) or len(set(labels)) != len(labels):
        parser.error("--labels needs one distinct name per run")
    text = report({label: read_run(path) for label, path in zip(labels, args.runs, strict=True)})
    if args.out is not None:
        from jointseg.utils.atomic import atomic_write_text

        atomic_write_text(args.out, text)
    print(text)
    return text


if __name__ == "__main__":
    main()
