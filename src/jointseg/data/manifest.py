"""A dataset on disk in the nnU-Net v2 raw layout, and its ``dataset.json``."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from jointseg.data.io import SCAN_EXTENSIONS
from jointseg.utils.atomic import atomic_write_json

Split = Literal["train", "test"]


class DatasetError(ValueError):
    """A dataset folder that cannot be used; the message names the file."""


class DatasetManifest(BaseModel):
    """The fields of nnU-Net v2's ``dataset.json`` that jointseg reads (others are kept)."""

    model_config = ConfigDict(extra="allow")

    name: str | None = None
    channel_names: dict[str, str]
    labels: dict[str, int]
    numTraining: int = Field(ge=0)  # noqa: N815 - nnU-Net's key
    file_ending: str

    @model_validator(mode="after")
    def _check(self) -> DatasetManifest:
        if self.labels.get("background") != 0:
            raise ValueError("labels must map 'background' to 0")
        values = list(self.labels.values())
        if len(set(values)) != len(values):
            raise ValueError(f"label values must be unique, got {self.labels}")
        if self.file_ending not in SCAN_EXTENSIONS:
            raise ValueError(f"file_ending {self.file_ending!r} is not one of {SCAN_EXTENSIONS}")
        return self

    @property
    def structures(self) -> dict[str, int]:
        """Labels without the background, in label-value order."""
        items = sorted(self.labels.items(), key=lambda kv: kv[1])
        return {k: v for k, v in items if v != 0}


@dataclass(frozen=True)
class Case:
    """One subject of a dataset: its image file and (optional) label file."""

    case_id: str
    image: Path
    label: Path | None
    split: Split


def domain_name_of(folder: str | Path) -> str:
    """The domain name a dataset folder gets by default: ``Dataset005_KneeT1`` -> ``knee_t1``
    (the folder name without its prefix, snake case; characters other than letters, digits and
    ``_`` become ``_``)."""
    title = re.sub(r"^Dataset\d+_", "", Path(folder).name) or Path(folder).name
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", title).lower()
    return re.sub(r"[^a-z0-9_]+", "_", snake).strip("_") or "dataset"


def load_manifest(dataset_dir: str | Path) -> DatasetManifest:
    """Read and validate ``dataset_dir/dataset.json``."""
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        raise DatasetError(f"{path}: missing (every dataset folder needs a dataset.json)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON: {error}") from None
    try:
        return DatasetManifest.model_validate(data)
    except ValidationError as error:
        details = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in error.errors()
        )
        raise DatasetError(f"{path}: {details}") from None


def write_manifest(dataset_dir: str | Path, manifest: DatasetManifest) -> None:
    """Write ``dataset.json`` atomically."""
    atomic_write_json(Path(dataset_dir) / "dataset.json", manifest.model_dump(mode="json"))


def list_cases(dataset_dir: str | Path, split: Split = "train") -> list[Case]:
    """Cases of a split, sorted by id. Images without labels get ``label=None``.

    Only channel 0 (``<case>_0000<ext>``) is used: jointseg segments single-channel scans.
    """
    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    ext = manifest.file_ending
    image_dir = dataset_dir / ("imagesTr" if split == "train" else "imagesTs")
    label_dir = dataset_dir / ("labelsTr" if split == "train" else "labelsTs")
    suffix = "_0000" + ext
    cases: dict[str, Case] = {}
    if image_dir.is_dir():
        for image in sorted(image_dir.iterdir()):
            if image.name.endswith(suffix) and not image.name.startswith("."):
                case_id = image.name[: -len(suffix)]
                label = label_dir / f"{case_id}{ext}"
                cases[case_id] = Case(case_id, image, label if label.exists() else None, split)
    return [cases[k] for k in sorted(cases)]


def orphan_labels(dataset_dir: str | Path, split: Split = "train") -> list[Path]:
    """Label files that have no image."""
    dataset_dir = Path(dataset_dir)
    manifest = load_manifest(dataset_dir)
    label_dir = dataset_dir / ("labelsTr" if split == "train" else "labelsTs")
    image_dir = dataset_dir / ("imagesTr" if split == "train" else "imagesTs")
    ext = manifest.file_ending
    if not label_dir.is_dir():
        return []
    return [
        p
        for p in sorted(label_dir.iterdir())
        if p.name.endswith(ext)
        and not p.name.startswith(".")
        and not (image_dir / (p.name[: -len(ext)] + "_0000" + ext)).exists()
    ]
