"""Preview pictures of a synthetic study: mid slices of several subjects with label contours."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from jointseg.data.io import read_image
from jointseg.data.manifest import list_cases, load_manifest
from jointseg.synth.anatomy import joint_spec
from jointseg.utils.atomic import atomic_path

COLOURS = ("red", "lime", "deepskyblue", "gold", "magenta")


def _mid_slice(image: np.ndarray, label: np.ndarray) -> int:
    """The slice with the most labelled voxels near the middle of the stack."""
    per_slice = (label > 0).reshape(label.shape[0], -1).sum(axis=1)
    if not per_slice.any():
        return label.shape[0] // 2
    centre = int(np.round(np.average(np.arange(len(per_slice)), weights=per_slice)))
    return centre


def write_preview(dataset_dir: Path, path: Path, subjects: int = 4) -> Path:
    """A row of mid slices (one per subject) with each bone's contour, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = load_manifest(dataset_dir)
    cases = [c for c in list_cases(dataset_dir, "train") if c.label is not None][:subjects]
    if not cases:
        raise ValueError(f"{dataset_dir}: no labelled training case to preview")
    fig, axes = plt.subplots(1, len(cases), figsize=(2.9 * len(cases), 3.2), squeeze=False)
    for ax, case in zip(axes[0], cases, strict=False):
        scan = read_image(case.image)
        image = sitk.GetArrayFromImage(scan).astype(np.float32)
        label = sitk.GetArrayFromImage(read_image(case.label))
        k = _mid_slice(image, label)
        spacing = scan.GetSpacing()
        high = np.percentile(image[k], 99.5) or 1.0
        ax.imshow(
            image[k],
            cmap="gray",
            vmin=0,
            vmax=high,
            aspect=spacing[1] / spacing[0],
            interpolation="lanczos",
        )
        for colour, (_name, value) in zip(COLOURS, manifest.structures.items(), strict=False):
            mask = (label[k] == value).astype(float)
            if mask.any():
                ax.contour(mask, levels=[0.5], colors=[colour], linewidths=0.7)
        ax.set_title(f"{case.case_id} (slice {k})", fontsize=8)
        ax.axis("off")
    names = ", ".join(
        f"{name}: {colour}" for colour, name in zip(COLOURS, manifest.structures, strict=False)
    )
    fig.suptitle(f"{manifest.name}  ({names})", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=72, format="png")
    plt.close(fig)
    return path


def write_previews(study: Path, joints: list[str], randomized: bool = False) -> list[Path]:
    """``study/preview_<joint>.png`` for each joint (``preview_<joint>_randomized.png`` of the
    randomized datasets)."""
    if randomized:
        from jointseg.synth.randomize import randomized_folder

        return [
            write_preview(study / randomized_folder(j), study / f"preview_{j}_randomized.png")
            for j in joints
        ]
    return [write_preview(study / joint_spec(j).folder, study / f"preview_{j}.png") for j in joints]
