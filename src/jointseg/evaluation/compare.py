"""``jointseg compare``: the paper's table of schemes against structures, with paired tests.

Every run must have been evaluated on the same subjects (same (dataset, case, subset) triples
and structures); otherwise the comparison is refused. For every metric, subset, dataset and
structure, the reference scheme is tested against each other scheme with a two-sided Wilcoxon
signed-rank test on the per-subject differences (reference minus other); the p-values of one
metric are Holm-adjusted together (all structures and schemes of that metric form one family).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from jointseg.evaluation.evaluate import METRICS_FILE, config_evaluation
from jointseg.evaluation.metrics import METRIC_LABELS, METRICS
from jointseg.evaluation.report import format_value, markdown_table, plot_grouped_boxes
from jointseg.evaluation.statistics import describe, holm, paired_test
from jointseg.inference.packaged import is_packaged, resolve_run
from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_path, atomic_write_text

KEYS = ["dataset", "case", "subset"]
ALPHA = 0.05


class UnpairedRunsError(ValueError):
    """Runs evaluated on different subjects, which a paired comparison cannot use."""


def load_evaluation(run: Path) -> pd.DataFrame:
    """The ``metrics.csv`` of an evaluated run (run folder, its evaluation folder, or the CSV).

    The packaged model (the word ``pretrained``) holds none: its evaluation is the folder
    ``jointseg evaluate pretrained --out FOLDER`` wrote.
    """
    folder = resolve_run(run)
    if is_packaged(folder):
        raise FileNotFoundError(
            f"{run}: the packaged model holds no evaluation; run `jointseg evaluate {run} "
            "--data STUDY --out FOLDER` and compare FOLDER"
        )
    run = Path(run)
    for path in (RunFolder(run).evaluation_dir / METRICS_FILE, run / METRICS_FILE, run):
        if path.is_file():
            frame = pd.read_csv(path, dtype={"case": str, "dataset": str, "subset": str})
            missing = {"scheme", *KEYS, "structure"} - set(frame.columns)
            if missing:
                raise ValueError(f"{path}: not a metrics file (missing columns {sorted(missing)})")
            return frame
    raise FileNotFoundError(
        f"{run}: not evaluated yet (no {RunFolder.EVALUATION}/{METRICS_FILE}); "
        f"run `jointseg evaluate {run}` first"
    )


def scheme_labels(runs: list[Path], frames: list[pd.DataFrame]) -> list[str]:
    """Each run's scheme name; a name that several runs share gets its run folder's name too
    (or its position, when the folder names are alike as well)."""
    names = [
        str(frame["scheme"].iloc[0]) if len(frame) else Path(run).name
        for run, frame in zip(runs, frames, strict=True)
    ]
    labels = [
        f"{name} ({Path(run).name})" if names.count(name) > 1 else name
        for name, run in zip(names, runs, strict=True)
    ]
    return [
        f"{name} (run {index + 1})" if labels.count(label) > 1 else label
        for index, (name, label) in enumerate(zip(names, labels, strict=True))
    ]


def check_paired(labels: list[str], frames: list[pd.DataFrame], shown: int = 5) -> None:
    """Raise :class:`UnpairedRunsError` unless every run covers the same subjects and structures."""

    def subjects(frame: pd.DataFrame) -> set[tuple[str, ...]]:
        return set(frame[KEYS].itertuples(index=False, name=None))

    def structures(frame: pd.DataFrame) -> set[tuple[str, ...]]:
        return set(frame[["dataset", "structure"]].itertuples(index=False, name=None))

    first = frames[0]
    for label, frame in zip(labels[1:], frames[1:], strict=True):
        for what, get in (("subjects", subjects), ("structures", structures)):
            a, b = get(first), get(frame)
            if a == b:
                continue
            parts = []
            for name, only in ((labels[0], sorted(a - b)), (label, sorted(b - a))):
                if only:
                    listed = ", ".join(_describe_key(k) for k in only[:shown])
                    more = f" and {len(only) - shown} more" if len(only) > shown else ""
                    parts.append(f"only in {name}: {listed}{more}")
            raise UnpairedRunsError(
                f"runs {labels[0]!r} and {label!r} were evaluated on different {what}, so they "
                f"cannot be compared pairwise ({'; '.join(parts)}); evaluate them on the same "
                "subjects (same splits file and data)"
            )


def _describe_key(key: tuple[str, ...]) -> str:
    return f"{key[0]}/{key[1]} ({key[2]})" if len(key) == 3 else "/".join(key)


def choose_reference(labels: list[str], runs: list[Path], reference: str | None) -> str:
    """The reference scheme: ``reference`` (a scheme or run folder name), else the config's
    ``evaluation.reference_scheme`` when one of the runs has it, else the first run."""
    folders = [Path(r).name for r in runs]
    if reference is not None:
        for label, folder in zip(labels, folders, strict=True):
            if reference in (label, folder):
                return label
        raise ValueError(f"reference {reference!r} is none of the runs' schemes: {labels}")
    configured = [r for r in runs if RunFolder(Path(r)).config_file.is_file()]
    wanted = config_evaluation(configured[0] if configured else Path(runs[0])).reference_scheme
    return wanted if wanted in labels else labels[0]


def comparison_table(frame: pd.DataFrame, labels: list[str], reference: str) -> pd.DataFrame:
    """Long table: per metric, subset, dataset, structure and scheme, the statistics and tests."""
    metrics = [m for m in METRICS if m in frame.columns]
    rows = []
    groups = frame.groupby(["subset", "dataset", "structure"], sort=False)
    for metric in metrics:
        for (subset, dataset, structure), group in groups:
            wide = group.pivot(index="case", columns="label", values=metric)
            for label in labels:
                row = {
                    "metric": metric,
                    "subset": subset,
                    "dataset": dataset,
                    "structure": structure,
                    "scheme": label,
                    "reference": reference,
                    **describe(wide[label].to_numpy(dtype=float)),
                }
                if label != reference:
                    test = paired_test(wide[reference].to_numpy(float), wide[label].to_numpy(float))
                    row.update(
                        n_pairs=test.n,
                        statistic=test.statistic,
                        p_value=test.p_value,
                        rank_biserial=test.rank_biserial,
                        median_difference=test.median_difference,
                    )
                rows.append(row)
    table = pd.DataFrame(rows)
    for column in ("n_pairs", "statistic", "p_value", "rank_biserial", "median_difference"):
        if column not in table:
            table[column] = np.nan
    table["p_holm"] = np.nan
    for metric in metrics:
        rows_of_metric = (table["metric"] == metric) & (table["scheme"] != reference)
        table.loc[rows_of_metric, "p_holm"] = holm(table.loc[rows_of_metric, "p_value"].to_numpy())
    table["significant"] = table["p_holm"] < ALPHA
    return table


def _format_p(p: float) -> str:
    if np.isnan(p):
        return "–"
    return "p<0.001" if p < 0.001 else f"p={p:.3f}"


def _signed(value: float, digits: int) -> str:
    return "–" if pd.isna(value) else f"{value:+.{digits}f}"


def _scheme_table(table: pd.DataFrame, labels: list[str], reference: str, metric: str) -> str:
    columns = list(dict.fromkeys(zip(table["dataset"], table["structure"], strict=True)))
    rows = []
    for label in labels:
        cells = [f"**{label}**" if label == reference else label]
        for dataset, structure in columns:
            item = table[
                (table["scheme"] == label)
                & (table["dataset"] == dataset)
                & (table["structure"] == structure)
            ].iloc[0]
            text = format_value(item["mean"], metric)
            if not pd.isna(item["sd"]):
                text += f" ± {format_value(item['sd'], metric)}"
            cells.append(text + ("*" if item["significant"] else ""))
        rows.append(cells)
    return markdown_table(["Scheme", *(f"{d}: {s}" for d, s in columns)], rows)


def _test_table(table: pd.DataFrame, labels: list[str], reference: str) -> str:
    columns = list(dict.fromkeys(zip(table["dataset"], table["structure"], strict=True)))
    rows = []
    for label in (name for name in labels if name != reference):
        cells = [label]
        for dataset, structure in columns:
            item = table[
                (table["scheme"] == label)
                & (table["dataset"] == dataset)
                & (table["structure"] == structure)
            ].iloc[0]
            r, delta = item["rank_biserial"], item["median_difference"]
            cells.append(f"{_format_p(item['p_holm'])} (r={_signed(r, 2)}, Δ={_signed(delta, 3)})")
        rows.append(cells)
    return markdown_table(["Against", *(f"{d}: {s}" for d, s in columns)], rows)


def compare_runs(runs: list[Path], out: Path, reference: str | None = None) -> Path:
    """Compare evaluated runs; write ``compare.md``, ``compare.csv`` and figures into ``out``.

    Returns the path of ``compare.md``. Refuses runs evaluated on different subjects.
    """
    runs = [Path(r) for r in runs]
    if len(runs) < 2:
        raise ValueError("compare needs at least two evaluated runs")
    frames = [load_evaluation(run) for run in runs]
    labels = scheme_labels(runs, frames)
    check_paired(labels, frames)
    reference = choose_reference(labels, runs, reference)
    frame = pd.concat([f.assign(label=label) for f, label in zip(frames, labels, strict=True)])
    table = comparison_table(frame, labels, reference)
    out = Path(out)
    with atomic_path(out / "compare.csv") as tmp:
        table.to_csv(tmp, index=False)
    tests = int(((table["metric"] == "dice") & (table["scheme"] != reference)).sum())
    lines = [
        "# Comparison of schemes",
        "",
        *(f"- `{label}`: {run}" for label, run in zip(labels, runs, strict=True)),
        "",
        f"Reference scheme: **{reference}**. Mean ± SD over subjects. Paired two-sided Wilcoxon "
        f"signed-rank tests of {reference} against each scheme, per structure, on the same "
        f"subjects; p-values Holm-adjusted across the {tests} comparisons of each metric; "
        f"r: matched-pairs rank-biserial correlation, Δ: median paired difference "
        f"({reference} minus the other; r > 0: {reference} higher). "
        f"`*`: Holm-adjusted p < {ALPHA} against {reference}. Tests of every metric are in "
        "`compare.csv`.",
        "",
    ]
    for subset in dict.fromkeys(table["subset"]):
        part = table[table["subset"] == subset]
        figure = plot_grouped_boxes(
            frame[frame["subset"] == subset],
            labels,
            out / f"compare_dice_{subset}.png",
            "dice",
            f"Dice ({subset})",
        )
        lines += [
            f"## Subset `{subset}`",
            "",
            "### Dice",
            "",
            _scheme_table(part[part["metric"] == "dice"], labels, reference, "dice"),
            "",
            f"Tests against {reference} (Holm-adjusted):",
            "",
            _test_table(part[part["metric"] == "dice"], labels, reference),
            "",
            f"![Dice per structure and scheme]({figure.name})",
            "",
        ]
        for metric in dict.fromkeys(part["metric"]):
            if metric != "dice":
                lines += [
                    f"### {METRIC_LABELS.get(metric, metric)}",
                    "",
                    _scheme_table(part[part["metric"] == metric], labels, reference, metric),
                    "",
                ]
    path = out / "compare.md"
    atomic_write_text(path, "\n".join(lines))
    return path
