"""Muscles, tendons and ligaments from the musculoskeletal models.

Every muscle of the MuJoCo model runs along its tendon path (the via-point sites, posed by
forward kinematics). Its optimal fibre length and tendon slack length, recovered from the
actuator's length range and operating range as MuJoCo defines them, split the path into a
fusiform belly and a tendon at each end (most of it at the insertion); the belly's thickness
grows with the square root of the muscle's maximal force (its cross-section). Ligaments absent
from the models are straight bands between points fixed to the bones they join.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

import numpy as np

from jointseg.synth.anatomy import Posture, kinematic_model, posture
from jointseg.synth.geometry import BodyFrame, CoarseGrid, ScanGeometry

#: Belly radius (adult mm) per square-root newton of maximal force, and tendon radius.
BELLY_MM_PER_SQRT_N = 0.6
TENDON_MM = (1.0, 0.07)  # radius = a + b * sqrt(force)
PIECE_MM = 10.0


@dataclass(frozen=True)
class Band:
    """A muscle's or ligament's path (child mm) with a radius at each node and tendon flags."""

    name: str
    nodes: np.ndarray  # (P, 3)
    radius: np.ndarray  # (P,)
    tendon: np.ndarray  # (P,) bool: the node lies on tendon or ligament


@cache
def muscle_catalogue(model_name: str) -> tuple[tuple[str, int, float, float, float], ...]:
    """(name, tendon id, max force N, optimal fibre length m, tendon slack length m) per muscle."""
    import mujoco

    model, _ = kinematic_model(model_name)
    out = []
    for a in range(model.nu):
        if model.actuator_trntype[a] != mujoco.mjtTrn.mjTRN_TENDON:
            continue
        name = mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_ACTUATOR, a) or f"muscle{a}"
        if name.endswith("_l"):
            continue  # the other leg
        gain = model.actuator_gainprm[a]
        low, high = model.actuator_lengthrange[a]
        span = gain[1] - gain[0]
        fibre = (high - low) / span if span > 0 else 0.5 * high
        slack = low - gain[0] * fibre
        out.append((name, int(model.actuator_trnid[a, 0]), float(gain[2]), fibre, slack))
    return tuple(out)


def _site_path(pose: Posture, tendon: int) -> np.ndarray:
    import mujoco

    model = pose.model
    points = [
        pose.site_xpos[model.wrap_objid[w]]
        for w in range(
            model.tendon_adr[tendon], model.tendon_adr[tendon] + model.tendon_num[tendon]
        )
        if model.wrap_type[w] == mujoco.mjtWrap.mjWRAP_SITE
    ]
    return np.asarray(points, float)


def _resample(path: np.ndarray, step: float) -> tuple[np.ndarray, np.ndarray]:
    """Nodes every ``step`` mm along a polyline and their arc length."""
    seg = np.linalg.norm(np.diff(path, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    total = arc[-1]
    count = max(2, int(np.ceil(total / step)) + 1)
    s = np.linspace(0.0, total, count)
    nodes = np.stack([np.interp(s, arc, path[:, c]) for c in range(3)], axis=1)
    return nodes, s


def muscle_bands(pose: Posture, frame: BodyFrame, bulk: float) -> list[Band]:
    """Posed muscles of the model as bands in the child's world."""
    size = frame.mean_scale
    bands = []
    for name, tendon, force, fibre, slack in muscle_catalogue(pose.model_name):
        path = _site_path(pose, tendon)
        if len(path) < 2:
            continue
        nodes, s = _resample(frame.to_child(path.T).T, PIECE_MM * size)
        total = s[-1]
        # Tendon length in the child, mostly at the insertion (origin tendons are short); a
        # long slack length is largely aponeurosis inside the belly, so the free tendon is
        # capped at 30 % of the path.
        tendon_len = float(np.clip(slack / max(slack + fibre, 1e-6), 0.02, 0.9)) * total
        start = min(0.2 * tendon_len, 30.0 * size)
        end = total - min(tendon_len - start, 0.3 * total)
        u = np.clip((s - start) / max(end - start, 1e-6), 0.0, 1.0)
        tendon_r = (TENDON_MM[0] + TENDON_MM[1] * np.sqrt(force)) * size
        belly_r = BELLY_MM_PER_SQRT_N * np.sqrt(force) * size * bulk
        radius = np.maximum(belly_r * np.sin(np.pi * u) ** 0.6, tendon_r)
        is_tendon = (s <= start) | (s >= end)
        bands.append(Band(name, nodes, radius, is_tendon))
    return bands


#: Ligaments (and a few muscles, names starting with '+') missing from the models: (name,
#: body a, point a, body b, point b, radius, band half-width) with points in the right-sided
#: model's world at rest (adult mm).
LIGAMENTS = {
    "knee": [
        ("patellar tendon", "patella_r", (-77, 13, 506), "tibia_r", (-83, 29, 455), 2.6, 7.0),
        ("ACL", "femur_r", (-88, 66, 505), "tibia_r", (-72, 55, 494), 3.2, 0.0),
        ("PCL", "femur_r", (-66, 52, 506), "tibia_r", (-72, 83, 484), 3.6, 0.0),
        ("MCL", "femur_r", (-41, 53, 518), "tibia_r", (-47, 56, 455), 1.6, 6.0),
        ("LCL", "femur_r", (-116, 60, 514), "tibia_r", (-116, 80, 462), 2.0, 0.0),
    ],
    "ankle": [
        # Intrinsic muscles of the sole (not in the model): belly bands, flagged by a '+'.
        ("+flexor digitorum brevis", "calcn_r", (-72, 96, 56), "calcn_r", (-80, -20, 54), 6.5, 0),
        ("+abductor hallucis", "calcn_r", (-56, 92, 64), "calcn_r", (-60, -30, 60), 6.5, 0.0),
        ("+abductor digiti minimi", "calcn_r", (-100, 95, 62), "calcn_r", (-106, -5, 60), 5.5, 0),
        ("+quadratus plantae", "calcn_r", (-76, 88, 66), "calcn_r", (-76, 30, 64), 5.0, 0.0),
        ("ATFL", "tibia_r", (-98, 66, 116), "talus_r", (-92, 45, 113), 1.6, 3.0),
        ("CFL", "tibia_r", (-99, 78, 112), "calcn_r", (-104, 82, 92), 1.8, 0.0),
        ("PTFL", "tibia_r", (-98, 82, 116), "talus_r", (-88, 80, 110), 1.8, 0.0),
        ("deltoid", "tibia_r", (-58, 56, 124), "talus_r", (-56, 64, 106), 2.6, 4.0),
        ("deltoid tc", "tibia_r", (-58, 58, 124), "calcn_r", (-56, 68, 100), 2.0, 0.0),
    ],
    "shoulder": [
        ("coracoacromial", "scapula_r", (-131, 78, 1472), "scapula_r", (-165, 100, 1503), 1.8, 4.0),
        (
            "coracoclavicular",
            "scapula_r",
            (-128, 80, 1478),
            "clavicle_r",
            (-128, 92, 1500),
            2.4,
            0.0,
        ),
    ],
    "elbow": [
        ("UCL", "humerus_r", (-128, 102, 1190), "ulna_r", (-146, 92, 1166), 1.8, 3.0),
        ("RCL", "humerus_r", (-189, 100, 1191), "ulna_r", (-190, 94, 1168), 1.6, 2.0),
    ],
}


@cache
def _rest_local(model_name: str, body: str, point: tuple[float, float, float]) -> np.ndarray:
    """A rest-pose world point in its body's frame."""
    rotation, translation = posture(model_name, {}).body_pose(body)
    return (np.asarray(point, float) - translation) @ rotation


def ligament_bands(joint: str, pose: Posture, frame: BodyFrame) -> list[Band]:
    """The joint's ligaments (and extra muscles) in a posture, child mm."""
    size = frame.mean_scale
    bands = []
    for name, body_a, a, body_b, b, radius, half_width in LIGAMENTS[joint]:
        ends = []
        for body, point in ((body_a, a), (body_b, b)):
            local = _rest_local(pose.model_name, body, tuple(float(v) for v in point))
            rotation, translation = pose.body_pose(body)
            ends.append(rotation @ local + translation)
        axis = ends[1] - ends[0]
        helper = [0.0, 1.0, 0.0] if abs(axis[1]) < 0.9 * np.linalg.norm(axis) else [1.0, 0, 0]
        side = np.cross(axis, helper)
        side /= np.linalg.norm(side) or 1.0
        offsets = (0.0,) if half_width == 0 else (-half_width, 0.0, half_width)
        for offset in offsets:
            path = np.stack([ends[0] + side * offset, ends[1] + side * offset])
            nodes, _ = _resample(frame.to_child(path.T).T, PIECE_MM * size)
            radii = np.full(len(nodes), radius * size)
            is_tendon = np.full(len(nodes), not name.startswith("+"))
            bands.append(Band(name.lstrip("+"), nodes, radii, is_tendon))
    return bands


def band_fields(
    bands: list[Band],
    geometry: ScanGeometry,
    coarse: CoarseGrid,
    nodes: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """On the coarse lattice: distance to the nearest muscle belly, to the second-nearest belly
    of another muscle, and to the nearest tendon or ligament (child mm)."""
    far = np.float32(1e4)
    first = np.full(coarse.shape, far, np.float32)
    second = np.full(coarse.shape, far, np.float32)
    tendon = np.full(coarse.shape, far, np.float32)
    for band in bands:
        reach = float(band.radius.max()) + 12.0
        box = geometry.fine_box(band.nodes.min(axis=0) - reach, band.nodes.max(axis=0) + reach)
        if box is None:
            continue
        cbox = coarse.box_from_fine(box)
        points = nodes[(slice(None), *cbox)]
        belly = np.full(points.shape[1:], far, np.float32)
        cord = np.full(points.shape[1:], far, np.float32)
        for i in range(len(band.nodes) - 1):
            dist = _segment_distance(
                points, band.nodes[i], band.nodes[i + 1], band.radius[i], band.radius[i + 1]
            )
            if band.tendon[i] and band.tendon[i + 1]:
                cord = np.minimum(cord, dist)
            else:
                belly = np.minimum(belly, dist)
        f, s = first[cbox], second[cbox]
        second[cbox] = np.where(belly < f, f, np.minimum(s, belly))
        first[cbox] = np.minimum(f, belly)
        tendon[cbox] = np.minimum(tendon[cbox], cord)
    return first, second, tendon


def _segment_distance(points, a, b, ra, rb) -> np.ndarray:
    axis = b - a
    length2 = float(axis @ axis) or 1e-9
    rel = [points[c] - np.float32(a[c]) for c in range(3)]
    t = np.clip((rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]) / length2, 0.0, 1.0)
    d2 = sum((rel[c] - t * np.float32(axis[c])) ** 2 for c in range(3))
    return (np.sqrt(d2) - (ra + (rb - ra) * t)).astype(np.float32)
