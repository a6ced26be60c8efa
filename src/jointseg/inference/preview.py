"""A preview picture of a prediction: overlays on three orthogonal slices and a 3D view.

Each view is named by its anatomical plane, from the scan's direction (a sagittal acquisition's
slices along the array's first axis are sagittal, not axial).

Rendered with matplotlib's Agg canvas (no global pyplot state, no display needed) into PNG bytes,
so the caller decides when to write it.
"""

from __future__ import annotations

import io
import itertools

import numpy as np
import SimpleITK as sitk
import trimesh
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from mpl_toolkits.mplot3d.art3d import Poly3DCollection

from jointseg.inference.label_tables import LabelEntry
from jointseg.inference.meshes import display_triangles

OVERLAY_ALPHA = 0.45
MAX_PIXELS = 384  # per slice side in the picture
LIGHT = np.array([0.4, -0.5, 0.77]) / np.linalg.norm([0.4, -0.5, 0.77])
PLANES = ("sagittal", "coronal", "axial")  # the planes perpendicular to LPS x, y, z


def view_names(direction: tuple[float, ...]) -> tuple[str, str, str]:
    """Per numpy axis (z, y, x) of a scan, the anatomical plane of its slices: the plane
    perpendicular to the patient axis (L-R, A-P, S-I) closest to that image axis, each patient
    axis used once (the assignment with the largest alignment)."""
    matrix = np.abs(np.asarray(direction, dtype=np.float64).reshape(3, 3))  # [patient, image]
    best = max(
        itertools.permutations(range(3)),
        key=lambda patient: sum(matrix[patient[i], i] for i in range(3)),
    )  # best[i]: the patient axis of image axis i (SimpleITK order x, y, z)
    names = [f"{PLANES[best[i]]} ({'xyz'[i]})" for i in range(3)]
    return names[2], names[1], names[0]


def representative_slices(labels: np.ndarray) -> tuple[int, int, int]:
    """Per axis (z, y, x), the slice holding the most foreground (the middle when empty)."""
    chosen = []
    foreground = labels > 0
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        counts = foreground.sum(axis=other)
        chosen.append(int(np.argmax(counts)) if counts.any() else labels.shape[axis] // 2)
    return chosen[0], chosen[1], chosen[2]


def _window(image: np.ndarray) -> tuple[float, float]:
    step = max(1, image.size // 200_000)
    sample = image.ravel()[::step].astype(np.float64)
    low, high = np.percentile(sample, [1, 99])
    return float(low), float(high if high > low else low + 1)


def _take(array: np.ndarray, axis: int, index: int) -> np.ndarray:
    plane = np.take(array, index, axis=axis)
    step = max(1, int(np.ceil(max(plane.shape) / MAX_PIXELS)))
    return plane[::step, ::step]


def _overlay(labels: np.ndarray, entries: list[LabelEntry]) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4), np.float32)
    for entry in entries:
        where = labels == entry.value
        rgba[where, :3] = np.asarray(entry.color, np.float32) / 255.0
        rgba[where, 3] = OVERLAY_ALPHA
    return rgba


def render_preview(
    image: sitk.Image,
    labels: np.ndarray,
    entries: list[LabelEntry],
    meshes: dict[str, trimesh.Trimesh] | None = None,
    title: str = "",
    dpi: int = 90,
) -> bytes:
    """PNG bytes: the scan with the label overlay on three orthogonal slices, plus the meshes."""
    volume = sitk.GetArrayViewFromImage(image)
    low, high = _window(volume)
    spacing = image.GetSpacing()[::-1]  # z, y, x
    show_3d = bool(meshes)
    figure = Figure(figsize=(4 * (3 + show_3d), 4.4), dpi=dpi)
    FigureCanvasAgg(figure)
    centre = representative_slices(labels)
    for axis, name in enumerate(view_names(image.GetDirection())):
        column = axis
        ax = figure.add_subplot(1, 3 + show_3d, column + 1)
        rows_axis, cols_axis = (a for a in range(3) if a != axis)
        width = volume.shape[cols_axis] * spacing[cols_axis]
        height = volume.shape[rows_axis] * spacing[rows_axis]
        # Axial slices as arrays are usually shown (row 0 on top); z runs upwards in the others.
        origin = "upper" if axis == 0 else "lower"
        extent = (0, width, height, 0) if axis == 0 else (0, width, 0, height)
        ax.imshow(
            _take(volume, axis, centre[axis]),
            cmap="gray",
            vmin=low,
            vmax=high,
            origin=origin,
            extent=extent,
            interpolation="nearest",
        )
        ax.imshow(
            _overlay(_take(labels, axis, centre[axis]), entries),
            origin=origin,
            extent=extent,
            interpolation="nearest",
        )
        ax.set_title(f"{name} {centre[axis]}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if show_3d:
        _render_meshes(figure.add_subplot(1, 4, 4, projection="3d"), meshes, entries)
    handles = (
        [_legend_patch(entry) for entry in entries if np.any(labels == entry.value)]
        if entries
        else []
    )
    if handles:
        figure.legend(
            handles=handles,
            loc="lower center",
            ncol=min(len(handles), 6),
            fontsize=8,
            frameon=False,
        )
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout(rect=(0, 0.06 if handles else 0, 1, 0.95 if title else 1))
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _legend_patch(entry: LabelEntry):
    from matplotlib.patches import Patch

    return Patch(color=np.asarray(entry.color) / 255.0, label=f"{entry.value} {entry.name}")


def _render_meshes(ax, meshes: dict[str, trimesh.Trimesh], entries: list[LabelEntry]) -> None:
    colors = {e.name: np.asarray(e.color) / 255.0 for e in entries}
    lows, highs = [], []
    for name, mesh in meshes.items():
        triangles = display_triangles(mesh, max_faces=3000)
        normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
        normals /= np.linalg.norm(normals, axis=1, keepdims=True) + 1e-12
        shade = 0.35 + 0.65 * np.abs(normals @ LIGHT)[:, None]
        collection = Poly3DCollection(triangles, linewidths=0)
        collection.set_facecolor(np.clip(colors.get(name, np.full(3, 0.8)) * shade, 0, 1))
        collection.set_edgecolor("none")
        ax.add_collection3d(collection)
        lows.append(mesh.bounds[0])
        highs.append(mesh.bounds[1])
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    centre, half = (low + high) / 2, float(np.max(high - low)) / 2 or 1.0
    ax.set_xlim(centre[0] - half, centre[0] + half)
    ax.set_ylim(centre[1] - half, centre[1] + half)
    ax.set_zlim(centre[2] - half, centre[2] + half)
    ax.set_box_aspect((1, 1, 1))
    ax.set_title("meshes (mm, LPS)", fontsize=9)
    ax.tick_params(labelsize=6)
