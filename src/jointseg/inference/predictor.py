"""The Predictor: a trained run folder -> label maps in each scan's own geometry.

It composes the prediction stages and holds no algorithm of its own::

    read + check        inference.slices.load_scan (refused from the header when possible)
    preprocess (once)   data.preprocess.preprocess_case: whole-view slices, as in training
    recognize (auto)    recognition.recognizer.DomainRecognizer on the same slices (the run's
                        references and calibration, the default calibration when it has none;
                        with the run's anatomy statistics, every domain's head segments the
                        slices for the anatomy check)
    adapt (adapt_bn)    models.dsbn.adapted_domain_statistics: the domain's BN statistics
                        re-estimated on the scan's slices by one pass of the inferer (below),
                        restored after the scan
    infer               models.inferer.WholeViewInferer.predict_volume: batches, context slices,
                        sliding windows beyond ``inference.max_in_plane``, TTA, float16
                        probabilities kept when restoration_fits (the memory policy)
    restore             inference.slices.restore_prediction: onto the scan's grid, disk values

Cleaning (postprocessing) and writing follow in ``inference.predict`` (``inference.writer``).
A domain runs through its :class:`~jointseg.models.network.Route` (network, head, union
channels; :mod:`jointseg.models.run_networks`). Loading a run reads it and writes nothing.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

from jointseg.config import ExperimentConfig
from jointseg.data.labels import LabelSpace
from jointseg.data.preprocess import PreprocessedCase, preprocess_case
from jointseg.inference.backends import Backend, TorchBackend  # the network call
from jointseg.inference.packaged import resolve_run
from jointseg.inference.slices import InputError, check_scan, load_scan, restore_prediction
from jointseg.models.dsbn import adapted_domain_statistics
from jointseg.models.inferer import WholeViewInferer, flip_sets, restoration_fits
from jointseg.models.network import Route
from jointseg.models.run_networks import domain_routes, load_run_networks
from jointseg.recognition.calibration import CALIBRATION_FACTOR, Calibration
from jointseg.recognition.decision import Candidate, DomainDecision
from jointseg.recognition.recognizer import DomainRecognizer
from jointseg.recognition.references import DomainReference
from jointseg.runs import RunError, RunFolder, RunInfo
from jointseg.utils.compute import resolve_precision, to_memory_format, torch_device

__all__ = ["InputError", "Prediction", "Predictor", "check_adapt_bn", "check_scan"]

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


def check_adapt_bn(adapt_bn: bool, backend: str) -> None:
    """Raise ``ValueError`` when BN adaptation is asked of a backend other than torch (an
    exported graph's batch-norm statistics are fixed)."""
    if adapt_bn and backend not in ("torch", "auto"):
        raise ValueError(
            f"BN adaptation (--adapt-bn) needs the torch backend; the {backend} backend runs "
            "exported graphs whose batch-norm statistics are fixed"
        )


class Predictor:
    """Segment scans with a trained run: ``Predictor.from_run(RUN).predict(scan, domain)``.

    ``adapt_bn``: re-estimate the chosen domain's batch-norm statistics on each scan before
    segmenting it (:meth:`adapted_to`; the torch backend only). Not thread-safe then: the
    network's statistics change while a scan is predicted.
    """

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
        precision: str = "auto",
        channels_last: bool = True,
        adapt_bn: bool = False,
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
        self.adapt_bn = bool(adapt_bn)
        # the network's computing precision (resolved: "32", "bf16" or "16") and memory format
        self.precision = resolve_precision(precision, device)
        self.channels_last = bool(channels_last)
        for net in networks.values():
            to_memory_format(net, self.channels_last)
        self.label_space: LabelSpace = info.label_space()
        self.routes = domain_routes(info, networks)
        self.inferer = WholeViewInferer.from_config(config.inference)
        # the network call, or OnnxRuntimeBackend (inference/backends.py)
        self.backend: Backend = TorchBackend(self.precision, device, self.channels_last)
        self.recognizer = DomainRecognizer(
            self.routes, self.label_space.num_classes, device, self.batch_size,
            calibration=calibration or Calibration(), segment=self.segment_slices,
        )  # fmt: skip

    @classmethod
    def from_run(
        cls,
        run: str | Path,
        device: str = "cpu",
        batch_size: int = 16,
        tta: bool = False,
        precision: str = "auto",
        adapt_bn: bool = False,
    ) -> Predictor:
        """Load a run folder's config, index, every model it ships and its recognition files;
        it writes nothing (a run without ``domain_calibration.json`` recognizes domains with the
        default calibration: ``jointseg calibrate`` measures it).

        ``run`` may be the word ``pretrained``: the model the package ships. ``precision``:
        auto, 32 or bf16 (:func:`~jointseg.utils.compute.resolve_precision`). ``adapt_bn``: see
        the class.
        """
        run = resolve_run(run)
        if not run.is_dir():
            raise RunError(f"{run}: no such run folder")
        folder = RunFolder(run)
        info = folder.info()
        config = folder.config()
        where = torch_device(device)
        networks = load_run_networks(folder, info, where)
        predictor = cls(
            run, config, info, networks, where, batch_size, tta, precision=precision,
            channels_last=config.training.channels_last, adapt_bn=adapt_bn,
        )  # fmt: skip
        predictor.recognizer.load_run(run)
        return predictor

    @property
    def domains(self) -> list[str]:
        return [d.name for d in self.info.domains]

    def structures(self, domain: str) -> dict[str, int]:
        """Structure name -> on-disk label value of ``domain``."""
        return dict(self.info.domain(domain).structures)

    # ------------------------------------------------------------------------ prediction
    def predict(
        self, scan: Scan, domain: str = "auto", return_probabilities: bool = False
    ) -> Prediction:
        """Segment one scan (a path to a file or DICOM folder, or an image).

        ``domain``: a domain name of the run, or ``"auto"`` to recognize it (refusing a scan
        that fits none with :class:`DomainRecognitionError`; recognition runs on the unadapted
        network, also with ``adapt_bn``).
        """
        started = time.perf_counter()
        return self.predict_checked(load_scan(scan), domain, return_probabilities, started)

    def predict_checked(
        self,
        image: sitk.Image,
        domain: str = "auto",
        return_probabilities: bool = False,
        started: float | None = None,
    ) -> Prediction:
        """:meth:`predict` of an image :func:`load_scan` has read and checked."""
        started = time.perf_counter() if started is None else started
        self.check_backend()
        case = self.preprocess(image)
        decision = None
        if domain == "auto":
            decision = self.recognizer.recognize(case.image, spacing=case.inverse.slice_spacing)
            domain = decision.domain  # type: ignore[assignment]
        else:
            self.info.domain(domain)
        route = self.routes[domain]
        inverse = case.inverse
        classes = len(self.structures(domain)) + 1
        smooth = return_probabilities or restoration_fits(
            image.GetSize(), inverse.slice_shape, classes
        )
        with self.adapted_to(case.image, route):
            labels, probabilities = self.inferer.predict_volume(
                case.image, lambda x: self.backend(x, route), route.context_slices,
                self.batch_size, self.device,
                self.tta_flips() if self.tta else [()], keep_probabilities=smooth,
            )  # fmt: skip
        grid = labels.shape[1:]
        del case
        lut = self.info.domain(domain).labels().disk_values()
        label_map, prob_image = restore_prediction(
            labels, probabilities, inverse, lut, return_probabilities
        )
        return Prediction(
            label_map=label_map,
            domain=domain,
            structures=self.structures(domain),
            confidence=None if decision is None else decision.confidence,
            decision=decision,
            probabilities=prob_image,
            seconds=time.perf_counter() - started,
            details={"slices": int(labels.shape[0]), "grid": list(self.inferer.grid(*grid)),
                     "sliding_window": self.inferer.windowed(*grid), "tta": self.tta,
                     "smooth_restore": probabilities is not None, "adapt_bn": self.adapt_bn},
        )  # fmt: skip

    def check_backend(self) -> None:
        """Refuse what the backend cannot do (:func:`check_adapt_bn`)."""
        check_adapt_bn(self.adapt_bn, self.backend.name)

    @contextmanager
    def adapted_to(self, volume: np.ndarray, route: Route) -> Iterator[None]:
        """With ``adapt_bn``: inside the block, ``route``'s BN statistics re-estimated on the
        preprocessed slices ``volume`` [S, H, W] by one pass of the inferer as prediction runs
        it (batches, context slices, padding, sliding windows; no TTA, the same precision),
        restored after it. Without ``adapt_bn``: nothing."""
        if not self.adapt_bn:
            yield
            return
        self.check_backend()
        with adapted_domain_statistics(
            route.net, route.index, lambda: self.segment_slices(volume, route)
        ):
            yield

    def tta_flips(self) -> list[tuple[int, ...]]:
        """The flips TTA averages over: the in-plane axes training flipped, else both."""
        return flip_sets(self.config.augmentation.flip_axes)

    def preprocess(self, image: sitk.Image) -> PreprocessedCase:
        """The scan preprocessed exactly as the training slices were (whole view)."""
        return preprocess_case(image, None, self.config.preprocessing)

    # ------------------------------------------------------------------ domain recognition
    def recognition_volume(self, image: sitk.Image) -> np.ndarray:
        """The slices recognition reads: the preprocessed scan (:meth:`preprocess`)."""
        return self.preprocess(image).image

    def segment_slices(self, volume: np.ndarray, route: Route) -> np.ndarray:
        """Local labels [S, H, W] of a preprocessed slice stack through ``route`` (no TTA): the
        anatomy check's segmentation."""
        labels, _ = self.inferer.predict_volume(
            volume, lambda x: self.backend(x, route), route.context_slices, self.batch_size,
            self.device,
        )  # fmt: skip
        return labels

    def _scan_volume(self, scan: Scan) -> np.ndarray:
        return self.recognition_volume(load_scan(scan))

    @property
    def calibration(self) -> Calibration:
        """The recognizer's calibration."""
        return self.recognizer.calibration

    @property
    def references(self) -> dict[str, DomainReference]:
        """The run's measured recognition references (empty without them)."""
        return self.recognizer.references

    def candidates(self) -> list[Candidate]:
        """Every domain as a recognition candidate."""
        return self.recognizer.candidates()

    def recognize(self, scan: Scan, refuse: bool = True) -> DomainDecision:
        """Which domain the scan belongs to; raises
        :class:`~jointseg.recognition.decision.DomainRecognitionError` when none fits (unless
        ``refuse`` is False, then ``decision.domain`` is None)."""
        case = self.preprocess(load_scan(scan))
        return self.recognizer.recognize(case.image, refuse, case.inverse.slice_spacing)

    def calibrate_domains(
        self,
        scans: Mapping[str, Sequence[Scan]],
        factor: float = CALIBRATION_FACTOR,
        out: str | Path | None = None,
    ) -> Calibration:
        """Measure in-domain distances on scans of known domain (domain -> scans), use the
        calibration and store it in ``out`` (default: the run folder)."""
        calibration = self.recognizer.calibrate(scans, self._scan_volume, factor)
        calibration.save(self.run_dir if out is None else out)
        return calibration
