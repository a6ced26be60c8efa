"""Soft tissues around the bones: body outline, skin, fat, fat pads, muscle compartments, vessels.

Shapes are procedural (distance fields) but hung on the posed model: limb axes run between the
MuJoCo bodies' joint centres, the trunk is the models' thorax wrapping geometry, and fat pads and
vessels sit at fixed places relative to the joints (adult mm, scaled with the child).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from jointseg.synth.anatomy import Posture
from jointseg.synth.geometry import BodyFrame


@dataclass(frozen=True)
class Tube:
    """A tapered capsule between two points (child mm): a limb segment, a vessel, a fat pad."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    def distance(self, points: np.ndarray) -> np.ndarray:
        """Approximate signed distance at component-first points (3, ...)."""
        axis = self.b - self.a
        length2 = float(axis @ axis) or 1e-9
        rel = [points[c] - np.float32(self.a[c]) for c in range(3)]
        t = (rel[0] * axis[0] + rel[1] * axis[1] + rel[2] * axis[2]) / length2
        t = np.clip(t, 0.0, 1.0)
        d2 = sum((rel[c] - t * np.float32(axis[c])) ** 2 for c in range(3))
        return np.sqrt(d2) - (self.ra + (self.rb - self.ra) * t)


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: a blend over about ``k`` mm where the two are close."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def _lerp(a: np.ndarray, b: np.ndarray, t: float) -> np.ndarray:
    return a + (b - a) * t


def limb_tubes(
    joint: str, pose: Posture, frame: BodyFrame, stature_mm: float, bulk: float
) -> list[Tube]:
    """The limb and trunk segments of a joint's field of view (child mm)."""

    def pos(body: str, offset=(0.0, 0.0, 0.0)) -> np.ndarray:
        return pose.body_position(body) + np.asarray(offset)

    def tube(a, b, ra, rb):
        return Tube(
            frame.to_child(a), frame.to_child(b), ra * stature_mm * bulk, rb * stature_mm * bulk
        )

    if joint in ("knee", "ankle"):
        hip, knee, ankle = pos("femur_r"), pos("tibia_r"), pos("talus_r")
        back = np.array([0.0, 1.0, 0.0])  # posterior, adult mm per unit below
        thigh = _lerp(knee, hip, 0.5) + back * 6 + np.array([6.0, 0, 0])
        knee_c = knee + back * 6
        calf = _lerp(knee, ankle, 0.3) + back * 22
        lower = _lerp(knee, ankle, 0.8) + back * 8
        tubes = [
            tube(thigh, knee_c, 0.041, 0.030),
            tube(knee_c, calf, 0.030, 0.033),
            tube(calf, lower, 0.033, 0.021),
            tube(lower, ankle + back * 4, 0.021, 0.018),
        ]
        if joint == "ankle":
            # The sole: three parallel tubes (heel to the metatarsal heads) give its width.
            heel = pos("calcn_r", (0.0, 0.0, -6.0))
            toes = pos("toes_r", (0.0, 10.0, -2.0))
            for side, r_heel, r_fore in (
                (0.0, 0.011, 0.009),
                (16.0, 0.008, 0.008),
                (-16.0, 0.007, 0.008),
            ):
                shift = np.array([side, 0.0, 0.0])
                tubes.append(
                    tube(heel + shift * 0.6, _lerp(heel, toes, 0.6) + shift, r_heel, r_fore)
                )
        return tubes
    if joint == "shoulder":
        humerus, elbow = pos("humerus_r"), pos("ulna_r")
        return [
            tube(humerus, _lerp(humerus, elbow, 0.7), 0.030, 0.028),
            *trunk_tubes(pose, frame, bulk),
        ]
    if joint in LIMB_SEGMENTS:

        def point(spec: LimbPoint) -> np.ndarray:
            a, b, t, offset = spec
            return _lerp(pos(a), pos(b), t) + np.asarray(offset)

        return [tube(point(a), point(b), ra, rb) for a, b, ra, rb in LIMB_SEGMENTS[joint]]
    raise ValueError(f"unknown joint {joint!r}")


#: A point of a limb's axis: ``lerp(body a, body b, t)`` plus an offset (adult mm, world).
LimbPoint = tuple[str, str, float, tuple[float, float, float]]
#: Limb segments of the joints defined by table: (start, end, radius at each, x stature).
LIMB_SEGMENTS: dict[str, list[tuple[LimbPoint, LimbPoint, float, float]]] = {
    "elbow": [
        # Upper arm (biceps in front, triceps behind), then the forearm's proximal muscle
        # mass (flexors and extensors), tapering toward the wrist.
        (
            ("humerus_r", "ulna_r", 0.5, (0, 0, 0)),
            ("ulna_r", "ulna_r", 0, (-2, 2, 0)),
            0.026,
            0.022,
        ),
        (
            ("ulna_r", "ulna_r", 0, (-2, 2, 0)),
            ("ulna_r", "lunate_r", 0.35, (0, -4, 0)),
            0.022,
            0.022,
        ),
        (
            ("ulna_r", "lunate_r", 0.35, (0, -4, 0)),
            ("lunate_r", "lunate_r", 0, (0, 0, 0)),
            0.022,
            0.014,
        ),
    ],
}


def trunk_tubes(pose: Posture, frame: BodyFrame, bulk: float) -> list[Tube]:
    """The upper trunk from the arm model's thorax wrapping capsules (child mm)."""
    tubes = []
    for name in ("thorax_coll2", "thorax_coll3"):
        radius, half = pose.geom_size(name)[:2]
        rotation, centre = pose.geom_pose(name)
        axis = rotation[:, 2]
        r = radius * frame.mean_scale * bulk
        a, b = frame.to_child(centre - axis * half), frame.to_child(centre + axis * half)
        tubes.append(Tube(a, b, r, r))
    return tubes


@dataclass(frozen=True)
class Blob:
    """An ellipsoid (child mm) with semi-axes along the world axes: fat pads, lungs."""

    center: np.ndarray
    radii: np.ndarray

    def distance(self, points: np.ndarray) -> np.ndarray:
        q = sum(
            ((points[c] - np.float32(self.center[c])) / np.float32(self.radii[c])) ** 2
            for c in range(3)
        )
        return (np.sqrt(q) - 1.0) * np.float32(self.radii.min())


#: Fat pads (model body, offset adult mm LPS, semi-axes adult mm).
FAT_PADS = {
    "knee": [("tibia_r", (0.0, -28.0, 6.0), (16.0, 9.0, 13.0))],  # Hoffa's infrapatellar pad
    "ankle": [
        ("talus_r", (0.0, 38.0, 28.0), (11.0, 10.0, 26.0)),  # Kager's pre-Achilles pad
        ("calcn_r", (0.0, 12.0, -18.0), (20.0, 32.0, 9.0)),  # heel pad
    ],
    "shoulder": [("humerus_r", (10.0, 0.0, 26.0), (14.0, 14.0, 5.0))],  # subacromial fat
    "elbow": [
        ("humerus_r", (10.0, -10.5, -264.0), (12.0, 3.0, 8.0)),  # anterior (coronoid fossa)
        ("humerus_r", (10.0, 12.5, -262.0), (10.0, 4.0, 9.0)),  # posterior (olecranon fossa)
    ],
}

#: Main vessels (model body, start and end offsets adult mm, radius adult mm, 'artery'/'vein').
VESSELS = {
    "knee": [
        ("tibia_r", (4.0, 34.0, 90.0), (2.0, 30.0, -90.0), 3.2, "artery"),
        ("tibia_r", (0.0, 40.0, 90.0), (-2.0, 36.0, -90.0), 4.2, "vein"),
        ("tibia_r", (38.0, 20.0, 90.0), (38.0, 10.0, -90.0), 2.0, "vein"),  # great saphenous
    ],
    "ankle": [
        ("talus_r", (26.0, 22.0, 80.0), (28.0, 18.0, -12.0), 1.8, "artery"),  # posterior tibial
        ("talus_r", (30.0, 24.0, 80.0), (32.0, 20.0, -12.0), 2.2, "vein"),
        ("talus_r", (4.0, -22.0, 80.0), (4.0, -30.0, -10.0), 1.6, "artery"),  # anterior tibial
        ("talus_r", (30.0, -8.0, 80.0), (34.0, -20.0, -10.0), 2.0, "vein"),  # great saphenous
    ],
    "shoulder": [
        ("humerus_r", (45.0, -10.0, -10.0), (30.0, -5.0, -120.0), 3.2, "artery"),  # axillary
        ("humerus_r", (50.0, -2.0, -10.0), (35.0, 2.0, -120.0), 4.5, "vein"),
        ("humerus_r", (20.0, -38.0, 20.0), (-6.0, -28.0, -120.0), 2.0, "vein"),  # cephalic
    ],
    "elbow": [
        ("ulna_r", (7.7, -18.0, 110.0), (2.0, -16.0, -80.0), 2.2, "artery"),  # brachial
        ("ulna_r", (11.0, -16.0, 110.0), (5.0, -14.0, -80.0), 2.6, "vein"),
        ("ulna_r", (40.0, 2.0, 110.0), (32.0, -4.0, -80.0), 2.0, "vein"),  # basilic
        ("ulna_r", (-42.0, -14.0, 110.0), (-45.0, -18.0, -80.0), 2.0, "vein"),  # cephalic
    ],
}


def fat_pads(joint: str, pose: Posture, frame: BodyFrame, scale: float = 1.0) -> list[Blob]:
    """The joint's fat pads (child mm), their radii times ``scale`` (the subject's variant)."""
    s = frame.mean_scale * scale
    return [
        Blob(
            frame.to_child(pose.body_position(body) + np.asarray(off)),
            np.asarray(radii) * s,
        )
        for body, off, radii in FAT_PADS[joint]
    ]


def vessels(joint: str, pose: Posture, frame: BodyFrame) -> list[tuple[Tube, str]]:
    s = frame.mean_scale
    out = []
    for body, a, b, radius, kind in VESSELS[joint]:
        base = pose.body_position(body)
        out.append(
            (
                Tube(
                    frame.to_child(base + np.asarray(a)),
                    frame.to_child(base + np.asarray(b)),
                    radius * s,
                    radius * s,
                ),
                kind,
            )
        )
    return out


#: Lungs (shoulder): (model body, offset adult mm, semi-axes adult mm), right lung only.
LUNGS = {"shoulder": [("humerus_r", (95.0, 5.0, -110.0), (55.0, 70.0, 130.0))]}


def lungs(joint: str, pose: Posture, frame: BodyFrame) -> list[Blob]:
    s = frame.mean_scale
    return [
        Blob(frame.to_child(pose.body_position(body) + np.asarray(off)), np.asarray(radii) * s)
        for body, off, radii in LUNGS.get(joint, [])
    ]


#: Joint recesses that hold fluid (model body, offset adult mm, semi-axes adult mm at an
#: effusion of 1 mm): the knee's suprapatellar pouch, the ankle's anterior and posterior
#: recesses, the shoulder's subacromial-subdeltoid bursa, the elbow's anterior and olecranon
#: recesses.
FLUID_POCKETS = {
    "knee": [("tibia_r", (0.0, -27.0, 58.0), (20.0, 3.0, 16.0))],
    "ankle": [
        ("talus_r", (0.0, -20.0, 10.0), (12.0, 2.5, 6.0)),
        ("talus_r", (0.0, 22.0, 2.0), (10.0, 2.5, 6.0)),
    ],
    "shoulder": [("humerus_r", (-12.0, 0.0, 30.0), (16.0, 14.0, 1.5))],
    "elbow": [
        ("ulna_r", (-2.0, -5.5, 11.0), (16.0, 2.0, 6.0)),  # anterior recess
        ("ulna_r", (-2.0, 19.5, 21.0), (10.0, 2.5, 6.0)),  # olecranon recess
    ],
}


def fluid_pockets(joint: str, pose: Posture, frame: BodyFrame, effusion_mm: float) -> list[Blob]:
    """Fluid-filled recesses, thicker with more effusion (child mm)."""
    s = frame.mean_scale
    grow = np.array([1.0, 1.0, 1.0]) * (0.6 + 0.4 * effusion_mm)
    out = []
    for body, offset, radii in FLUID_POCKETS.get(joint, []):
        radii = np.asarray(radii, float)
        # The thin axis swells most with effusion.
        swollen = radii * np.where(radii == radii.min(), grow, np.sqrt(grow))
        out.append(Blob(frame.to_child(pose.body_position(body) + np.asarray(offset)), swollen * s))
    return out
