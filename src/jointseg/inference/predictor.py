"""The Predictor: a trained run folder -> label maps in each scan's own geometry.

Slices stream through the network in batches; per-slice class probabilities are kept as float16
in the slice grid and restored class by class onto the scan's grid (linear, then argmax) when
that fits :data:`MEMORY_BUDGET`, else the argmax slices are restored by nearest neighbour. The
segmentation grid covers the scan's whole in-plane field of view (the network is fully
convolutional), while domain recognition sees the training patch, as the BN statistics did.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import Tensor, nn

from jointseg.config import ExperimentConfig, PreprocessingConfig, load_config
from jointseg.data.io import read_image
from jointseg.data.labels import LabelSpace
from jointseg.data.preprocess import (
    InverseInfo,
    canonical_axes,
    preprocess_case,
    resolve_slice_axis,
    restore_labels,
    restore_probabilities,
)
from jointseg.inference.domain import (
    CALIBRATION_FACTOR,
    Calibration,
    Candidate,
    DomainDecision,
    DomainRecognitionError,
    model_input,
    recognize_domain,
    refusal_message,
    subsample_indices,
)
from jointseg.runs import ModelEntry, RunError, RunInfo, load_run_info

MEMORY_BUDGET = 1.2e9  # bytes the probability restoration may take, beyond the scan itself
PATCH_MULTIPLE = 32
MAX_IN_PLANE = 1024  # a segmentation grid wider than this falls back to the training patch


class InputError(ValueError):
    """A scan that cannot be segmented (2D, multi-channel, ...); the message says why."""


@dataclass
class Prediction:
    """One scan's segmentation.

    ``label_map``: the dataset's on-disk label values, on the input's exact grid.
    ``confidence``: the domain recognition's confidence (None when the domain was given).
    ``probabilities``: class probabilities on the input's grid (vector image, background first,
    then ``structures`` in order), only when requested.
    """

    label_map: sitk.Image
    domain: str
    structures: dict[str, int]
    confidence: float | None = None
    decision: DomainDecision | None = None
    probabilities: sitk.Image | None = None
    seconds: float = 0.0
    details: dict = field(default_factory=dict)


@dataclass(frozen=True)
class _Route:
    """How a domain runs: its model, the head/BN index there, and the channel selection."""

    model: str
    index: int
    select: tuple[int, ...] | None  # union models: the union channels of the domain's classes


class Predictor:
    """Segment scans with a trained run: ``Predictor.from_run(RUN).predict(scan, domain)``."""

    def __init__(
        self,
        run_dir: Path,
        config: ExperimentConfig,
        info: RunInfo,
        networks: dict[str, nn.Module],
        device: torch.device,
        batch_size: int = 16,
        tta: bool = False,
        calibration: Calibration | None = None,
    ):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.run_dir = Path(run_dir)
        self.config = config
        self.info = info
        self.networks = networks
        self.device = device
        self.batch_size = int(batch_size)
        self.tta = bool(tta)
        self.calibration = calibration or Calibration()
        self.label_space: LabelSpace = info.label_space()
        self.routes = {d.name: self._route(d.name) for d in info.domains}

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        device: str = "cpu",
        batch_size: int = 16,
        tta: bool = False,
        calibrate: bool = True,
    ) -> Predictor:
        """Load a run folder's config, index and every model it ships.

        With ``calibrate``, a run without ``domain_calibration.json`` whose study folder is
        reachable is calibrated on a few of its held-out cases (once; the file is stored).
        """
        from jointseg.models import load_model
        from jointseg.models.checkpoint import INDEX_FILE, WEIGHTS_FILE

        run = Path(run)
        if not run.is_dir():
            raise RunError(f"{run}: no such run folder")
        info = load_run_info(run)
        config_path = run / "config.yaml"
        if not config_path.is_file():
            raise RunError(f"{run}: no config.yaml; not a complete run folder")
        config = load_config(config_path)
        if not info.models:
            raise RunError(f"{run}: the run lists no model; train one with `jointseg train`")
        torch_device = _device(device)
        networks: dict[str, nn.Module] = {}
        for entry in info.models:
            folder = run / entry.path
            missing = [f for f in (INDEX_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
            if missing:
                raise RunError(
                    f"{run}: model {entry.name!r} is missing {', '.join(missing)} in {folder}; "
                    "the run is incomplete (still training, or copied without models/)"
                )
            net, _ = load_model(folder, map_location=torch_device)
            networks[entry.name] = net.eval()
        predictor = cls(
            run, config, info, networks, torch_device, batch_size, tta, Calibration.load(run)
        )
        if calibrate and not Calibration.exists(run):
            from jointseg.inference.calibration import calibrate_from_study

            calibrate_from_study(predictor)
        return predictor

    @property
    def domains(self) -> list[str]:
        return [d.name for d in self.info.domains]

    def structures(self, domain: str) -> dict[str, int]:
        """Structure name -> on-disk label value of ``domain``."""
        return dict(self.info.domain(domain).structures)

    # ----------------------------------------------------------------------------- routing
    def _route(self, domain: str) -> _Route:
        entry: ModelEntry = self.info.model_for(domain)
        net = self.networks[entry.name]
        index = entry.domains.index(domain) if getattr(net, "num_heads", 1) > 1 else 0
        select = None
        if entry.label_space == "union":
            position = self.label_space.domain_index(domain)
            select = tuple(int(c) for c in self.label_space.local_to_union(position))
        return _Route(entry.name, index, select)

    # ------------------------------------------------------------------------ prediction
    def predict(
        self,
        scan: str | Path | sitk.Image,
        domain: str = "auto",
        return_probabilities: bool = False,
    ) -> Prediction:
        """Segment one scan (a path to a file or DICOM folder, or an image).

        ``domain``: a domain name of the run, or ``"auto"`` to recognize it (refusing a scan
        that fits none with :class:`DomainRecognitionError`).
        """
        started = time.perf_counter()
        image = read_image(scan) if not isinstance(scan, sitk.Image) else scan
        check_scan(image)
        decision = None
        if domain == "auto":
            decision = self.recognize(image)
            domain = decision.domain  # type: ignore[assignment]
        else:
            self.info.domain(domain)
        route = self.routes[domain]
        cfg = self.segmentation_preprocessing(image)
        case = preprocess_case(image, None, cfg)
        volume, inverse = case.image, case.inverse
        del case
        keep = return_probabilities or self._probabilities_fit(image, inverse, route, domain)
        labels, probabilities = self._infer(route, volume, keep)
        del volume
        if probabilities is not None:
            local = restore_probabilities(probabilities, inverse)
        else:
            local = restore_labels(labels, inverse)
        prob_image = None
        if return_probabilities and probabilities is not None:
            prob_image = _restore_class_probabilities(probabilities, inverse)
        label_map = self._to_disk_values(local, domain)
        return Prediction(
            label_map=label_map,
            domain=domain,
            structures=self.structures(domain),
            confidence=None if decision is None else decision.confidence,
            decision=decision,
            probabilities=prob_image,
            seconds=time.perf_counter() - started,
            details={"slices": int(labels.shape[0]), "grid": list(labels.shape[1:]),
                     "tta": self.tta, "smooth_restore": probabilities is not None},
        )  # fmt: skip

    def segmentation_preprocessing(self, image: sitk.Image) -> PreprocessingConfig:
        """The training preprocessing with a patch covering the scan's whole in-plane view."""
        cfg = self.config.preprocessing
        size = np.asarray(image.GetSize())
        spacing = np.asarray(image.GetSpacing())
        perm, _ = canonical_axes(image.GetDirection())
        c_size, c_spacing = size[perm], spacing[perm]
        slice_axis = 2 - resolve_slice_axis(tuple(float(s) for s in c_spacing), cfg.slice_axis)
        w_axis, h_axis = sorted({0, 1, 2} - {slice_axis})
        target = cfg.target_spacing

        def extent(axis: int, trained: int) -> int:
            n = c_size[axis] * c_spacing[axis] / target if target else c_size[axis]
            rounded = PATCH_MULTIPLE * math.ceil(round(float(n), 3) / PATCH_MULTIPLE)
            return max(trained, rounded)

        patch = (extent(h_axis, cfg.patch_size[0]), extent(w_axis, cfg.patch_size[1]))
        if max(patch) > MAX_IN_PLANE:
            return cfg
        return cfg.model_copy(update={"patch_size": patch})

    def _probabilities_fit(
        self, image: sitk.Image, inverse: InverseInfo, route: _Route, domain: str
    ) -> bool:
        voxels = math.prod(image.GetSize())
        classes = self.info.domain(domain).labels().num_classes
        slices = math.prod(inverse.slice_shape)
        need = voxels * (4 + 4 + 1 + 1) + slices * classes * 2
        return need <= MEMORY_BUDGET

    @torch.no_grad()
    def _infer(
        self, route: _Route, volume: np.ndarray, keep_probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Argmax slices [S, H, W] (uint8) and, if asked, float16 probabilities [S, C, H, W]."""
        net = self.networks[route.model]
        labels = np.zeros(volume.shape, dtype=np.uint8)
        probabilities = None
        for start in range(0, volume.shape[0], self.batch_size):
            stop = min(start + self.batch_size, volume.shape[0])
            x = torch.from_numpy(np.ascontiguousarray(volume[start:stop])).unsqueeze(1)
            probs = self.softmax(net, x.to(self.device), route)
            if keep_probabilities and probabilities is None:
                probabilities = np.zeros(
                    (volume.shape[0], probs.shape[1], *volume.shape[1:]), np.float16
                )
            if probabilities is not None:
                probabilities[start:stop] = probs.to("cpu", torch.float16).numpy()
            labels[start:stop] = probs.argmax(1).to("cpu", torch.uint8).numpy()
        return labels, probabilities

    def softmax(self, net: nn.Module, x: Tensor, route: _Route) -> Tensor:
        """Class probabilities [B, C, H, W] of a batch, averaged over flips with TTA."""
        total = None
        flips = self.tta_flips() if self.tta else [()]
        for dims in flips:
            xi = torch.flip(x, dims) if dims else x
            logits = _head_logits(net, model_input(net, xi), route.index)
            if route.select is not None:
                logits = logits[:, list(route.select)]
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total + probs
        return total / len(flips)

    def tta_flips(self) -> list[tuple[int, ...]]:
        """Flip sets of TTA: every combination of the in-plane axes the training flipped
        (``augmentation.flip_axes``), or of both in-plane axes when it flipped none."""
        axes = sorted(set(self.config.augmentation.flip_axes)) or [0, 1]
        dims = [2 + a for a in axes]
        flips: list[tuple[int, ...]] = [()]
        for d in dims:
            flips += [(*f, d) for f in flips]
        return flips

    def _to_disk_values(self, local: sitk.Image, domain: str) -> sitk.Image:
        lut = self.info.domain(domain).labels().disk_values()
        if np.array_equal(lut, np.arange(len(lut))):
            return sitk.Cast(local, sitk.sitkUInt8) if lut.max() < 256 else local
        dtype = np.uint8 if lut.max() < 256 else np.uint16
        array = lut.astype(dtype)[sitk.GetArrayViewFromImage(local)]
        out = sitk.GetImageFromArray(array)
        out.CopyInformation(local)
        return out

    # ------------------------------------------------------------------ domain recognition
    def recognition_volume(self, image: sitk.Image) -> np.ndarray:
        """The scan preprocessed exactly as the training slices were (training patch)."""
        return preprocess_case(image, None, self.config.preprocessing).image

    def candidates(self) -> list[Candidate]:
        return [Candidate(name, self.networks[r.model], r.index) for name, r in self.routes.items()]

    def recognize(self, scan: str | Path | sitk.Image, refuse: bool = True) -> DomainDecision:
        """Which domain the scan belongs to; raises :class:`DomainRecognitionError` when none
        fits (unless ``refuse`` is False, then ``decision.domain`` is None)."""
        image = read_image(scan) if not isinstance(scan, sitk.Image) else scan
        check_scan(image)
        volume = self.recognition_volume(image)
        decision = recognize_domain(self.candidates(), volume, self.calibration, self.batch_size)
        decision = self._break_ties(decision, volume)
        if decision.domain is None and refuse:
            raise DomainRecognitionError(refusal_message(decision))
        return decision

    def _break_ties(self, decision: DomainDecision, volume: np.ndarray) -> DomainDecision:
        """Domains sharing one model and BN (shared/union schemes) score the same; among them
        pick the one whose structures cover most of the union head's predicted foreground."""
        if decision.domain is None:
            return decision
        best = self.routes[decision.domain]
        tied = [
            s.name
            for s in decision.scores
            if (self.routes[s.name].model, self.routes[s.name].index) == (best.model, best.index)
        ]
        if len(tied) < 2 or best.select is None:
            return decision
        net = self.networks[best.model]
        with torch.no_grad():
            logits = _head_logits(
                net, model_input(net, subsample_tensor(volume).to(self.device)), 0
            )
        union = logits.argmax(1).cpu().numpy()
        counts = np.bincount(union.ravel(), minlength=self.label_space.num_classes)
        cover = {}
        for name in tied:
            channels = list(self.routes[name].select or ())[1:]
            cover[name] = float(counts[channels].sum())
        total = sum(cover.values()) or 1.0
        winner = max(tied, key=lambda n: cover[n])
        return replace(decision, domain=winner, confidence=cover[winner] / total)

    def calibrate_domains(
        self, scans: dict[str, list[str | Path | sitk.Image]], factor: float = CALIBRATION_FACTOR
    ) -> Calibration:
        """Measure in-domain distances on scans of known domain; save the run's calibration."""
        from jointseg.inference.calibration import calibrate_domains

        return calibrate_domains(self, scans, factor)


def subsample_tensor(volume: np.ndarray) -> Tensor:
    """The recognition subsample of a slice stack [S, H, W] as a tensor [N, 1, H, W]."""
    picked = volume[subsample_indices(len(volume))]
    return torch.from_numpy(np.ascontiguousarray(picked, dtype=np.float32)).unsqueeze(1)


def _head_logits(net: nn.Module, x: Tensor, index: int) -> Tensor:
    domains = torch.full((x.shape[0],), index, dtype=torch.long, device=x.device)
    out = net(x, domains)
    return (
        next(iter(out.logits.values())) if len(out.logits) == 1 else torch.stack(out.per_sample())
    )


def _restore_class_probabilities(probabilities: np.ndarray, inverse: InverseInfo) -> sitk.Image:
    channels = []
    for c in range(probabilities.shape[1]):
        grid = inverse.grid_image(np.ascontiguousarray(probabilities[:, c], dtype=np.float32))
        channels.append(
            inverse.to_original(grid, sitk.sitkLinear, 1.0 if c == 0 else 0.0, sitk.sitkFloat32)
        )
    return sitk.Compose(channels)


def check_scan(image: sitk.Image) -> None:
    """Refuse what cannot be a 3D single-channel scan, with the reason."""
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"the scan has {image.GetNumberOfComponentsPerPixel()} components per voxel; "
            "a single-channel scan is needed"
        )
    if image.GetDimension() != 3:
        raise InputError(
            f"the scan is {image.GetDimension()}D (size {image.GetSize()}); a 3D scan is needed"
        )
    thin = [n for n in image.GetSize() if n < 2]
    if thin:
        raise InputError(
            f"the scan is a single 2D slice (size {image.GetSize()}); a 3D scan is needed"
        )


def _device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    try:
        return torch.device(name)
    except RuntimeError as error:
        raise ValueError(f"unknown device {name!r}: {error}") from None
