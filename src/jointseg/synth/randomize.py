"""Domain-randomized rendering (``jointseg synth --randomize``): the same subjects, any contrast.

After SynthSeg (Billot et al., Medical Image Analysis 2023): the anatomy of a subject (its
:class:`~jointseg.synth.subject.SubjectParams`, so its tissue phantom and labels) is the
realistic generator's, but every tissue class gets a random intensity (fat bright or dark,
fluid bright or dark, any marrow, cortex, cartilage, physis, muscle...), and the acquisition a
random plane (sagittal, coronal, axial or oblique), in-plane resolution (0.3-1.0 mm), slice
thickness (1-6 mm), field of view (partial ones included), bias field, surface-coil fall-off,
motion ghosts and Rician noise. Resolution is simulated as in the realistic mode: tissues are
built on sub-slices about 1.5 mm thick and averaged over the slice, then blurred in-plane
(0.3-0.8 pixel). A network trained on such images cannot lean on one protocol's contrast.

The random choices of one rendering (:class:`Rendering`) come from their own stream,
``SeedSequence(seed, spawn_key=(*subject key, RANDOMIZE_STREAM))``: the subject's anatomy is
the realistic mode's, and a rendering is a pure function of the study seed and the subject.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from jointseg.data.manifest import DatasetManifest
from jointseg.synth import phantom as ph
from jointseg.synth.anatomy import joint_spec, posture
from jointseg.synth.geometry import (
    SUB_SLICE_MM,
    ScanGeometry,
    plane_direction,
    rotation_from_degrees,
    scan_geometry,
)
from jointseg.synth.mr import acquire, fine_signals, slice_average, surface_coil
from jointseg.synth.subject import PROTOCOLS, SubjectParams

#: The study record of a randomized run (next to a realistic run's ``synth.json``).
RECORD = "synth_randomized.json"
#: The spawn-key entry appended to a subject's key for its rendering's draws.
RANDOMIZE_STREAM = 1
#: Randomized datasets are numbered this much above their joint's realistic dataset.
DATASET_OFFSET = 100
#: Acquisition planes, drawn with equal probability; a share of them oblique (tilted further).
PLANES = ("sagittal", "coronal", "axial")
OBLIQUE_SHARE = 0.3
PIXEL_MM = (0.3, 1.0)
THICKNESS_MM = (1.0, 6.0)
#: Tilt (degrees, about each axis) of an oblique plane, and of the others.
OBLIQUE_DEGREES = 35.0
STRAIGHT_DEGREES = 4.0
#: Field of view relative to the protocol's (scaled to the child): below 1, a partial one;
#: its centre moves by up to this fraction of the field of view along each axis.
FOV_FACTOR = (0.55, 1.3)
CENTRE_SHIFT = 0.2
#: Coverage along the slice direction relative to the protocol's (scaled to the child).
COVERAGE_FACTOR = (0.5, 1.2)
#: The largest in-plane matrix; a finer pixel then narrows the field of view.
MAX_MATRIX = 384
#: The most sub-slice voxels of one volume (about 1.5 times a realistic knee): thin slices
#: at a fine pixel then cover less (fewer slices).
MAX_FINE_VOXELS = 6.0e6
MIN_SLICES = 8
#: Per tissue texture amplitude (relative signal variation), in-plane blur (pixels), bias
#: amplitude, signal-to-noise ratio (of the mid-grey 0.5), share of moving children and their
#: phase error (radians), share of surface coils and their reach (adult mm).
TEXTURE = (0.02, 0.25)
BLUR_PIXELS = (0.3, 0.8)
BIAS = (0.0, 0.4)
SNR = (6.0, 40.0)
MOTION_SHARE, MOTION = 0.3, (0.04, 0.25)
COIL_SHARE, COIL_REACH_MM = 0.3, (50.0, 90.0)
#: Share of renderings whose background (air) is not dark.
BRIGHT_AIR_SHARE = 0.2
DARK_AIR = 0.08
#: Tissues with no fat signal of their own (short T2* or none).
FAT_FREE = (ph.AIR, ph.CORTEX, ph.LUNG)
REFERENCE = 0.5


@dataclass
class Rendering:
    """Every random choice of one randomized rendering of a subject (kept in the study record).

    ``plane`` 'protocol' keeps the subject's realistic scan geometry (then ``pixel_mm`` ...
    ``shift_mm`` are unused); intensities are per tissue class in ``phantom.TISSUE_NAMES`` order.
    """

    plane: str
    oblique: bool
    tilt_deg: list[float]  # rotation of the plane about the LPS axes
    pixel_mm: float
    thickness_mm: float
    fov_mm: float
    slices: int
    shift_mm: list[float]
    water: list[float]  # intensity (0-1) of each tissue's water
    fat: float  # intensity of pure fat, mixed in by each voxel's fat fraction
    texture: list[float]
    blur: float
    bias: float
    snr: float
    motion: float
    coil: list[float] | None  # centre offset (child mm from the field's centre) and reach (mm)
    gain: float
    noise_seed: int

    def to_dict(self) -> dict:
        return asdict(self)


def randomized_folder(joint: str) -> str:
    """The randomized dataset's folder of ``joint``: ``Dataset102_KneeRandomized`` for the knee."""
    spec = joint_spec(joint)
    return f"Dataset{spec.dataset_id + DATASET_OFFSET:03d}_{spec.title}Randomized"


def randomized_manifest(realistic: DatasetManifest) -> DatasetManifest:
    """The ``dataset.json`` of a joint's randomized dataset, from its realistic one's."""
    return realistic.model_copy(
        update={
            "name": f"{realistic.name}Randomized",
            "description": (
                "The subjects of the realistic dataset of the same seed, rendered with random "
                "tissue intensities, acquisition plane, resolution, slice thickness, field of "
                "view, bias, coil, motion and noise (domain randomization); exact bone labels."
            ),
            "reference": f"jointseg synth --randomize (see {RECORD} at the study's top)",
            "protocol": {"randomized": True},
        }
    )


def rendering_rng(params: SubjectParams) -> np.random.Generator:
    """The generator of a subject's rendering: its own child of the study's ``SeedSequence``."""
    entropy, *key = params.seed
    return np.random.default_rng(
        np.random.SeedSequence(entropy, spawn_key=(*key, RANDOMIZE_STREAM))
    )


def _uniform(rng: np.random.Generator, bounds: tuple[float, float]) -> float:
    return float(rng.uniform(bounds[0], bounds[1]))


def _matrix_and_slices(
    fov: float, pixel: float, thickness: float, coverage: float
) -> tuple[float, int, int]:
    """(field of view, matrix, slices) within :data:`MAX_MATRIX` and :data:`MAX_FINE_VOXELS`."""
    matrix = int(round(fov / pixel))
    if matrix > MAX_MATRIX:
        matrix, fov = MAX_MATRIX, MAX_MATRIX * pixel
    matrix = max(matrix, 32)
    sub = max(1, int(np.ceil(thickness / SUB_SLICE_MM - 1e-6)))
    budget = int(MAX_FINE_VOXELS // (matrix * matrix * sub))
    slices = int(np.clip(round(coverage / thickness), MIN_SLICES, max(budget, MIN_SLICES)))
    return matrix * pixel, matrix, slices


def sample_rendering(
    params: SubjectParams, rng: np.random.Generator | None = None, geometry: bool = True
) -> Rendering:
    """Draw a rendering of ``params`` (from :func:`rendering_rng` unless ``rng`` is given).

    ``geometry=False`` keeps the realistic scan geometry (plane 'protocol'); the contrast and
    artefact draws are the same either way.
    """
    rng = rendering_rng(params) if rng is None else rng
    protocol = PROTOCOLS[params.joint]
    plane = PLANES[int(rng.integers(len(PLANES)))]
    oblique = bool(rng.random() < OBLIQUE_SHARE)
    limit = OBLIQUE_DEGREES if oblique else STRAIGHT_DEGREES
    tilt = rng.uniform(-limit, limit, 3)
    pixel = _uniform(rng, PIXEL_MM)
    thickness = _uniform(rng, (max(THICKNESS_MM[0], 1.1 * pixel), THICKNESS_MM[1]))
    fov_wanted = params.fov * _uniform(rng, FOV_FACTOR)
    coverage = protocol.coverage * params.scale * _uniform(rng, COVERAGE_FACTOR)
    fov, _, slices = _matrix_and_slices(fov_wanted, pixel, thickness, coverage)
    shift = rng.uniform(-CENTRE_SHIFT, CENTRE_SHIFT, 3) * fov
    water = rng.uniform(0.0, 1.0, len(ph.TISSUE_NAMES))
    if rng.random() >= BRIGHT_AIR_SHARE:
        water[ph.AIR] *= DARK_AIR
    fat = float(rng.uniform(0.0, 1.0))
    texture = rng.uniform(*TEXTURE, len(ph.TISSUE_NAMES))
    blur = _uniform(rng, BLUR_PIXELS)
    bias = _uniform(rng, BIAS)
    snr = _uniform(rng, SNR)
    motion = _uniform(rng, MOTION) if rng.random() < MOTION_SHARE else 0.0
    coil = None
    if rng.random() < COIL_SHARE:
        direction = rng.standard_normal(3)
        direction /= np.linalg.norm(direction)
        offset = direction * fov * rng.uniform(0.3, 0.5)
        coil = [round(float(v), 3) for v in offset] + [round(_uniform(rng, COIL_REACH_MM), 2)]
    gain = float(rng.lognormal(np.log(1500.0), 0.25))
    noise_seed = int(rng.integers(0, 2**31 - 1))
    return Rendering(
        plane=plane if geometry else "protocol",
        oblique=oblique,
        tilt_deg=[round(float(v), 3) for v in tilt],
        pixel_mm=round(pixel, 4),
        thickness_mm=round(thickness, 4),
        fov_mm=round(fov, 3),
        slices=slices,
        shift_mm=[round(float(v), 3) for v in shift],
        water=[round(float(v), 4) for v in water],
        fat=round(fat, 4),
        texture=[round(float(v), 4) for v in texture],
        blur=round(blur, 4),
        bias=round(bias, 4),
        snr=round(snr, 3),
        motion=round(motion, 4),
        coil=coil,
        gain=round(gain, 2),
        noise_seed=noise_seed,
    )


def rendering_geometry(
    params: SubjectParams, rendering: Rendering, scale: float = 1.0
) -> ScanGeometry | None:
    """The rendering's scan grid, centred like the protocol's; None for plane 'protocol'.

    ``scale`` < 1 shrinks the matrix and the slice count as the realistic mode does (tests).
    """
    if rendering.plane == "protocol":
        return None
    from jointseg.synth.synthesis import body_frame

    spec = joint_spec(params.joint)
    pose = posture(spec.model, params.angles)
    frame = body_frame(params, pose)
    centre_model = pose.body_position(spec.center_body) + np.asarray(
        PROTOCOLS[params.joint].center_offset
    )
    centre = frame.to_child(centre_model) + np.asarray(rendering.shift_mm)
    direction = rotation_from_degrees(rendering.tilt_deg) @ plane_direction(rendering.plane)
    pixel_fov = rendering.fov_mm
    matrix = max(32, int(round(rendering.fov_mm / rendering.pixel_mm * scale)))
    slices = max(MIN_SLICES, int(round(rendering.slices * scale)))
    thickness = rendering.thickness_mm * rendering.slices / slices
    thickness = max(thickness, 1.05 * pixel_fov / matrix)
    return scan_geometry(
        centre, direction, pixel_fov, matrix, slices, thickness, SUB_SLICE_MM / scale
    )


def synthesize_randomized(params: SubjectParams, rendering: Rendering, scale: float = 1.0):
    """Render ``params`` with ``rendering``: a :class:`~jointseg.synth.synthesis.SubjectVolume`
    whose labels are those of the subject's phantom on the rendering's grid."""
    from jointseg.synth.synthesis import SubjectVolume, build_phantom, majority_label

    grid = rendering_geometry(params, rendering, scale)
    phantom, geometry, _, texture = build_phantom(params, scale, grid)
    water_t = np.asarray(rendering.water, np.float32)
    fat_t = np.full(len(ph.TISSUE_NAMES), rendering.fat, np.float32)
    fat_t[list(FAT_FREE)] = 0.0
    water, fat = fine_signals(
        phantom.tissue,
        phantom.fat_fraction,
        texture,
        water_t,
        fat_t,
        np.asarray(rendering.texture, np.float32),
    )
    water = slice_average(water, geometry.sub)
    fat = slice_average(fat, geometry.sub)
    sensitivity = None
    if rendering.coil is not None:
        centre = geometry.origin + geometry.direction @ (
            (np.asarray(geometry.size, float) - 1.0) / 2.0 * geometry.spacing
        )
        offset, reach = np.asarray(rendering.coil[:3]), rendering.coil[3]
        sensitivity = surface_coil(
            geometry.acquired_points(), centre + offset, reach * params.scale
        )
    image = acquire(
        water,
        fat,
        np.random.default_rng(rendering.noise_seed),
        fat_sat=False,
        fat_sat_efficiency=0.0,
        blur=rendering.blur,
        bias=rendering.bias,
        snr=rendering.snr,
        reference=REFERENCE,
        gain=rendering.gain,
        sensitivity=sensitivity,
        motion=rendering.motion,
    )
    image = np.clip(np.rint(image), 0, 32767).astype(np.int16)
    return SubjectVolume(image, majority_label(phantom.label, geometry.sub), geometry)
