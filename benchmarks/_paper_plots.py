"""Figures of the paper benchmark: box plots per bone, the scarce-data curve, Dice against steps."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from jointseg.utils.atomic import atomic_path  # noqa: E402


def _grid(count: int) -> tuple[plt.Figure, list]:
    columns = min(count, 3)
    rows = math.ceil(count / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.6 * columns, 3.4 * rows), squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[count:]:
        ax.set_visible(False)
    return fig, flat


def save_figure(fig: plt.Figure, target: Path) -> Path:
    """Lay out ``fig``, write it to ``target`` as PNG (atomically) and close it."""
    fig.tight_layout()
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return target


def box_plots(frame: pd.DataFrame, schemes: list[str], metric: str, target: Path) -> Path:
    """One panel per bone, one box per scheme (the metric over the test subjects)."""
    bones = list(dict.fromkeys(zip(frame["dataset"], frame["structure"], strict=True)))
    fig, axes = _grid(len(bones))
    for ax, (dataset, structure) in zip(axes, bones, strict=False):
        part = frame[(frame["dataset"] == dataset) & (frame["structure"] == structure)]
        present = [s for s in schemes if s in set(part["scheme"])]
        data = [part[part["scheme"] == s][metric].dropna().to_numpy() for s in present]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(present) + 1), present, rotation=40, fontsize=7)
        ax.set_title(f"{dataset} {structure}", fontsize=9)
        ax.set_ylabel(metric)
    return save_figure(fig, target)


def scarce_curve(frame: pd.DataFrame, schemes: list[str], target: Path) -> Path:
    """Mean Dice per bone against training subjects per joint, one line per scheme."""
    bones = list(dict.fromkeys(zip(frame["dataset"], frame["structure"], strict=True)))
    fig, axes = _grid(len(bones))
    for ax, (dataset, structure) in zip(axes, bones, strict=False):
        part = frame[(frame["dataset"] == dataset) & (frame["structure"] == structure)]
        for scheme in schemes:
            means = part[part["scheme"] == scheme].groupby("subjects")["dice"].mean()
            if len(means):
                ax.plot(means.index, means.to_numpy(), marker="o", label=scheme)
        ax.set(
            title=f"{dataset} {structure}",
            xlabel="training subjects per joint",
            ylabel="Dice",
            ylim=(0, 1),
        )
        ax.set_xticks(sorted(frame["subjects"].unique()))
    axes[0].legend(fontsize=7)
    return save_figure(fig, target)


def steps_curve(curves: pd.DataFrame, target: Path, cap: float | None = None) -> Path:
    """Validation Dice against optimizer steps per dataset, one panel per scheme and one line
    per network of it; a cross marks where the plateau rule would have stopped a network, a
    dashed line the profile's cap."""
    scheme_of = curves["network"].str.split("/").str[0]
    schemes = list(dict.fromkeys(scheme_of))
    fig, axes = _grid(len(schemes))
    for ax, scheme in zip(axes, schemes, strict=False):
        for name, part in curves[scheme_of == scheme].groupby("network", sort=False):
            line = ax.plot(part["steps_per_dataset"], part["val_dice"], marker=".", label=name)[0]
            stop = part[part["plateau_stop"]]
            if len(stop):
                ax.plot(
                    stop["steps_per_dataset"], stop["val_dice"], "x", ms=10, color=line.get_color()
                )
        if cap is not None:
            ax.axvline(cap, ls="--", color="grey", lw=1, label="profile cap")
        ax.set(xlabel="optimizer steps per dataset", ylabel="validation Dice", ylim=(0, 1))
        ax.set_title(f"{scheme} (fold 0; x: plateau rule stops)", fontsize=9)
        ax.legend(fontsize=7)
    return save_figure(fig, target)
