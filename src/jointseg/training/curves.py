"""Training curves of a run: losses and validation Dice per dataset, from the CSV logs."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from jointseg.runs import RunFolder  # noqa: E402
from jointseg.utils.atomic import atomic_path  # noqa: E402


def read_metrics(run_dir: Path, plan: str) -> pd.DataFrame | None:
    path = RunFolder(Path(run_dir)).logs_dir / plan / "metrics.csv"
    if not path.is_file():
        return None
    return pd.read_csv(path)


def plot_curves(run_dir: Path, plans: list[str]) -> Path | None:
    """Write ``run_dir/curves.png``: one row per trained network (loss, validation Dice)."""
    frames = [(p, read_metrics(run_dir, p)) for p in plans]
    frames = [(p, f) for p, f in frames if f is not None and len(f)]
    if not frames:
        return None
    fig, axes = plt.subplots(len(frames), 2, figsize=(10, 3.2 * len(frames)), squeeze=False)
    for row, (plan, frame) in enumerate(frames):
        loss_ax, dice_ax = axes[row]
        epoch_losses = [c for c in frame.columns if c.startswith("train/") and c.endswith("_epoch")]
        for column in sorted(epoch_losses):
            series = frame[["epoch", column]].dropna()
            loss_ax.plot(series["epoch"] + 1, series[column], marker="o", label=column[6:-6])
        loss_ax.set(title=f"{plan}: training losses", xlabel="epoch", yscale="log")
        loss_ax.legend(fontsize=8)
        dice_columns = sorted(c for c in frame.columns if c.startswith("val/dice"))
        for column in dice_columns:
            series = frame[["epoch", column]].dropna()
            style = "-" if column == "val/dice" else "--"
            dice_ax.plot(series["epoch"] + 1, series[column], style, marker="o", label=column[4:])
        dice_ax.set(title=f"{plan}: validation Dice", xlabel="epoch", ylim=(0, 1))
        if dice_columns:
            dice_ax.legend(fontsize=8)
    fig.tight_layout()
    target = RunFolder(Path(run_dir)).curves_file
    with atomic_path(target) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return target
