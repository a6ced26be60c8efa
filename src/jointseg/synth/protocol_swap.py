"""A joint imaged with another joint's protocol: the same subject, another contrast and resolution.

A model trained on one protocol is judged on the others with these renderings (the
protocol-swap study, ``benchmarks/protocol_swap.py``): the ankle under the knee's fat-suppressed
proton density, the knee under the shoulder's T2* gradient echo, and so on.

- :func:`imaging_protocol`: protocol ``name``'s contrast (sequence, weighting, fat suppression,
  TR, TE, flip angle), in-plane matrix, slice thickness and SNR, placed on the joint as the
  joint's own protocol places it (plane, field of view, coverage, centre, coil): a knee protocol's
  field of view would not frame an elbow, and the shoulder's oblique plane follows the scapula.
- :func:`under_protocol`: the subject with its acquisition numbers (TR, TE, flip angle, slice
  thickness and count, SNR) redrawn from protocol ``name``'s ranges, from a stream of its own
  (``SeedSequence(seed, spawn_key=(*subject key, SWAP_STREAM, protocol index))``), so that its
  anatomy, pose, tissues, field of view, artefacts and noise seed stay the subject's.

With the joint's own protocol both are the identity: the rendering is the realistic one, voxel
for voxel.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from jointseg.synth.subject import PROTOCOLS, SLICE_RANGE, Protocol, SubjectParams

#: The spawn-key entry appended to a subject's key for a swapped protocol's draws (the
#: randomized rendering uses 1).
SWAP_STREAM = 2


def protocol_names() -> list[str]:
    """Every protocol a joint can be imaged with: each joint's and each site's own."""
    return list(PROTOCOLS)


def _protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose from {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]


def imaging_protocol(joint: str, name: str) -> Protocol:
    """Protocol ``name``'s contrast and resolution, placed on ``joint`` as its own protocol."""
    own, other = _protocol(joint), _protocol(name)
    if name == joint:
        return own
    return replace(
        own,
        sequence=other.sequence,
        weighting=other.weighting,
        fat_sat=other.fat_sat,
        tr=other.tr,
        te=other.te,
        flip=other.flip,
        matrix=other.matrix,
        thickness=other.thickness,
        snr=other.snr,
    )


def under_protocol(params: SubjectParams, name: str) -> SubjectParams:
    """``params`` with the acquisition numbers of protocol ``name`` (drawn from its ranges)."""
    protocol = _protocol(name)
    if name == params.joint:
        return params
    entropy, *key = params.seed
    index = list(PROTOCOLS).index(name)
    rng = np.random.default_rng(
        np.random.SeedSequence(entropy, spawn_key=(*key, SWAP_STREAM, index))
    )

    def draw(bounds: tuple[float, float]) -> float:
        return float(rng.uniform(bounds[0], bounds[1]))

    thickness = draw(protocol.thickness)
    covered = params.slices * params.thickness  # the subject's coverage, kept
    return replace(
        params,
        tr=round(draw(protocol.tr), 1),
        te=round(draw(protocol.te), 2),
        flip=round(draw(protocol.flip), 2),
        thickness=round(thickness, 3),
        slices=int(np.clip(round(covered / thickness), *SLICE_RANGE)),
        snr=round(draw(protocol.snr), 3),
    )


def synthesize_under_protocol(params: SubjectParams, name: str, scale: float = 1.0):
    """Render ``params`` imaged with protocol ``name``: a
    :class:`~jointseg.synth.synthesis.SubjectVolume` (the realistic rendering for the joint's
    own protocol)."""
    from jointseg.synth.synthesis import synthesize_subject

    return synthesize_subject(
        under_protocol(params, name), scale, imaging_protocol(params.joint, name)
    )
