"""Per-structure measurements of a label map: volume, surface area, extents, components.

- ``volume_ml``: voxel count x voxel volume (exact for the label map).
- ``surface_area_mm2``: area of the smoothed marching-cubes surface of all of the structure's
  components (the same surface as the meshes; the raw voxel staircase would overstate it).
- ``extent_mm``: bounding box of the structure's voxels along the image axes x, y, z.
- ``centroid_mm``: centre of mass in scanner coordinates.
- ``components``: number of 26-connected components (1 for a clean bone).
"""

from __future__ import annotations

import csv
import io
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import trimesh

from jointseg._version import __version__
from jointseg.inference.meshes import Geometry, mask_to_mesh
from jointseg.inference.postprocess import bounding_box, count_components
from jointseg.utils.atomic import atomic_write_text

CSV_COLUMNS = (
    "case", "domain", "structure", "value", "volume_ml", "surface_area_mm2",
    "extent_x_mm", "extent_y_mm", "extent_z_mm", "components",
)  # fmt: skip


@dataclass(frozen=True)
class StructureMeasurement:
    """Measurements of one structure (zeros when it is absent)."""

    structure: str
    value: int
    voxels: int
    volume_ml: float
    surface_area_mm2: float
    extent_mm: tuple[float, float, float]
    centroid_mm: tuple[float, float, float] | None
    components: int

    def to_dict(self) -> dict:
        return asdict(self)


def measure_structure(
    mask: np.ndarray,
    geometry: Geometry,
    name: str,
    value: int,
    largest_mesh: trimesh.Trimesh | None = None,
) -> StructureMeasurement:
    """Measure one structure's mask (z,y,x).

    ``largest_mesh``: the surface of its largest component (as written to disk), reused for the
    area when the structure is that one component.
    """
    mask = np.asarray(mask, dtype=bool)
    voxels = int(mask.sum())
    if voxels == 0:
        return StructureMeasurement(name, value, 0, 0.0, 0.0, (0.0, 0.0, 0.0), None, 0)
    count = count_components(mask)
    mesh = largest_mesh if count == 1 else None
    if mesh is None:
        mesh = mask_to_mesh(mask, geometry, largest_only=False)
    box = bounding_box(mask)
    span = np.array([b.stop - b.start for b in box], float)[::-1]  # x, y, z
    index = np.nonzero(mask[box])
    centre = [a.mean() + b.start for a, b in zip(index, box, strict=True)]
    centroid = geometry.to_physical(np.array([centre]))[0]
    return StructureMeasurement(
        structure=name,
        value=int(value),
        voxels=voxels,
        volume_ml=round(voxels * geometry.voxel_volume / 1000.0, 4),
        surface_area_mm2=round(float(mesh.area), 2),
        extent_mm=tuple(round(float(v), 3) for v in span * np.asarray(geometry.spacing)),
        centroid_mm=tuple(round(float(v), 3) for v in centroid),
        components=count,
    )


def measure_labels(
    labels: np.ndarray,
    structures: dict[str, int],
    geometry: Geometry,
    meshes: dict[str, trimesh.Trimesh] | None = None,
) -> list[StructureMeasurement]:
    """Measure every structure of ``structures`` (name -> value) in the z,y,x ``labels``.

    ``meshes`` (largest components, as written to disk) are reused for structures made of one
    component; otherwise the whole structure is meshed for its area.
    """
    results = []
    for name, value in structures.items():
        mesh = (meshes or {}).get(name)
        results.append(measure_structure(labels == value, geometry, name, value, mesh))
    return results


def measurements_document(
    case: str, domain: str, confidence: float | None, items: list[StructureMeasurement]
) -> dict:
    """The ``<case>_measurements.json`` content (with the jointseg version that measured)."""
    return {
        "case": case,
        "jointseg_version": __version__,
        "domain": domain,
        "domain_confidence": None if confidence is None else round(float(confidence), 4),
        "units": {"volume": "ml", "surface_area": "mm2", "extent": "mm", "centroid": "mm (LPS)"},
        "structures": {m.structure: m.to_dict() for m in items},
    }


def csv_rows(case: str, domain: str, items: list[StructureMeasurement]) -> list[dict]:
    """Rows of ``measurements.csv`` for one case (one per structure)."""
    return [
        {
            "case": case,
            "domain": domain,
            "structure": m.structure,
            "value": m.value,
            "volume_ml": m.volume_ml,
            "surface_area_mm2": m.surface_area_mm2,
            "extent_x_mm": m.extent_mm[0],
            "extent_y_mm": m.extent_mm[1],
            "extent_z_mm": m.extent_mm[2],
            "components": m.components,
        }
        for m in items
    ]


def read_csv_rows(path: str | Path) -> list[dict]:
    """Rows of an existing measurements CSV (empty when there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def update_measurements_csv(path: str | Path, case: str, rows: list[dict]) -> None:
    """Rewrite the CSV atomically, ``case``'s rows replacing its earlier ones; sorted by case."""
    kept = [r for r in read_csv_rows(path) if r.get("case") != case]
    merged = sorted(kept + rows, key=lambda r: str(r["case"]))
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=CSV_COLUMNS, extrasaction="ignore", lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(merged)
    atomic_write_text(path, buffer.getvalue())
