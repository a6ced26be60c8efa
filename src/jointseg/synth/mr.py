"""MR appearance: tissue signal from relaxation parameters, partial volume, fat suppression,
blur, bias field and Rician noise.

Relaxation times are rounded literature values at 1.5-3 T (Gold et al., AJR 2004,
"Musculoskeletal MRI at 3.0 T: relaxation times and image contrast"; Stanisz et al., MRM 2005,
"T1, T2 relaxation and magnetization transfer in tissue at 3T"); pediatric epiphyseal cartilage
and growth plates are given a longer T2 (more water).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from jointseg.synth import phantom as ph
from jointseg.synth.noise import smooth_noise

#: Per tissue: proton density (relative), water T1, T2, T2* (ms), texture amplitude (relative
#: signal variation). Fat fractions are the phantom's (``phantom.FAT_FRACTION`` by default).
TISSUE_TABLE = {
    ph.AIR: (0.0, 1000, 1, 1, 0.0),
    ph.SKIN: (0.75, 1000, 40, 25, 0.08),
    ph.FAT: (1.0, 1200, 40, 20, 0.06),
    ph.MUSCLE: (0.82, 1420, 34, 24, 0.08),
    ph.SEPTUM: (0.45, 800, 15, 8, 0.05),
    ph.TENDON: (0.3, 800, 3, 1.5, 0.15),
    ph.ARTERY: (0.9, 1650, 250, 60, 0.05),
    ph.VEIN: (0.9, 1650, 180, 45, 0.05),
    ph.FLUID: (1.0, 3500, 650, 250, 0.03),
    ph.CARTILAGE: (0.82, 1150, 48, 24, 0.06),
    ph.PHYSIS: (0.9, 1500, 80, 35, 0.06),
    ph.CORTEX: (0.06, 1000, 1.0, 0.5, 0.3),
    ph.MARROW: (0.95, 900, 45, 9, 0.05),
    ph.LUNG: (0.08, 1300, 30, 1.5, 0.3),
    ph.MENISCUS: (0.35, 900, 8, 4, 0.1),
}
#: Fat (methylene) T1, T2 (spin echo, longer on fast spin echo), T2* (ms).
FAT_T1, FAT_T2_SE, FAT_T2_FSE, FAT_T2STAR = 370.0, 70.0, 120.0, 30.0
#: Through-plane flow: arteries are dark on spin echo (flow void), bright on gradient echo.
FLOW = {"se": {ph.ARTERY: 0.12, ph.VEIN: 0.55}, "gre": {ph.ARTERY: 1.3, ph.VEIN: 0.9}}
#: Subject jitter keys -> tissues they scale.
JITTER_TISSUES = {
    "muscle": (ph.MUSCLE,),
    "fat": (ph.FAT, ph.SKIN),
    "marrow": (ph.MARROW,),
    "cartilage": (ph.CARTILAGE, ph.MENISCUS),
    "fluid": (ph.FLUID,),
    "tendon": (ph.TENDON, ph.SEPTUM),
    "physis": (ph.PHYSIS,),
}


def _relaxation(sequence: str, tr: float, te: float, flip: float, t1, t2, t2s):
    t1 = np.asarray(t1, float)
    if sequence == "se":
        return (1.0 - np.exp(-tr / t1)) * np.exp(-te / np.asarray(t2, float))
    if sequence == "gre":
        alpha = np.deg2rad(flip)
        e1 = np.exp(-tr / t1)
        steady = np.sin(alpha) * (1.0 - e1) / (1.0 - np.cos(alpha) * e1)
        return steady * np.exp(-te / np.asarray(t2s, float))
    raise ValueError(f"unknown sequence {sequence!r}")


def signal_tables(
    sequence: str, tr: float, te: float, flip: float, jitter: dict[str, float]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tissue: water signal, fat signal (per unit fat fraction), texture amplitude."""
    n = len(ph.TISSUE_NAMES)
    table = np.array([TISSUE_TABLE[t] for t in range(n)], float)
    pd = table[:, 0].copy()
    for key, tissues in JITTER_TISSUES.items():
        for t in tissues:
            pd[t] *= jitter.get(key, 1.0)
    for t, factor in FLOW[sequence].items():
        pd[t] *= factor
    water = pd * _relaxation(sequence, tr, te, flip, table[:, 1], table[:, 2], table[:, 3])
    fat_t2 = FAT_T2_FSE if (sequence == "se" and tr > 1500) else FAT_T2_SE
    fat_unit = _relaxation(sequence, tr, te, flip, FAT_T1, fat_t2, FAT_T2STAR)
    fat = pd * float(fat_unit)
    # Short-T2* compartments (cortex, lung) keep their own fat tiny.
    fat[[ph.CORTEX, ph.LUNG, ph.AIR]] = 0.0
    if sequence == "gre":
        fat[ph.MARROW] *= np.exp(-te / 12.0) / np.exp(-te / FAT_T2STAR)  # trabecular dephasing
    return water.astype(np.float32), fat.astype(np.float32), table[:, 4]


def fine_signals(
    tissue: np.ndarray,
    fat_fraction: np.ndarray,
    texture: np.ndarray,
    water: np.ndarray,
    fat: np.ndarray,
    texture_amp: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Water and fat signal per fine voxel."""
    mod = 1.0 + texture_amp.astype(np.float32)[tissue] * texture
    w = water[tissue] * (1.0 - fat_fraction) * mod
    f = fat[tissue] * fat_fraction * mod
    return w, f


def slice_average(array: np.ndarray, sub: int) -> np.ndarray:
    """Average groups of ``sub`` sub-slices into one slice (the slice profile)."""
    if sub == 1:
        return array.astype(np.float32)
    z, y, x = array.shape
    return array.reshape(z // sub, sub, y, x).mean(axis=1, dtype=np.float32)


def acquire(
    water: np.ndarray,
    fat: np.ndarray,
    rng: np.random.Generator,
    *,
    fat_sat: bool,
    fat_sat_efficiency: float,
    blur: float,
    bias: float,
    snr: float,
    reference: float,
    gain: float,
    sensitivity: np.ndarray | None = None,
    motion: float = 0.0,
) -> np.ndarray:
    """From slice-averaged water and fat signals to the stored image (float32, >= 0).

    ``sensitivity`` is the receive coil's profile (1 at its most sensitive); the noise does
    not follow it, so the signal-to-noise ratio falls away from a surface coil. ``motion``
    (radians) is the amplitude of a periodic phase error between phase-encoding lines (a
    moving child): ghosts of the anatomy along the phase-encoding axis (the columns).
    """
    shape = water.shape
    if fat_sat:
        # Suppression fails towards the edges of the field of view (B0 inhomogeneity).
        z, y, x = np.meshgrid(*(np.linspace(-1, 1, n) for n in shape), indexing="ij")
        edge = 0.25 * z**2 + y**2 + x**2
        residual = np.clip(1.0 - fat_sat_efficiency + 0.05 * edge, 0.0, 1.0).astype(np.float32)
        image = water + fat * residual
    else:
        image = water + fat
    image = ndimage.gaussian_filter(image, (0.0, blur, blur))
    # Smooth multiplicative bias (coil sensitivity), about +-bias.
    field = smooth_noise(rng, shape, (max(shape[0] / 1.5, 1.0), shape[1] / 2.0, shape[2] / 2.0))
    image *= np.exp(bias * field).astype(np.float32)
    if sensitivity is not None:
        image *= sensitivity
    imag = np.zeros(shape, np.float32)
    if motion > 0:
        lines = shape[2]
        period = rng.uniform(4.0, 12.0)
        phase = motion * np.sin(2 * np.pi * np.arange(lines) / period + rng.uniform(0, 6.3))
        spectrum = np.fft.fft(image, axis=2) * np.exp(1j * np.fft.ifftshift(phase))
        moved = np.fft.ifft(spectrum, axis=2)
        image, imag = moved.real.astype(np.float32), moved.imag.astype(np.float32)
    sigma = reference / snr
    real = image + rng.normal(0.0, sigma, shape).astype(np.float32)
    imag = imag + rng.normal(0.0, sigma, shape).astype(np.float32)
    return np.sqrt(real * real + imag * imag) * np.float32(gain)


def surface_coil(points: np.ndarray, centre: np.ndarray, reach: float) -> np.ndarray:
    """Receive sensitivity of a loop coil centred at ``centre`` (world mm): about flat within
    ``reach`` of it, then falling with the square of the distance."""
    r2 = sum((points[c] - np.float32(centre[c])) ** 2 for c in range(3))
    return (1.0 / (1.0 + r2 / np.float32(reach**2))).astype(np.float32) * 1.6 + 0.05
