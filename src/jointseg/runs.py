"""The run folder's index (``RUN/run.json``): what was trained, on which domains, where.

Layout of a run folder written by ``jointseg train`` (:mod:`jointseg.workflows.train`)::

    RUN/config.yaml                      the fully resolved experiment config
    RUN/run.json                         this index (RunInfo)
    RUN/models/<model>/model.safetensors weights (+ model.json: architecture and metadata)
    RUN/models/shape_prior/              the frozen shape auto-encoder (schemes with a prior):
                                         shape_autoencoder.safetensors + shape_autoencoder.json
    RUN/checkpoints/<model>/last.ckpt    trainer state for --resume (and best.ckpt)
    RUN/logs/<model>/                    CSV and TensorBoard logs
    RUN/curves.png                       losses and validation Dice per dataset
    RUN/domain_reference.json            per-domain recognition references (jointseg.recognition)
    RUN/domain_calibration.json          recognition's refusal threshold and temperature
    RUN/postprocessing.json              per-structure postprocessing, decided on validation

``jointseg evaluate RUN`` adds ``RUN/evaluation/`` (metrics, summary, report, figures,
predictions). Readers (inference, evaluation) use config.yaml, run.json, models/ and, when
present, the recognition files and postprocessing.json; a run without a calibration file may
get one written on first use (measured on its study, :mod:`jointseg.recognition.study`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from jointseg.data.labels import DomainLabels, LabelSpace
from jointseg.utils.atomic import atomic_write_text

RUN_INDEX = "run.json"


class RunError(ValueError):
    """A run folder that cannot be used (missing index or model); names the path."""


class DomainEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    folder: str
    structures: dict[str, int] = Field(description="Structure name -> on-disk label value.")

    def labels(self) -> DomainLabels:
        return DomainLabels(self.name, dict(self.structures))


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str
    path: str = Field(description="Folder of model.safetensors/model.json, relative to the run.")
    domains: list[str] = Field(description="Domains this model segments, in head order.")
    label_space: Literal["local", "union"] = Field(
        "local", description="'local': one head per domain; 'union': one head over all structures."
    )


class RunInfo(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scheme: str
    domains: list[DomainEntry]
    models: list[ModelEntry]
    fold: int | None = None
    data_dir: str | None = Field(None, description="The study folder the run was trained on.")
    validation_cases: dict[str, list[str]] = Field(default_factory=dict)
    training_cases: dict[str, list[str]] = Field(default_factory=dict)

    def domain(self, name: str) -> DomainEntry:
        for entry in self.domains:
            if entry.name == name:
                return entry
        known = ", ".join(d.name for d in self.domains)
        raise RunError(f"unknown domain {name!r}; this run knows: {known}")

    def model_for(self, domain: str) -> ModelEntry:
        self.domain(domain)
        for entry in self.models:
            if domain in entry.domains:
                return entry
        raise RunError(f"no model in this run segments domain {domain!r}")

    def label_space(self) -> LabelSpace:
        return LabelSpace([d.labels() for d in self.domains])


def load_run_info(run_dir: str | Path) -> RunInfo:
    path = Path(run_dir) / RUN_INDEX
    if not path.is_file():
        raise RunError(
            f"{run_dir}: not a run folder (no {RUN_INDEX}); train one with `jointseg train`"
        )
    return RunInfo.model_validate_json(path.read_text(encoding="utf-8"))


def save_run_info(run_dir: str | Path, info: RunInfo) -> None:
    atomic_write_text(Path(run_dir) / RUN_INDEX, info.model_dump_json(indent=2) + "\n")
