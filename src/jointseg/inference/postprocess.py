"""Postprocessing of 3D label maps, per structure, as decided on a run's validation subjects.

Two steps, each applied to a structure only when the run's ``postprocessing.json`` keeps it
(decided by :mod:`jointseg.evaluation.postprocessing`):

- **components**: keep the largest connected component (``"largest"``), or every component of
  at least ``share`` times the largest one's voxels (``"share"``: a bone split in two similar
  halves keeps both). Connectivity is 26 (voxels touching by a corner are connected), so a thin
  bone whose slice-wise prediction steps diagonally between slices is not cut into islands.
- **fill_holes**: background voxels enclosed by the structure become the structure
  (``scipy.ndimage.binary_fill_holes``: the background is 6-connected, the dual of the
  foreground's 26). Voxels of another structure are never overwritten.

Removed voxels become background. Every structure's components step runs before any fill, and
each step works on the structure's bounding box, so large label maps stay cheap.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from skimage import measure

from jointseg.runs import RunFolder
from jointseg.utils.atomic import atomic_write_json

logger = logging.getLogger(__name__)

FORMAT = 1
DEFAULT_SHARE = 0.1
CONNECTIVITY = 26
ComponentRule = Literal["largest", "share"]
COMPONENT_RULES: tuple[ComponentRule, ...] = ("largest", "share")


class PostprocessingError(ValueError):
    """An unreadable ``postprocessing.json``; the message names the file."""


# ---------------------------------------------------------------------- connected components
def bounding_box(mask: np.ndarray) -> tuple[slice, ...] | None:
    """Slices of the smallest box holding every voxel of ``mask`` (None when empty).

    Found from the axis projections, without listing the voxels, so large masks stay cheap.
    """
    box = []
    for axis in range(mask.ndim):
        hits = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        if hits.size == 0:
            return None
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    return tuple(box)


def components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected components (26-connectivity): the labelled array and their number.

    Large masks should be cropped first (:func:`bounding_box`): the labels take 4-8 bytes a voxel.
    """
    labelled, count = measure.label(mask, connectivity=mask.ndim, return_num=True)
    return labelled, int(count)


def count_components(mask: np.ndarray) -> int:
    """The number of 26-connected components of ``mask``, labelled within its bounding box."""
    box = bounding_box(mask)
    return 0 if box is None else components(mask[box])[1]


def keep_components(
    mask: np.ndarray, rule: ComponentRule = "largest", share: float = DEFAULT_SHARE
) -> np.ndarray:
    """``mask`` (boolean) reduced to its largest component, or to every component of at least
    ``share`` x the largest one's size (``rule="share"``). Empty stays empty; equal largest
    components: ``"largest"`` keeps the first in scan order."""
    if rule not in COMPONENT_RULES:
        raise ValueError(f"unknown components rule {rule!r}; use one of {COMPONENT_RULES}")
    mask = np.asarray(mask, dtype=bool)
    box = bounding_box(mask)
    if box is None:
        return mask.copy()
    labelled, count = components(mask[box])
    if count <= 1:
        return mask.copy()
    sizes = np.bincount(labelled.ravel())
    sizes[0] = 0
    if rule == "largest":
        keep = np.zeros(sizes.size, bool)
        keep[int(np.argmax(sizes))] = True
    else:
        keep = sizes >= share * sizes.max()
        keep[0] = False
    result = np.zeros_like(mask)
    result[box] = keep[labelled]
    return result


def largest_component(mask: np.ndarray) -> np.ndarray:
    """The largest 26-connected component of ``mask`` (empty stays empty)."""
    return keep_components(mask, "largest")


# ------------------------------------------------------------------------------ label maps
def remove_components(
    labels: np.ndarray, value: int, rule: ComponentRule = "largest", share: float = DEFAULT_SHARE
) -> np.ndarray:
    """``labels`` with the components of structure ``value`` that ``rule`` drops set to 0."""
    mask = labels == value
    removed = mask & ~keep_components(mask, rule, share)
    result = labels.copy()
    result[removed] = 0
    return result


def fill_holes(labels: np.ndarray, value: int) -> np.ndarray:
    """``labels`` with the background voxels enclosed by structure ``value`` set to ``value``."""
    mask = labels == value
    box = bounding_box(mask)
    result = labels.copy()
    if box is None:
        return result
    # outside the bounding box every voxel reaches the border: filling the box is exact
    crop = result[box]
    enclosed = ndimage.binary_fill_holes(mask[box]) & (crop == 0)
    crop[enclosed] = value
    return result


@dataclass(frozen=True)
class StructureSteps:
    """The steps kept for one structure: a components rule (or none) and hole filling."""

    components: ComponentRule | None = None
    fill_holes: bool = False

    @property
    def active(self) -> bool:
        return self.components is not None or self.fill_holes

    def describe(self) -> str:
        parts = []
        if self.components == "largest":
            parts.append("largest component")
        elif self.components == "share":
            parts.append("components above the share")
        if self.fill_holes:
            parts.append("fill holes")
        return ", ".join(parts) or "none"


def postprocess_labels(
    labels: np.ndarray,
    structures: dict[str, int],
    steps: dict[str, StructureSteps],
    share: float = DEFAULT_SHARE,
) -> np.ndarray:
    """A postprocessed copy of the z,y,x ``labels``: every structure's components step, then
    every structure's hole filling. ``structures``: name -> label value; ``steps``: name ->
    steps (structures without an entry are left as they are)."""
    result = np.array(labels, copy=True)
    for name, value in structures.items():
        rule = steps.get(name, StructureSteps()).components
        if rule is not None:
            result = remove_components(result, value, rule, share)
    for name, value in structures.items():
        if steps.get(name, StructureSteps()).fill_holes:
            result = fill_holes(result, value)
    return result


# ------------------------------------------------------------------------- the run's plan
@dataclass
class Postprocessing:
    """A run's postprocessing: per domain, per structure, the steps kept, and the validation
    Dice measured with and without each (``measured``, as written to the file)."""

    steps: dict[str, dict[str, StructureSteps]]
    share: float = DEFAULT_SHARE
    measured: dict[str, dict[str, dict]] = field(default_factory=dict)
    cases: dict[str, list[str]] = field(default_factory=dict)

    def domain_steps(self, domain: str) -> dict[str, StructureSteps]:
        return self.steps.get(domain, {})

    def describe(self, domain: str) -> dict[str, str]:
        """Structure -> the steps applied to it in ``domain``, in words."""
        return {name: s.describe() for name, s in self.domain_steps(domain).items()}

    def apply(self, labels: np.ndarray, domain: str, structures: dict[str, int]) -> np.ndarray:
        """Postprocess a z,y,x label map of ``domain`` (``structures``: name -> label value)."""
        steps = self.domain_steps(domain)
        if not any(s.active for s in steps.values()):
            return np.array(labels, copy=True)
        return postprocess_labels(labels, structures, steps, self.share)

    def apply_image(
        self, label_map: sitk.Image, domain: str, structures: dict[str, int]
    ) -> sitk.Image:
        """:meth:`apply` on an image; the result keeps its geometry and pixel type."""
        array = self.apply(sitk.GetArrayViewFromImage(label_map), domain, structures)
        image = sitk.GetImageFromArray(array)
        image.CopyInformation(label_map)
        return image

    def to_dict(self) -> dict:
        domains = {
            domain: {
                name: {
                    "components": s.components,
                    "fill_holes": s.fill_holes,
                    **self.measured.get(domain, {}).get(name, {}),
                }
                for name, s in items.items()
            }
            for domain, items in self.steps.items()
        }
        return {
            "format": FORMAT,
            "connectivity": CONNECTIVITY,
            "share": self.share,
            "decided_on": "validation subjects: mean Dice per structure",
            "cases": self.cases,
            "domains": domains,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Postprocessing:
        if data.get("format") != FORMAT:
            raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
        steps: dict[str, dict[str, StructureSteps]] = {}
        measured: dict[str, dict[str, dict]] = {}
        for domain, items in data["domains"].items():
            for name, entry in items.items():
                rule = entry.get("components")
                if rule is not None and rule not in COMPONENT_RULES:
                    raise ValueError(f"{domain}/{name}: unknown components rule {rule!r}")
                steps.setdefault(domain, {})[name] = StructureSteps(
                    rule, bool(entry.get("fill_holes", False))
                )
                extra = {k: v for k, v in entry.items() if k not in ("components", "fill_holes")}
                measured.setdefault(domain, {})[name] = extra
        return cls(steps, float(data.get("share", DEFAULT_SHARE)), measured, data.get("cases", {}))

    def save(self, run_dir: str | Path) -> Path:
        """Write ``RUN/postprocessing.json`` atomically; returns its path."""
        path = RunFolder(Path(run_dir)).postprocessing_file
        atomic_write_json(path, self.to_dict())
        return path

    @classmethod
    def load(cls, run_dir: str | Path) -> Postprocessing | None:
        """The run's postprocessing, or None (and a log line) when it has no file."""
        path = RunFolder(Path(run_dir)).postprocessing_file
        if not path.is_file():
            logger.warning(
                "%s: no %s; label maps are not postprocessed (decide it with `jointseg "
                "postprocess %s`)", run_dir, RunFolder.POSTPROCESSING, run_dir,
            )  # fmt: skip
            return None
        try:
            return cls.from_dict(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            message = f"{path}: not a valid postprocessing file ({error})"
            raise PostprocessingError(message) from None


__all__ = [
    "DEFAULT_SHARE",
    "Postprocessing",
    "PostprocessingError",
    "StructureSteps",
    "bounding_box",
    "components",
    "count_components",
    "fill_holes",
    "keep_components",
    "largest_component",
    "postprocess_labels",
    "remove_components",
]
