"""Summaries, tables and figures of an evaluation, and its ``report.md``.

Figures are drawn with matplotlib's object API on the Agg canvas (no display, no global state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import SimpleITK as sitk
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from jointseg.data.io import read_image
from jointseg.evaluation.metrics import METRIC_LABELS, METRICS
from jointseg.evaluation.statistics import describe
from jointseg.utils.atomic import atomic_path, atomic_write_text

FIGURES_DIR = "figures"
DISTANCE_METRICS = ("mssd", "hd95")
CaseFiles = dict[tuple[str, str], tuple[Path, Path, Path]]


def summarize(frame: pd.DataFrame, metrics: Sequence[str] = METRICS) -> dict:
    """subset -> dataset -> structure -> metric -> mean, sd, median, n, missing."""
    summary: dict = {}
    for (subset, dataset, structure), group in frame.groupby(
        ["subset", "dataset", "structure"], sort=False
    ):
        node = summary.setdefault(subset, {}).setdefault(dataset, {})
        node[structure] = {m: describe(group[m].to_numpy(dtype=float)) for m in metrics}
    return summary


def format_value(value: float | None, metric: str) -> str:
    """A metric value with the precision of its kind (mm: 2 decimals, ratios: 3)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.2f}" if metric in DISTANCE_METRICS else f"{value:.3f}"


def format_stats(stats: dict, metric: str) -> str:
    """``mean ± sd`` (plus the count of missing values) of a :func:`describe` dict."""
    text = format_value(stats["mean"], metric)
    if stats["sd"] is not None:
        text += f" ± {format_value(stats['sd'], metric)}"
    if stats["missing"]:
        text += f" ({stats['missing']} missing)"
    return text


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A GitHub-flavoured Markdown table."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def save_figure(figure: Figure, path: Path) -> Path:
    """Write a figure as PNG, atomically."""
    FigureCanvasAgg(figure)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    return path


def plot_dice_boxes(frame: pd.DataFrame, path: Path, title: str) -> Path:
    """Box plots of Dice per structure, one panel per dataset, with every subject as a dot."""
    datasets = list(dict.fromkeys(frame["dataset"]))
    figure = Figure(figsize=(3.2 * len(datasets) + 0.6, 3.6))
    axes = figure.subplots(1, len(datasets), squeeze=False, sharey=True)[0]
    for ax, dataset in zip(axes, datasets, strict=True):
        part = frame[frame["dataset"] == dataset]
        structures = list(dict.fromkeys(part["structure"]))
        values = [_finite(part.loc[part["structure"] == s, "dice"]) for s in structures]
        ax.boxplot(values, widths=0.5, showfliers=False, medianprops={"color": "C1"})
        for position, column in enumerate(values, start=1):
            ax.plot(np.full(column.size, position), column, "o", ms=3, alpha=0.6, color="k")
        ax.set_xticks(range(1, len(structures) + 1), structures, rotation=30)
        ax.set_title(dataset)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("Dice")
    figure.suptitle(title)
    return save_figure(figure, path)


def plot_grouped_boxes(
    frame: pd.DataFrame, schemes: Sequence[str], path: Path, metric: str = "dice", title: str = ""
) -> Path:
    """Box plots of a metric per structure (grouped by dataset), one box per scheme."""
    keys = list(dict.fromkeys(zip(frame["dataset"], frame["structure"], strict=True)))
    figure = Figure(figsize=(max(5.0, 0.5 * len(keys) * len(schemes) + 2.0), 4.0))
    ax = figure.subplots()
    width = 0.8 / len(schemes)
    colors = [f"C{i % 10}" for i in range(len(schemes))]
    for index, scheme in enumerate(schemes):
        part = frame[frame["label"] == scheme]
        values = [
            _finite(part.loc[(part["dataset"] == d) & (part["structure"] == s), metric])
            for d, s in keys
        ]
        positions = np.arange(len(keys)) + (index - (len(schemes) - 1) / 2) * width
        boxes = ax.boxplot(
            values,
            positions=positions,
            widths=width * 0.9,
            showfliers=False,
            patch_artist=True,
            manage_ticks=False,
            medianprops={"color": "k"},
        )
        for box in boxes["boxes"]:
            box.set_facecolor(colors[index])
            box.set_alpha(0.6)
    ax.set_xticks(range(len(keys)), [f"{d}\n{s}" for d, s in keys], fontsize=8)
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.grid(axis="y", alpha=0.3)
    handles = [Line2D([], [], color=c, lw=6, alpha=0.6) for c in colors]
    ax.legend(handles, list(schemes), fontsize=8, loc="best")
    ax.set_title(title)
    return save_figure(figure, path)


def _finite(series: pd.Series) -> np.ndarray:
    values = series.to_numpy(dtype=float)
    return values[np.isfinite(values)]


def subject_ranking(frame: pd.DataFrame, dataset: str) -> list[tuple[str, str, str, float]]:
    """(label, case, subset, mean Dice) of the best, median and worst subject of a dataset.

    Subjects are ranked by their Dice averaged over structures; the median is the lower middle
    one. A subject that holds several ranks (few subjects) is listed once with joined labels.
    """
    part = frame[frame["dataset"] == dataset]
    means = part.groupby(["case", "subset"], sort=True)["dice"].mean().sort_values(kind="stable")
    if means.empty:
        return []
    order = list(means.items())
    picks = {"best": order[-1], "median": order[(len(order) - 1) // 2], "worst": order[0]}
    merged: dict[tuple[str, str], list[str]] = {}
    for label, (key, _) in picks.items():
        merged.setdefault(key, []).append(label)
    return [(", ".join(names), key[0], key[1], float(means[key])) for key, names in merged.items()]


def plot_overlay(
    image: sitk.Image,
    reference: sitk.Image,
    prediction: sitk.Image,
    structures: dict[str, int],
    path: Path,
    title: str,
) -> Path:
    """One slice (largest reference area, across the coarsest axis) with contours per structure.

    Solid lines: reference; dashed lines: prediction. Images are shown in LPS orientation.
    """
    volumes = [sitk.DICOMOrient(v, "LPS") for v in (image, reference, prediction)]
    arrays = [sitk.GetArrayFromImage(v) for v in volumes]
    spacing = tuple(reversed(volumes[0].GetSpacing()))
    axis = int(np.argmax(spacing))
    other = [a for a in range(3) if a != axis]
    area = np.count_nonzero(np.isin(arrays[1], list(structures.values())), axis=tuple(other))
    index = int(np.argmax(area))
    img, ref, pred = (np.take(a, index, axis=axis) for a in arrays)
    low, high = np.percentile(img, [1, 99]) if img.size else (0, 1)
    figure = Figure(figsize=(5.0, 5.0))
    ax = figure.subplots()
    aspect = spacing[other[0]] / spacing[other[1]]
    origin = "upper" if axis == 0 else "lower"
    ax.imshow(img, cmap="gray", vmin=low, vmax=max(high, low + 1e-6), aspect=aspect, origin=origin)
    handles = []
    for number, (name, value) in enumerate(structures.items()):
        color = f"C{number % 10}"
        for mask, style in ((ref == value, "solid"), (pred == value, "dashed")):
            if mask.any() and not mask.all():
                ax.contour(
                    mask.astype(float),
                    levels=[0.5],
                    colors=[color],
                    linestyles=style,
                    linewidths=1.2,
                )
        handles.append(Line2D([], [], color=color, label=name))
    handles += [
        Line2D([], [], color="w", ls="solid", label="reference"),
        Line2D([], [], color="w", ls="dashed", label="prediction"),
    ]
    ax.legend(handles=handles, fontsize=7, loc="upper right", facecolor="0.3", labelcolor="w")
    ax.set_title(f"{title} (slice {index} of axis {'zyx'[axis]})", fontsize=9)
    ax.set_axis_off()
    return save_figure(figure, path)


def _metrics_table(node: dict, metrics: Sequence[str]) -> str:
    headers = ["Structure", *(METRIC_LABELS.get(m, m) for m in metrics), "n"]
    rows = [
        [
            structure,
            *(format_stats(stats[m], m) for m in metrics),
            str(max(stats[m]["n"] + stats[m]["missing"] for m in metrics)),
        ]
        for structure, stats in node.items()
    ]
    return markdown_table(headers, rows)


POSTPROCESSING_METRICS = ("dice", "hd95")


def postprocessing_section(
    summary: dict, level: int = 2, title: str = "Postprocessing"
) -> list[str]:
    """Markdown lines comparing Dice and HD95 without and with postprocessing, per subset and
    dataset (none when the evaluation applied no postprocessing)."""
    post = summary.get("postprocessing")
    if not post:
        return []
    head = "#" * level
    lines = [
        f"{head} {title}",
        "",
        "Steps kept per structure on the run's validation subjects (`postprocessing.json`: a "
        "step stays only if it does not lower the structure's mean validation Dice); mean ± SD "
        "over subjects without and with them:",
        "",
    ]
    headers = ["Structure", "Steps"]
    for metric in POSTPROCESSING_METRICS:
        label = METRIC_LABELS.get(metric, metric)
        headers += [f"{label} without", f"{label} with"]
    for subset, datasets in summary["summary"].items():
        for dataset, node in datasets.items():
            without = post["summary_without"].get(subset, {}).get(dataset, {})
            steps = post["steps"].get(dataset, {})
            rows = []
            for structure, stats in node.items():
                row = [structure, steps.get(structure, "none")]
                for metric in POSTPROCESSING_METRICS:
                    before = without.get(structure, {}).get(metric)
                    row += [format_stats(before, metric) if before else "–"]
                    row += [format_stats(stats[metric], metric)]
                rows.append(row)
            lines += [f"{head}# `{subset}`: {dataset}", "", markdown_table(headers, rows), ""]
    return lines


def write_report(
    out_dir: Path,
    frame: pd.DataFrame,
    summary: dict,
    title: str,
    structures: dict[str, dict[str, int]],
    files: CaseFiles,
) -> Path:
    """Write ``report.md`` (tables, Dice box plots, best/median/worst overlays); return its path.

    ``files`` maps (domain, case) to (image, reference, prediction) paths for the overlays.
    """
    metrics = summary.get("metrics", list(METRICS))
    source = "cross-validation" if summary["source"] == "cv" else "trained run"
    lines = [
        f"# Evaluation: {title}",
        "",
        f"- Scheme: `{summary['scheme']}` ({source})",
        f"- Data: `{summary['data_dir']}`",
        f"- Subjects: {frame[['dataset', 'case']].drop_duplicates().shape[0]}; "
        "per-subject values in `metrics.csv`, statistics in `summary.json`.",
        "- Values are mean ± SD over subjects, computed in 3D on each scan's grid; distances in "
        "mm. Missing values (surface distances with an empty mask, see docs/evaluation.md) are "
        "left out of the means and counted.",
        "",
    ]
    for subset, datasets in summary["summary"].items():
        part = frame[frame["subset"] == subset]
        subjects = part[["dataset", "case"]].drop_duplicates().shape[0]
        lines += [f"## Subset `{subset}` ({subjects} subject{'s' if subjects != 1 else ''})", ""]
        for dataset, node in datasets.items():
            lines += [f"### {dataset}", "", _metrics_table(node, metrics), ""]
        figure = plot_dice_boxes(
            part, out_dir / FIGURES_DIR / f"dice_{subset}.png", f"Dice per structure ({subset})"
        )
        lines += [f"![Dice per structure, {subset}]({figure.relative_to(out_dir).as_posix()})", ""]
    lines += postprocessing_section(summary)
    lines += [
        "## Best, median and worst subjects (by mean Dice over structures)",
        "",
        "Solid contours: reference; dashed: prediction.",
        "",
    ]
    for dataset in dict.fromkeys(frame["dataset"]):
        lines += [f"### {dataset}", ""]
        for label, case, subset, dice in subject_ranking(frame, dataset):
            image, reference, prediction = (read_image(p) for p in files[(dataset, case)])
            name = f"overlay_{dataset}_{case}.png"
            plot_overlay(
                image,
                reference,
                prediction,
                structures[dataset],
                out_dir / FIGURES_DIR / name,
                f"{dataset} {case}",
            )
            lines += [
                f"**{label}**: `{case}` ({subset}), mean Dice {dice:.3f}",
                "",
                f"![{dataset} {case}]({FIGURES_DIR}/{name})",
                "",
            ]
    path = out_dir / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
