"""The Predictor: a trained run folder -> label maps in each scan's own geometry.

Slices stream through the network in batches; per-slice class probabilities are kept as float16
in the slice grid and restored class by class onto the scan's grid (linear, then argmax) when
that fits :data:`MEMORY_BUDGET`, else the argmax slices are restored by nearest neighbour. The
slices cover the scan's whole in-plane field of view, as in training's slice cache; the fully
convolutional network runs on them in one pass, or by sliding windows beyond
``inference.max_in_plane`` (:class:`~jointseg.models.inferer.WholeViewInferer`); each slice goes
in with the context slices its network was trained with (the model's ``context_slices``).
Domain recognition sees the same slices.
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

from jointseg.config import ExperimentConfig, load_config
from jointseg.data.context import context_stack
from jointseg.data.labels import LabelSpace
from jointseg.data.preprocess import (
    PreprocessedCase,
    preprocess_case,
    restore_labels,
    restore_probabilities,
)
from jointseg.inference.slices import (
    InputError,
    check_scan,
    flip_sets,
    load_scan,
    restore_class_probabilities,
    to_disk_values,
    torch_device,
)
from jointseg.models.inferer import WholeViewInferer
from jointseg.models.network import context_slices, domain_logits, head_index, head_logits
from jointseg.recognition.calibration import CALIBRATION_FACTOR, Calibration
from jointseg.recognition.decision import (
    Candidate,
    DomainDecision,
    DomainRecognitionError,
    recognize_domain,
    refusal_message,
)
from jointseg.recognition.features import DomainPath, subsample_tensor
from jointseg.recognition.references import REFERENCE_FILE, DomainReference, load_references
from jointseg.recognition.study import calibrate_domains, calibrate_from_study
from jointseg.runs import RunError, RunInfo, load_run_info

__all__ = ["InputError", "Prediction", "Predictor", "check_scan"]

MEMORY_BUDGET = 1.0e9  # bytes the probability restoration may take, beyond the scan itself

Scan = str | Path | sitk.Image


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
        self.references: dict[str, DomainReference] = {}
        self.label_space: LabelSpace = info.label_space()
        self.routes = {d.name: self._route(d.name) for d in info.domains}
        self.inferer = WholeViewInferer.from_config(config.inference)

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
        if not (run / "config.yaml").is_file():
            raise RunError(f"{run}: no config.yaml; not a complete run folder")
        config = load_config(run / "config.yaml")
        if not info.models:
            raise RunError(f"{run}: the run lists no model; train one with `jointseg train`")
        where = torch_device(device)
        networks: dict[str, nn.Module] = {}
        for entry in info.models:
            folder = run / entry.path
            missing = [f for f in (INDEX_FILE, WEIGHTS_FILE) if not (folder / f).is_file()]
            if missing:
                raise RunError(
                    f"{run}: model {entry.name!r} is missing {', '.join(missing)} in {folder}; "
                    "the run is incomplete (still training, or copied without models/)"
                )
            net, _ = load_model(folder, map_location=where)
            networks[entry.name] = net.eval()
        references = load_references(run)
        # references of an older format are ignored, and with them the calibration measured
        # in their units: recognition falls back to the BN statistics and their calibration
        stale = (run / REFERENCE_FILE).is_file() and not references
        calibration = Calibration() if stale else Calibration.load(run)
        predictor = cls(run, config, info, networks, where, batch_size, tta, calibration)
        predictor.references = references
        if calibrate and (stale or not Calibration.exists(run)):
            calibration = calibrate_from_study(
                info, run, predictor.candidate, predictor._scan_volume, predictor.batch_size
            )
            predictor.calibration = calibration or predictor.calibration
        return predictor

    @property
    def domains(self) -> list[str]:
        return [d.name for d in self.info.domains]

    def structures(self, domain: str) -> dict[str, int]:
        """Structure name -> on-disk label value of ``domain``."""
        return dict(self.info.domain(domain).structures)

    def _route(self, domain: str) -> DomainPath:
        """How ``domain`` runs: its model's network, the head/BN index there and, for a union
        model, the union channels of its classes."""
        entry = self.info.model_for(domain)
        net = self.networks[entry.name]
        index = head_index(net, entry.domains, domain)
        select = None
        if entry.label_space == "union":
            select = self.label_space.union_channels(domain)
        return DomainPath(net, index, select)

    # ------------------------------------------------------------------------ prediction
    def predict(
        self, scan: Scan, domain: str = "auto", return_probabilities: bool = False
    ) -> Prediction:
        """Segment one scan (a path to a file or DICOM folder, or an image).

        ``domain``: a domain name of the run, or ``"auto"`` to recognize it (refusing a scan
        that fits none with :class:`DomainRecognitionError`).
        """
        started = time.perf_counter()
        image = load_scan(scan)
        case = self.recognition_case(image)
        decision = None
        if domain == "auto":
            decision = self._recognize(case.image)
            domain = decision.domain  # type: ignore[assignment]
        else:
            self.info.domain(domain)
        route = self.routes[domain]
        inverse = case.inverse
        classes = len(self.structures(domain)) + 1
        smooth = return_probabilities or _probabilities_fit(image, inverse.slice_shape, classes)
        labels, probabilities = self._infer(route, case.image, smooth)
        grid = labels.shape[1:]
        del case
        if probabilities is not None:
            local = restore_probabilities(probabilities, inverse)
        else:
            local = restore_labels(labels, inverse)
        prob_image = None
        if return_probabilities and probabilities is not None:
            prob_image = restore_class_probabilities(probabilities, inverse)
        lut = self.info.domain(domain).labels().disk_values()
        return Prediction(
            label_map=to_disk_values(local, lut),
            domain=domain,
            structures=self.structures(domain),
            confidence=None if decision is None else decision.confidence,
            decision=decision,
            probabilities=prob_image,
            seconds=time.perf_counter() - started,
            details={"slices": int(labels.shape[0]), "grid": list(self.inferer.grid(*grid)),
                     "sliding_window": self.inferer.windowed(*grid), "tta": self.tta,
                     "smooth_restore": probabilities is not None},
        )  # fmt: skip

    @torch.no_grad()
    def _infer(
        self, route: DomainPath, volume: np.ndarray, keep_probabilities: bool
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Argmax slices [S, H, W] (uint8) and, if asked, float16 probabilities [S, C, H, W]."""
        net = route.net
        k = context_slices(net)
        labels = np.zeros(volume.shape, dtype=np.uint8)
        probabilities = None
        for start in range(0, volume.shape[0], self.batch_size):
            stop = min(start + self.batch_size, volume.shape[0])
            x = torch.from_numpy(context_stack(volume, np.arange(start, stop), k))
            probs = self.inferer(x.to(self.device), lambda t: self.softmax(net, t, route))
            if keep_probabilities and probabilities is None:
                shape = (volume.shape[0], probs.shape[1], *volume.shape[1:])
                probabilities = np.zeros(shape, np.float16)
            if probabilities is not None:
                probabilities[start:stop] = probs.to("cpu", torch.float16).numpy()
            labels[start:stop] = probs.argmax(1).to("cpu", torch.uint8).numpy()
        return labels, probabilities

    def softmax(self, net: nn.Module, x: Tensor, route: DomainPath) -> Tensor:
        """Class probabilities [B, C, H, W] of a batch, averaged over flips with TTA."""
        total = None
        flips = self.tta_flips() if self.tta else [()]
        for dims in flips:
            logits = head_logits(net, torch.flip(x, dims) if dims else x, route.index)
            logits = domain_logits(logits, route.select)
            probs = torch.softmax(logits.float(), dim=1)
            probs = torch.flip(probs, dims) if dims else probs
            total = probs if total is None else total + probs
        return total / len(flips)

    def tta_flips(self) -> list[tuple[int, ...]]:
        """The flips TTA averages over: the in-plane axes training flipped, else both."""
        return flip_sets(self.config.augmentation.flip_axes)

    # ------------------------------------------------------------------ domain recognition
    def recognition_case(self, image: sitk.Image) -> PreprocessedCase:
        """The scan preprocessed exactly as the training slices were (whole view)."""
        return preprocess_case(image, None, self.config.preprocessing)

    def recognition_volume(self, image: sitk.Image) -> np.ndarray:
        return self.recognition_case(image).image

    def _scan_volume(self, scan: Scan) -> np.ndarray:
        return self.recognition_volume(load_scan(scan))

    def candidates(self) -> list[Candidate]:
        """Every domain as a recognition candidate (see :meth:`candidate`)."""
        return [self.candidate(name) for name in self.routes]

    def candidate(self, domain: str) -> Candidate:
        """``domain`` with its network; with its measured reference when the run has one for
        every domain (distances of both kinds are not comparable)."""
        complete = all(name in self.references for name in self.routes)
        reference = self.references[domain] if complete else None
        return Candidate(domain, self.routes[domain], reference)

    def recognize(self, scan: Scan, refuse: bool = True) -> DomainDecision:
        """Which domain the scan belongs to; raises :class:`DomainRecognitionError` when none
        fits (unless ``refuse`` is False, then ``decision.domain`` is None)."""
        image = load_scan(scan)
        return self._recognize(self.recognition_volume(image), refuse)

    def _recognize(self, volume: np.ndarray, refuse: bool = True) -> DomainDecision:
        decision = recognize_domain(self.candidates(), volume, self.calibration, self.batch_size)
        decision = self._break_ties(decision, volume)
        if decision.domain is None and refuse:
            raise DomainRecognitionError(refusal_message(decision))
        return decision

    def _break_ties(self, decision: DomainDecision, volume: np.ndarray) -> DomainDecision:
        """Without references, domains sharing one model and BN (shared/union schemes) score
        the same; among them pick the one whose structures cover most of the union head's
        predicted foreground."""
        if decision.domain is None:
            return decision
        best = self.routes[decision.domain]
        top = decision.scores[0].distance
        tied = [
            s.name
            for s in decision.scores
            if (self.routes[s.name].net, self.routes[s.name].index) == (best.net, best.index)
            and math.isclose(s.distance, top, rel_tol=1e-9)
        ]
        if len(tied) < 2 or best.select is None:
            return decision
        net = best.net
        with torch.no_grad():
            slices = subsample_tensor(volume, context_slices(net))
            logits = head_logits(net, slices.to(self.device), 0)
        counts = np.bincount(
            logits.argmax(1).cpu().numpy().ravel(), minlength=self.label_space.num_classes
        )
        cover = {n: float(counts[list(self.routes[n].select or ())[1:]].sum()) for n in tied}
        winner = max(tied, key=lambda n: cover[n])
        confidence = cover[winner] / (sum(cover.values()) or 1.0)
        return replace(decision, domain=winner, confidence=confidence)

    def calibrate_domains(
        self, scans: dict[str, list[Scan]], factor: float = CALIBRATION_FACTOR
    ) -> Calibration:
        """Measure in-domain distances on scans of known domain; save the run's calibration."""
        calibration = calibrate_domains(
            self.candidate, self._scan_volume, scans, factor, self.batch_size
        )
        calibration.save(self.run_dir)
        self.calibration = calibration
        return calibration


def _probabilities_fit(image: sitk.Image, slice_shape: tuple[int, ...], classes: int) -> bool:
    """Whether class-wise restoration fits :data:`MEMORY_BUDGET`.

    It holds the float16 probabilities (2 bytes per slice voxel and class), one class as float32
    on the slice grid and its SimpleITK copy (8 bytes per slice voxel), and on the scan's grid
    the restored class, the running maximum, the labels and a mask (10 bytes per voxel).
    """
    slices = math.prod(slice_shape)
    need = math.prod(image.GetSize()) * 10 + slices * (classes * 2 + 8)
    return need <= MEMORY_BUDGET
