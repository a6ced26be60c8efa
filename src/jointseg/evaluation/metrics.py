"""Per-structure 3D segmentation metrics on a scan's own grid, distances in mm.

Overlap metrics come from voxel counts; surface distances from MONAI
(``compute_average_surface_distance(symmetric=True)`` and
``compute_hausdorff_distance(percentile=95)``), which take the voxel spacing into account. The
surface of a mask is its set of foreground voxels with a 6-connected background neighbour.

Conventions for empty masks (P = prediction, R = reference; NaN means "missing" and is left
out of means, with the count of missing values reported next to them):

=====================  ======  ===========  ===========  =====  =====  ====
case                   dice    sensitivity  specificity  mssd   hd95   ravd
=====================  ======  ===========  ===========  =====  =====  ====
P empty, R empty       1       1            as counted   0      0      0
P non-empty, R empty   0       NaN          as counted   NaN    NaN    NaN
P empty, R non-empty   0       0            as counted   NaN    NaN    1
=====================  ======  ===========  ===========  =====  =====  ====

Specificity is TN / (TN + FP); it is NaN only when the reference fills the whole grid.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import SimpleITK as sitk
import torch
from monai.metrics import compute_average_surface_distance, compute_hausdorff_distance

from jointseg.data.dice import dice
from jointseg.data.io import geometry_mismatches

METRICS: tuple[str, ...] = ("dice", "sensitivity", "specificity", "mssd", "hd95", "ravd")
"""Metric names, in the order of the CSV columns."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "dice": True,
    "sensitivity": True,
    "specificity": True,
    "mssd": False,
    "hd95": False,
    "ravd": False,
}

METRIC_LABELS: dict[str, str] = {
    "dice": "Dice",
    "sensitivity": "Sensitivity",
    "specificity": "Specificity",
    "mssd": "MSSD (mm)",
    "hd95": "HD95 (mm)",
    "ravd": "RAVD",
}


class GeometryMismatchError(ValueError):
    """A prediction and a reference that do not lie on the same voxel grid."""


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator) / float(denominator) if denominator else math.nan


def surface_distances(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> tuple[float, float]:
    """(MSSD, HD95) in mm of two non-empty boolean masks, ``spacing`` in array order (z, y, x).

    MSSD is the mean over the union of both surfaces' point-to-surface distances; HD95 is the
    larger of the two directed 95th percentiles (linear interpolation), as in MONAI.
    """
    y_pred = torch.from_numpy(np.ascontiguousarray(pred, dtype=np.float32))[None, None]
    y_ref = torch.from_numpy(np.ascontiguousarray(ref, dtype=np.float32))[None, None]
    spacing = [float(s) for s in spacing]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        mssd = compute_average_surface_distance(
            y_pred, y_ref, include_background=True, symmetric=True, spacing=spacing
        )
        hd95 = compute_hausdorff_distance(
            y_pred, y_ref, include_background=True, percentile=95, spacing=spacing
        )
    return float(mssd.item()), float(hd95.item())


def structure_metrics(
    pred: np.ndarray, ref: np.ndarray, spacing: Sequence[float]
) -> dict[str, float]:
    """Dice, sensitivity, specificity, MSSD, HD95 and RAVD of one structure.

    ``pred`` and ``ref`` are boolean masks of the same shape in array order (z, y, x) and
    ``spacing`` is in the same order, in mm (SimpleITK's ``GetSpacing()`` is x, y, z: reverse
    it). RAVD = |Vp - Vr| / Vr. Empty masks follow the conventions of this module's docstring.
    """
    pred = np.asarray(pred, dtype=bool)
    ref = np.asarray(ref, dtype=bool)
    if pred.shape != ref.shape:
        raise ValueError(f"prediction shape {pred.shape} differs from reference shape {ref.shape}")
    if len(spacing) != pred.ndim:
        raise ValueError(f"spacing {tuple(spacing)} does not match a {pred.ndim}-D mask")
    tp = int(np.count_nonzero(pred & ref))
    n_pred = int(np.count_nonzero(pred))
    n_ref = int(np.count_nonzero(ref))
    fp = n_pred - tp
    fn = n_ref - tp
    tn = pred.size - tp - fp - fn
    specificity = _ratio(tn, tn + fp)
    if n_pred == 0 and n_ref == 0:
        return {
            "dice": 1.0,
            "sensitivity": 1.0,
            "specificity": specificity,
            "mssd": 0.0,
            "hd95": 0.0,
            "ravd": 0.0,
        }
    result = {
        "dice": dice(pred, ref),
        "sensitivity": _ratio(tp, n_ref),
        "specificity": specificity,
        "mssd": math.nan,
        "hd95": math.nan,
        "ravd": _ratio(abs(n_pred - n_ref), n_ref),
    }
    if n_pred and n_ref:
        result["mssd"], result["hd95"] = surface_distances(pred, ref, spacing)
    return result


def score_case(
    pred: sitk.Image, ref: sitk.Image, structures: dict[str, int]
) -> list[dict[str, float | str]]:
    """Metrics of every structure of a label map against its reference, on the reference grid.

    ``structures`` maps structure names to on-disk label values. Returns one dict per structure
    (``structure`` plus the :data:`METRICS`), in the order of ``structures``. Raises
    :class:`GeometryMismatchError` when the two images differ in size, spacing, origin or
    direction.
    """
    problems = geometry_mismatches(pred, ref)
    if problems:
        raise GeometryMismatchError(
            "prediction and reference are on different grids: " + "; ".join(problems)
        )
    pred_array = sitk.GetArrayViewFromImage(pred)
    ref_array = sitk.GetArrayViewFromImage(ref)
    spacing = tuple(reversed(ref.GetSpacing()))
    rows: list[dict[str, float | str]] = []
    for name, value in structures.items():
        metrics = structure_metrics(pred_array == value, ref_array == value, spacing)
        rows.append({"structure": name, **metrics})
    return rows
