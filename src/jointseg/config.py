"""The experiment configuration: pydantic models, loaded from and written back to YAML.

Every section forbids unknown keys, so a typo is an error that names the key's path and the file.
The shipped configs (``demo``, ``paper``) are package data, loaded by name from any folder.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from jointseg.utils.atomic import atomic_write_text

PATCH_MULTIPLE = 32  # the network's input sides: multiples of the encoder's total stride
SHIPPED_CONFIGS = ("demo", "paper", "robust", "pretrained")  # src/jointseg/configs/NAME.yaml
SCHEMES = ("individual", "transfer", "shared", "mtmd", "mtmd+con", "full")
Scheme = Literal["individual", "transfer", "shared", "mtmd", "mtmd+con", "full"]


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file and the keys."""


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DatasetConfig(Section):
    """One dataset (= one domain and one task)."""

    name: str = Field(description="Domain name used everywhere (e.g. 'knee').")
    folder: str = Field(description="Dataset folder under --data, e.g. 'Dataset002_Knee'.")
    randomized_folder: str | None = Field(
        None,
        description="A dataset folder under --data with the same labels, drawn from for "
        "training.randomized_fraction of this domain's training patches (e.g. "
        "'Dataset102_KneeRandomized' of `jointseg synth --randomize`).",
    )


class PreprocessingConfig(Section):
    slice_axis: Literal["auto", 0, 1, 2] = Field(
        "auto",
        description="Array axis (z=0, y=1, x=2 of the canonical volume) to slice along; "
        "'auto' takes the axis with the largest spacing (the acquisition's slice direction).",
    )
    target_spacing: float | None = Field(
        0.8, gt=0, description="In-plane spacing in mm after resampling; null keeps the scan's."
    )
    patch_size: tuple[int, int] = Field(
        (128, 128),
        description="In-plane size of the training patches drawn from the whole-view slices "
        "(not part of the slice cache's key).",
    )
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    jobs: int = Field(2, ge=1, description="Parallel worker processes over volumes.")

    @field_validator("patch_size")
    @classmethod
    def _divisible(cls, value: tuple[int, int]) -> tuple[int, int]:
        if any(v % PATCH_MULTIPLE or v <= 0 for v in value):
            raise ValueError(
                f"each patch dimension must be a positive multiple of {PATCH_MULTIPLE}"
            )
        return value

    @field_validator("clip_percentiles")
    @classmethod
    def _ordered(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= value[0] < value[1] <= 100:
            raise ValueError("need 0 <= low < high <= 100")
        return value


class AugmentationConfig(Section):
    enabled: bool = True
    affine_probability: float = Field(
        0.5, ge=0, le=1, description="Probability of the random rotation/scale/translation."
    )
    rotate_degrees: float = Field(15.0, ge=0)
    scale_range: float = Field(0.15, ge=0, lt=1)
    translate_fraction: float = Field(0.05, ge=0, lt=1)
    elastic_probability: float = Field(0.0, ge=0, le=1)
    gamma_range: tuple[float, float] = (0.7, 1.5)
    noise_std: float = Field(0.05, ge=0)
    bias_field_coefficient: float = Field(0.2, ge=0)
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    probability: float = Field(0.3, ge=0, le=1, description="Probability of each intensity op.")
    # Contrast-robustness operations (docs/training.md); the defaults leave each one out.
    contrast_range: tuple[float, float] = Field(
        (1.0, 1.0),
        description="Range of a random factor multiplying the normalized image (contrast); "
        "(1, 1) leaves it out.",
    )
    histogram_shift_points: int = Field(
        0,
        ge=0,
        description="Control points of a random non-linear intensity remapping (MONAI "
        "RandHistogramShift, at least 3); 0 leaves it out.",
    )
    invert_probability: float = Field(
        0.0, ge=0, le=1, description="Probability of inverting the contrast (image -> -image)."
    )
    low_resolution_zoom: tuple[float, float] = Field(
        (1.0, 1.0),
        description="Zoom range of the low-resolution simulation (down-sampled by the zoom, "
        "then up-sampled back); (1, 1) leaves it out.",
    )
    flip_axes: list[int] = Field(
        default_factory=list,
        description="In-plane axes (0=rows, 1=cols) where a flip is anatomically sensible.",
    )
    flip_probability: float = Field(0.5, ge=0, le=1, description="Probability of each flip.")

    @field_validator("contrast_range")
    @classmethod
    def _contrast(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1]:
            raise ValueError("need 0 < low <= high")
        return value

    @field_validator("histogram_shift_points")
    @classmethod
    def _points(cls, value: int) -> int:
        if value in (1, 2):
            raise ValueError("need 0 (off) or at least 3 control points")
        return value

    @field_validator("low_resolution_zoom")
    @classmethod
    def _zoom(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not 0 < value[0] <= value[1] <= 1:
            raise ValueError("need 0 < low <= high <= 1")
        return value


class ModelConfig(Section):
    encoder: Literal["resnet18", "resnet34", "resnet50"] = "resnet18"
    width: float = Field(1.0, gt=0, le=4, description="Channel width multiplier (CPU demo: 0.25).")
    encoder_weights: str = Field("none", description="none | imagenet | path to a state dict.")
    context_slices: int = Field(
        1,
        ge=1,
        description="Neighbouring slices fed as input channels (odd): the segmented slice and "
        "(k-1)/2 on each side, edge slices replicated within the scan; 1 is 2D.",
    )
    decoder_channels: tuple[int, ...] = Field(
        (256, 128, 64, 32, 16), description="Decoder widths (before the width multiplier)."
    )
    projector_hidden: int = Field(256, ge=1)
    projector_dim: int = Field(128, ge=1)
    feature_taps: tuple[str, ...] = Field(
        ("enc2", "enc3", "enc4", "dec1", "dec2"),
        description="Scales exposed for the contrastive loss (enc0..enc4, dec0..dec4).",
    )

    @model_validator(mode="before")
    @classmethod
    def _legacy_in_channels(cls, data: object) -> object:
        """Accept the former ``in_channels`` key (model folders of earlier runs) where it
        agrees with ``context_slices``: the input channels are the context slices."""
        if isinstance(data, dict) and "in_channels" in data:
            data = dict(data)
            channels = data.pop("in_channels")
            slices = data.get("context_slices", 1)
            if channels != slices:
                raise ValueError(
                    f"in_channels ({channels}) must equal context_slices ({slices}): the input "
                    "channels are the neighbouring slices; set model.context_slices only"
                )
        return data

    @field_validator("context_slices")
    @classmethod
    def _odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(
                f"context_slices must be odd (the centre slice and as many neighbours on each "
                f"side), got {value}"
            )
        return value


class OptimizerConfig(Section):
    name: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.99, ge=0, lt=1)
    schedule: Literal["cosine", "poly", "constant"] = "cosine"
    warmup_epochs: int = Field(1, ge=0)


class TrainingConfig(Section):
    epochs: int = Field(10, ge=1)
    iterations_per_epoch: int = Field(50, ge=1)
    iterations_per_dataset: bool = Field(
        False,
        description="Multiply iterations_per_epoch by the number of datasets a network trains "
        "on: every scheme then takes as many steps per dataset (an epoch as a pass over every "
        "dataset).",
    )
    batch_size: int = Field(12, ge=1)
    sampling: Literal["balanced", "proportional", "sqrt"] = "balanced"
    empty_slice_keep: float = Field(
        0.2,
        ge=0,
        le=1,
        description="Probability that a slice without foreground drawn for a uniform patch is "
        "kept (otherwise a slice with foreground of the same domain is drawn instead).",
    )
    foreground_oversample: float = Field(
        0.33,
        ge=0,
        le=1,
        description="Share of training patches centred on a voxel of one structure, chosen "
        "uniformly among the domain's structures (the rest are placed uniformly in a slice).",
    )
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    gradient_clip: float | None = Field(12.0, gt=0)
    precision: Literal["auto", "32", "16-mixed", "bf16-mixed"] = Field(
        "auto",
        description="auto: bfloat16 autocast where the device computes it natively (a CPU "
        "with AVX512-BF16 or AMX, a CUDA GPU with bfloat16), else float32 "
        "(jointseg.utils.compute). Weights, optimizer state and BN statistics stay float32.",
    )
    channels_last: bool = Field(
        True, description="Weights and activations in the channels-last (NHWC) memory format."
    )
    validation_every: int = Field(1, ge=1, description="Validate every N epochs.")
    target_dice: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Stop once the validation Dice reaches this; epochs is then the cap. "
        "Needs validation subjects.",
    )
    plateau_patience: int | None = Field(
        None,
        ge=1,
        description="Stop once val/dice has not improved by more than plateau_min_delta for "
        "this many validations in a row; epochs is then the cap. Needs validation subjects.",
    )
    plateau_min_delta: float = Field(
        0.0, ge=0, description="Smallest val/dice gain that counts as an improvement."
    )
    plateau_min_epochs: int = Field(
        0,
        ge=0,
        description="The plateau rule may stop a network only from this epoch on (capped at "
        "the network's own epochs); val/dice is tracked from the start.",
    )
    plateau_per_dataset: bool = Field(
        False,
        description="The plateau rule counts a validation as a gain when any dataset's "
        "val/dice_<name> gains more than plateau_min_delta, so that a network of several "
        "datasets stops once every dataset has plateaued (off: the mean val/dice).",
    )
    validation_fraction: float = Field(
        0.2, ge=0, lt=1, description="Share of training subjects held out for validation."
    )
    randomized_fraction: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of each domain's training patches drawn from its randomized_folder "
        "(all its training cases); domains without one train on their own folder only.",
    )
    initial_weights: str | None = Field(
        None,
        description="A run folder, or `pretrained` (the shipped model), whose trained network "
        "of the same name (models/<scheme>) initializes each network before training: "
        "fine-tuning on new data. Its architecture, heads and domains must be this config's.",
    )
    num_workers: int = Field(0, ge=0)
    transfer_pretrain_epochs: int | None = Field(
        None, ge=1, description="Epochs of the transfer scheme's pre-training (default: epochs)."
    )
    seed: int = 0

    def iterations(self, datasets: int) -> int:
        """Optimizer steps per epoch of a network trained on ``datasets`` datasets."""
        return self.iterations_per_epoch * (max(1, datasets) if self.iterations_per_dataset else 1)


class SupConConfig(Section):
    lambda_con: float = Field(0.1, ge=0)
    temperature: float = Field(0.1, gt=0)
    scales: dict[str, float] = Field(
        default_factory=lambda: {"enc2": 1.0, "enc3": 1.0, "enc4": 1.0, "dec1": 1.0, "dec2": 1.0},
        description="Feature tap -> weight; weights are normalized to sum to one.",
    )


class ShapePriorConfig(Section):
    lambda_shape: float = Field(1.0, ge=0, description="Weight of the mean squared code distance.")
    lambda_adv: float = Field(0.0, ge=0)
    code_channels: int = Field(16, ge=1)
    base_channels: int = Field(16, ge=1)
    depth: int = Field(3, ge=1, description="Stride-2 stages of the auto-encoder.")
    pool: int = Field(2, ge=1, description="Label maps are averaged over pool x pool blocks first.")
    steps: int = Field(400, ge=1, description="Optimizer steps of the auto-encoder's training.")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(3e-3, gt=0, description="Peak learning rate (one-cycle schedule).")
    augment: bool = Field(True, description="Random rotation, scale and shift of the masks.")
    autoencoder: str | None = Field(
        None, description="Path to a trained shape auto-encoder to reuse instead of training one."
    )


class RegularizationConfig(Section):
    contrastive: SupConConfig = Field(default_factory=SupConConfig)
    shape_prior: ShapePriorConfig = Field(default_factory=ShapePriorConfig)
    ramp: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Fraction of a network's planned steps over which the regularizers' "
        "weights (lambda_con, lambda_shape, lambda_adv) rise linearly to their values; "
        "0: full weight from the first step.",
    )


class EvaluationConfig(Section):
    folds: int = Field(5, ge=2)
    reference_scheme: str = "full"
    metrics: tuple[str, ...] = ("dice", "sensitivity", "specificity", "mssd", "hd95", "ravd")
    tta: bool = False
    postprocess_share: float = Field(
        0.1,
        gt=0,
        le=1,
        description="Postprocessing's 'share' rule keeps components of at least this share of "
        "the largest one's voxels.",
    )


class InferenceConfig(Section):
    max_in_plane: int = Field(
        512,
        ge=32,
        description="Largest in-plane side (voxels at the target spacing) segmented in one "
        "pass; wider views are segmented by overlapping windows of this size.",
    )
    window_overlap: float = Field(
        0.25, ge=0, lt=1, description="Overlap of the sliding windows (share of a window)."
    )


class ExperimentConfig(Section):
    name: str = "experiment"
    datasets: list[DatasetConfig]
    scheme: Scheme = "full"
    schemes: list[Scheme] = Field(
        default_factory=lambda: ["individual", "mtmd", "full"],
        description="The grid `jointseg ablate` trains.",
    )
    preprocessing: PreprocessingConfig = Field(default_factory=PreprocessingConfig)
    augmentation: AugmentationConfig = Field(default_factory=AugmentationConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    regularization: RegularizationConfig = Field(default_factory=RegularizationConfig)
    evaluation: EvaluationConfig = Field(default_factory=EvaluationConfig)

    @model_validator(mode="after")
    def _unique_domains(self) -> ExperimentConfig:
        names = [d.name for d in self.datasets]
        if not names:
            raise ValueError("at least one dataset is needed")
        if len(set(names)) != len(names):
            raise ValueError(f"dataset names must be unique, got {names}")
        return self

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.datasets]


def _format_errors(error: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"]) or "<root>"
        if item["type"] == "extra_forbidden":
            lines.append(f"  - {path}: unknown key")
        else:
            lines.append(f"  - {path}: {item['msg']} (got {item.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(data: dict, source: str = "<dict>") -> ExperimentConfig:
    """Validate a plain dict as an :class:`ExperimentConfig`, raising :class:`ConfigError`."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as error:
        raise ConfigError(_format_errors(error, source)) from None


def shipped_config_text(name: str) -> str:
    """The YAML text of a shipped config (``demo`` or ``paper``), read from the package data."""
    if name not in SHIPPED_CONFIGS:
        raise ConfigError(
            f"no shipped config named {name!r}; shipped: {', '.join(SHIPPED_CONFIGS)}"
        )
    return files("jointseg").joinpath("configs", f"{name}.yaml").read_text(encoding="utf-8")


def load_config(path: str | Path, overrides: dict | None = None) -> ExperimentConfig:
    """Load and validate a YAML experiment config; ``overrides`` are merged in (dotted keys).

    ``path`` is a YAML file, or the name of a shipped config (``demo``, ``paper``) when no file
    of that name exists.
    """
    path = Path(path)
    try:
        if str(path) in SHIPPED_CONFIGS and not path.is_file():
            text = shipped_config_text(str(path))
        else:
            text = path.read_text(encoding="utf-8")
        data = yaml.safe_load(text)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return config_from_dict(data, str(path))


def _set_dotted(data: dict, dotted: str, value: object) -> None:
    keys = dotted.split(".")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
    node[keys[-1]] = value


def dump_config(config: ExperimentConfig) -> str:
    """The fully resolved config as YAML text (every default written out)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def save_config(config: ExperimentConfig, path: str | Path) -> None:
    """Write the fully resolved config atomically."""
    atomic_write_text(path, dump_config(config))
