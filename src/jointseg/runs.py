"""The run folder: its layout (:class:`RunFolder`, the one place its names are spelled) and its
index (``RUN/run.json``: what was trained, on which domains, where).

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
    RUN/anatomy_reference.json           each domain's anatomy statistics (recognition)
    RUN/postprocessing.json              per-structure postprocessing, decided on validation

``jointseg adapt`` adds ``RUN/adaptation.json``, ``jointseg evaluate RUN`` adds
``RUN/evaluation/`` (metrics, summary, report, figures, predictions) and ``jointseg export RUN``
``RUN/onnx/``. Readers (inference, evaluation) use config.yaml, run.json, models/ and, when
present, the recognition files and postprocessing.json. Loading a run writes nothing into it:
the files are written by the commands that make a run (train, adapt, pack) or by the command
that adds one to an older run (``jointseg calibrate``, ``jointseg postprocess``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from jointseg.config import ExperimentConfig, load_config, save_config
from jointseg.data.labels import DomainLabels, LabelSpace
from jointseg.utils.atomic import atomic_write_text


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


@dataclass(frozen=True)
class RunFolder:
    """A run folder (module doc): where each of its files and folders is, and its config and
    index read as typed models. Every reader and writer of a run folder goes through it."""

    path: Path

    CONFIG: ClassVar[str] = "config.yaml"
    INDEX: ClassVar[str] = "run.json"
    MODELS: ClassVar[str] = "models"
    SHAPE_PRIOR: ClassVar[str] = "shape_prior"  # a folder of models/
    CHECKPOINTS: ClassVar[str] = "checkpoints"
    LOGS: ClassVar[str] = "logs"
    CURVES: ClassVar[str] = "curves.png"
    DOMAIN_REFERENCE: ClassVar[str] = "domain_reference.json"
    CALIBRATION: ClassVar[str] = "domain_calibration.json"
    ANATOMY_REFERENCE: ClassVar[str] = "anatomy_reference.json"
    POSTPROCESSING: ClassVar[str] = "postprocessing.json"
    ADAPTATION: ClassVar[str] = "adaptation.json"
    EVALUATION: ClassVar[str] = "evaluation"
    ONNX: ClassVar[str] = "onnx"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))

    # ------------------------------------------------------------------------- locations
    @property
    def config_file(self) -> Path:
        return self.path / self.CONFIG

    @property
    def index_file(self) -> Path:
        return self.path / self.INDEX

    @property
    def models_dir(self) -> Path:
        return self.path / self.MODELS

    @classmethod
    def model_path(cls, name: str) -> str:
        """The folder of model ``name``, relative to the run (as ``ModelEntry.path``)."""
        return f"{cls.MODELS}/{name}"

    def model_dir(self, name: str) -> Path:
        """The folder of model ``name`` (model.safetensors and model.json)."""
        return self.path / self.model_path(name)

    @property
    def shape_prior_dir(self) -> Path:
        return self.models_dir / self.SHAPE_PRIOR

    @property
    def checkpoints_dir(self) -> Path:
        return self.path / self.CHECKPOINTS

    def checkpoint_dir(self, name: str) -> Path:
        """The trainer checkpoints of model ``name`` (or of adapt's training)."""
        return self.checkpoints_dir / name

    @property
    def logs_dir(self) -> Path:
        return self.path / self.LOGS

    @property
    def curves_file(self) -> Path:
        return self.path / self.CURVES

    @property
    def domain_reference_file(self) -> Path:
        return self.path / self.DOMAIN_REFERENCE

    @property
    def calibration_file(self) -> Path:
        return self.path / self.CALIBRATION

    @property
    def anatomy_reference_file(self) -> Path:
        return self.path / self.ANATOMY_REFERENCE

    @property
    def postprocessing_file(self) -> Path:
        return self.path / self.POSTPROCESSING

    @property
    def adaptation_file(self) -> Path:
        return self.path / self.ADAPTATION

    @property
    def evaluation_dir(self) -> Path:
        return self.path / self.EVALUATION

    @property
    def onnx_dir(self) -> Path:
        return self.path / self.ONNX

    # ---------------------------------------------------------------------------- content
    def is_run(self) -> bool:
        """Whether the folder holds a run index."""
        return self.index_file.is_file()

    def info(self) -> RunInfo:
        """The run's index; :class:`RunError` when the folder has none."""
        if not self.is_run():
            raise RunError(
                f"{self.path}: not a run folder (no {self.INDEX}); train one with `jointseg train`"
            )
        return RunInfo.model_validate_json(self.index_file.read_text(encoding="utf-8"))

    def save_info(self, info: RunInfo) -> None:
        atomic_write_text(self.index_file, info.model_dump_json(indent=2) + "\n")

    def config(self) -> ExperimentConfig:
        """The run's experiment config; :class:`RunError` when the folder has none."""
        if not self.config_file.is_file():
            raise RunError(f"{self.path}: no {self.CONFIG}; not a complete run folder")
        return load_config(self.config_file)

    def save_config(self, config: ExperimentConfig) -> None:
        save_config(config, self.config_file)


def load_run_info(run_dir: str | Path) -> RunInfo:
    """The index of the run folder ``run_dir`` (:meth:`RunFolder.info`)."""
    return RunFolder(Path(run_dir)).info()


def save_run_info(run_dir: str | Path, info: RunInfo) -> None:
    """Write the index of the run folder ``run_dir`` (:meth:`RunFolder.save_info`)."""
    RunFolder(Path(run_dir)).save_info(info)
