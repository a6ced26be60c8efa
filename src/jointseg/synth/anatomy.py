"""The joints we synthesize: which bones, their labels, and how MuJoCo poses them.

Bone surfaces and joint kinematics come from the MyoSuite musculoskeletal models shipped in the
``myo-sim`` package (``myolegs`` for ankle and knee, ``myoarm_r`` for the shoulder and
elbow). Model world coordinates are metres with x to the patient's left, y posterior and z
superior (LPS); we use mm. A joint imaged at another site (``knee_t1``: the knee with its own
protocol and dataset) is one more spec naming the joint whose anatomy it shares.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, replace
from functools import cache

import numpy as np


@dataclass(frozen=True)
class Physis:
    """A growth plate across a long bone end: ``depth`` mm (adult) from the bone's tip (its
    farthest point along the long axis: malleolus, tibial spines, humeral head)."""

    site: str
    depth: float
    tent: float = 0.0  # slope of a tent-shaped (Λ) plate, as in the proximal humerus
    far_end: bool = False  # measured from the bone's end away from the joint


@dataclass(frozen=True)
class BoneSpec:
    """One bone of a joint's field of view."""

    name: str
    geom: str
    label: int = 0  # 0: present in the image but not labelled in this dataset
    part: str = "all"  # 'all', 'largest' or 'others' connected parts of the geom's mesh
    long_bone: bool = False
    physes: tuple[Physis, ...] = ()
    small: bool = False  # ossifies from a centre: young children have a cartilage shell


@dataclass(frozen=True)
class JointSpec:
    """A joint dataset: its bones, its kinematic model and the joint angles we vary."""

    name: str
    dataset_id: int
    title: str
    model: str
    center_body: str
    bones: tuple[BoneSpec, ...]
    angles: dict[str, tuple[float, float]] = field(default_factory=dict)
    menisci: tuple[tuple[str, str], ...] = ()  # bone pairs with fibrocartilage wedges between
    #: Corrections (adult mm, model world) of a bone's position where the model's bones overlap
    #: or leave too wide a joint space (its calcaneus runs 6 mm into the talus, its humeral
    #: head sits 7 mm from the glenoid).
    shifts: dict[str, tuple[float, float, float]] = field(default_factory=dict)
    #: The joint whose anatomy tables (soft tissues, ligaments, shape modes) this dataset uses:
    #: another site of a joint (its own protocol and dataset) names that joint; None: its own.
    anatomy: str | None = None

    @property
    def region(self) -> str:
        """The name the anatomy tables are keyed by (:attr:`anatomy`, else :attr:`name`)."""
        return self.anatomy or self.name

    @property
    def labels(self) -> dict[str, int]:
        """Label values of the dataset (background first, then the labelled bones)."""
        items = sorted((b.label, b.name) for b in self.bones if b.label)
        return {"background": 0, **{name: value for value, name in items}}

    @property
    def folder(self) -> str:
        return f"Dataset{self.dataset_id:03d}_{self.title}"


JOINTS: dict[str, JointSpec] = {
    "ankle": JointSpec(
        name="ankle",
        dataset_id=1,
        title="Ankle",
        model="myolegs",
        center_body="talus_r",
        bones=(
            BoneSpec(
                "calcaneus",
                "foot_r",
                1,
                part="largest",
                small=True,
                physes=(Physis("calcaneus_apophysis", 9.0, far_end=True),),
            ),
            BoneSpec("talus", "talus_r", 2, small=True),
            BoneSpec("tibia", "tibia_r", 3, long_bone=True, physes=(Physis("tibia_distal", 28.0),)),
            BoneSpec(
                "fibula", "fibula_r", 0, long_bone=True, physes=(Physis("fibula_distal", 27.0),)
            ),
            BoneSpec("midfoot", "foot_r", 0, part="others", small=True),
        ),
        # Radians: dorsiflexion (+) / plantar flexion (-), subtalar inversion / eversion.
        angles={"ankle_angle_r": (-0.30, 0.25), "subtalar_angle_r": (-0.15, 0.15)},
        shifts={
            "calcaneus": (0.0, 0.0, -7.0),
            "midfoot": (0.0, 0.0, -5.0),
            "tibia": (0.0, 0.0, 2.0),
            "fibula": (0.0, 0.0, 2.0),
        },
    ),
    "knee": JointSpec(
        name="knee",
        dataset_id=2,
        title="Knee",
        model="myolegs",
        center_body="tibia_r",
        bones=(
            BoneSpec("femur", "femur_r", 1, long_bone=True, physes=(Physis("femur_distal", 24.0),)),
            BoneSpec(
                "fibula", "fibula_r", 2, long_bone=True, physes=(Physis("fibula_proximal", 15.0),)
            ),
            BoneSpec("patella", "patella_r", 3, small=True),
            BoneSpec(
                "tibia",
                "tibia_r",
                4,
                long_bone=True,
                physes=(Physis("tibia_proximal", 28.0, tent=0.08),),
            ),
        ),
        angles={"knee_angle_r": (0.0, 0.45)},
        menisci=(("femur", "tibia"),),
        shifts={"tibia": (0.0, 0.0, -2.5), "fibula": (0.0, 0.0, -2.5)},
    ),
    "shoulder": JointSpec(
        name="shoulder",
        dataset_id=3,
        title="Shoulder",
        model="myoarm_r",
        center_body="humerus_r",
        bones=(
            BoneSpec(
                "humerus",
                "humerus_r",
                1,
                long_bone=True,
                physes=(Physis("humerus_proximal", 22.0, tent=0.35),),
            ),
            BoneSpec("scapula", "scapula_r", 2),
            BoneSpec("clavicle", "clavicle_r", 0),
        ),
        # Elevation plane, elevation and axial rotation of the arm at the side of the body.
        shifts={"humerus": (2.2, 0.8, 0.8)},
        angles={
            "elv_angle_r": (-0.2, 0.9),
            "shoulder_elv_r": (0.0, 0.35),
            "shoulder_rot_r": (-0.5, 0.6),
        },
    ),
    "elbow": JointSpec(
        name="elbow",
        dataset_id=4,
        title="Elbow",
        model="myoarm_r",
        center_body="ulna_r",
        bones=(
            # Distal humerus: the physis under the capitellum and trochlea; radial head and
            # neck; the olecranon apophysis at the ulna's proximal end.
            BoneSpec(
                "humerus",
                "humerus_r",
                1,
                long_bone=True,
                physes=(Physis("humerus_distal", 17.0),),
            ),
            BoneSpec(
                "radius", "radius_r", 2, long_bone=True, physes=(Physis("radius_proximal", 11.0),)
            ),
            BoneSpec("ulna", "ulna_r", 3, long_bone=True, physes=(Physis("ulna_proximal", 14.0),)),
        ),
        # Flexion from full extension (the arm at the side in the magnet) and forearm rotation.
        angles={"elbow_flexion_r": (0.0, 0.35), "pro_sup_r": (-0.3, 0.9)},
    ),
}
#: Other sites: a joint's anatomy with its own protocol (``subject.PROTOCOLS``) and dataset.
JOINTS["knee_t1"] = replace(
    JOINTS["knee"], name="knee_t1", dataset_id=5, title="KneeT1", anatomy="knee"
)


def joint_spec(name: str) -> JointSpec:
    """The spec of joint ``name``; a clear error for an unknown one."""
    try:
        return JOINTS[name]
    except KeyError:
        raise ValueError(f"unknown joint {name!r}; choose from {', '.join(JOINTS)}") from None


#: The packages the generator's anatomy comes from: ``pip install 'jointseg[synth]'``.
GENERATOR_PACKAGES = {
    "mujoco": "mujoco",
    "myo_sim": "myo-sim",
    "musculoskeletal": "musculoskeletal-models",
}


class GeneratorUnavailable(ValueError):
    """The generator's packages (the ``synth`` extra) are not installed."""


def require_generator_packages() -> None:
    """Raise :class:`GeneratorUnavailable`, naming what is missing and the install command, when
    a package of the ``synth`` extra cannot be imported. Predicting never needs them."""
    import importlib.util

    missing = []
    for module, distribution in GENERATOR_PACKAGES.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):  # a module set to None in sys.modules, a broken one
            found = False
        if not found:
            missing.append(distribution)
    if missing:
        raise GeneratorUnavailable(
            f"the synthetic MR generator needs {', '.join(missing)}, not installed here: "
            "pip install 'jointseg[synth]' (predicting, training and evaluating do not)"
        )


@cache
def kinematic_model(name: str):
    """The compiled MuJoCo model and a data buffer (cached per process).

    MuJoCo's compile-time warnings (printed and logged to ``MUJOCO_LOG.TXT`` in the working
    folder by default) are swallowed while loading.
    """
    import mujoco
    import myo_sim

    previous = mujoco.get_mju_user_warning()
    mujoco.set_mju_user_warning(lambda message: None)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return myo_sim.load(name)
    finally:
        mujoco.set_mju_user_warning(previous)


def pose_model(name: str, angles: dict[str, float]):
    """Set the model's joints (coupled joints from their equality constraints) and run FK.

    Returns (model, data) after ``mujoco.mj_kinematics``.
    """
    import mujoco

    model, data = kinematic_model(name)
    data.qpos[:] = model.qpos0
    for joint, value in angles.items():
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, joint)
        if jid < 0:
            raise ValueError(f"model {name!r} has no joint {joint!r}")
        data.qpos[model.jnt_qposadr[jid]] = value
    # Joint equality constraints: q1 - q1_0 = poly(q2 - q2_0); kinematics alone ignores them.
    for eq in range(model.neq):
        if model.eq_type[eq] != mujoco.mjtEq.mjEQ_JOINT or not model.eq_active0[eq]:
            continue
        dependent = model.jnt_qposadr[model.eq_obj1id[eq]]
        driver = model.jnt_qposadr[model.eq_obj2id[eq]]
        x = data.qpos[driver] - model.qpos0[driver]
        coeffs = model.eq_data[eq, :5]
        data.qpos[dependent] = model.qpos0[dependent] + sum(c * x**k for k, c in enumerate(coeffs))
    mujoco.mj_kinematics(model, data)
    return model, data


@dataclass(frozen=True)
class Posture:
    """A snapshot of a posed model: every body, geom and site in world mm (read-only copies,
    so that later posing of the shared cached model cannot change it)."""

    model_name: str
    body_xpos: np.ndarray  # (nbody, 3) mm
    body_xmat: np.ndarray  # (nbody, 3, 3)
    geom_xpos: np.ndarray  # (ngeom, 3) mm
    geom_xmat: np.ndarray  # (ngeom, 3, 3)
    site_xpos: np.ndarray  # (nsite, 3) mm

    @property
    def model(self):
        return kinematic_model(self.model_name)[0]

    def _id(self, kind, name: str) -> int:
        import mujoco

        index = mujoco.mj_name2id(self.model, kind, name)
        if index < 0:
            raise ValueError(f"model {self.model_name!r} has no {kind.name[6:].lower()} {name!r}")
        return index

    def body_position(self, body: str) -> np.ndarray:
        """World position (mm) of a body's frame."""
        import mujoco

        return self.body_xpos[self._id(mujoco.mjtObj.mjOBJ_BODY, body)].copy()

    def body_pose(self, body: str) -> tuple[np.ndarray, np.ndarray]:
        """Rotation (body frame -> world) and translation (mm) of a body."""
        import mujoco

        index = self._id(mujoco.mjtObj.mjOBJ_BODY, body)
        return self.body_xmat[index].copy(), self.body_xpos[index].copy()

    def geom_pose(self, geom: str) -> tuple[np.ndarray, np.ndarray]:
        """Rotation (geom frame -> world) and translation (mm) of a geom."""
        import mujoco

        index = self._id(mujoco.mjtObj.mjOBJ_GEOM, geom)
        return self.geom_xmat[index].copy(), self.geom_xpos[index].copy()

    def geom_size(self, geom: str) -> np.ndarray:
        """MuJoCo's size parameters of a geom, in mm."""
        import mujoco

        return self.model.geom_size[self._id(mujoco.mjtObj.mjOBJ_GEOM, geom)] * 1000.0


def posture(model_name: str, angles: dict[str, float]) -> Posture:
    """Pose the model (see :func:`pose_model`) and snapshot it."""
    model, data = pose_model(model_name, angles)
    return Posture(
        model_name,
        data.xpos * 1000.0,
        data.xmat.reshape(-1, 3, 3).copy(),
        data.geom_xpos * 1000.0,
        data.geom_xmat.reshape(-1, 3, 3).copy(),
        data.site_xpos * 1000.0,
    )


def geom_mesh(model_name: str, geom: str, part: str = "all") -> tuple[np.ndarray, np.ndarray]:
    """Vertices (mm, geom frame) and faces of a mesh geom, or of some of its connected parts.

    ``part='largest'`` keeps the part enclosing the largest volume (the calcaneus of the foot
    mesh); ``'others'`` keeps the rest.
    """
    import mujoco

    model, _ = kinematic_model(model_name)
    gid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_GEOM, geom)
    if gid < 0 or model.geom_type[gid] != mujoco.mjtGeom.mjGEOM_MESH:
        raise ValueError(f"model {model_name!r} has no mesh geom {geom!r}")
    mid = model.geom_dataid[gid]
    v0, nv = model.mesh_vertadr[mid], model.mesh_vertnum[mid]
    f0, nf = model.mesh_faceadr[mid], model.mesh_facenum[mid]
    vertices = model.mesh_vert[v0 : v0 + nv].astype(np.float64) * 1000.0
    faces = model.mesh_face[f0 : f0 + nf].astype(np.int64)
    if part == "all":
        return vertices, faces
    parts = mesh_parts(vertices, faces)
    parts.sort(key=lambda f: abs(_enclosed_volume(vertices, f)), reverse=True)
    chosen = parts[:1] if part == "largest" else parts[1:]
    if not chosen:
        raise ValueError(f"geom {geom!r} has no part {part!r}")
    used, compact = np.unique(np.concatenate(chosen), return_inverse=True)
    return vertices[used], compact.reshape(-1, 3)


def mesh_parts(vertices: np.ndarray, faces: np.ndarray) -> list[np.ndarray]:
    """The faces of each connected part of a mesh (vertices at the same place are merged)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    _, merged = np.unique(np.round(vertices, 6), axis=0, return_inverse=True)
    merged = merged.reshape(-1)[faces]
    edges = np.concatenate([merged[:, [0, 1]], merged[:, [1, 2]]])
    n = int(merged.max()) + 1
    graph = coo_matrix((np.ones(len(edges)), (edges[:, 0], edges[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    owner = component[merged[:, 0]]
    return [faces[owner == c] for c in np.unique(owner)]


def _enclosed_volume(vertices: np.ndarray, faces: np.ndarray) -> float:
    """Signed volume enclosed by a closed triangle surface."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return float(np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6.0)
