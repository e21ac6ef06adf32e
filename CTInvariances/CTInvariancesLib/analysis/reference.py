"""The noise reference of the analysis: how x~ - x varies when x~ differs from x by noise alone.

The reference is built per slice from fresh noise realisations of x (the project's low-dose
simulator at the noise level and with the photon statistics of x: the NoiseSampler's noise), so the
local level (more noise behind bone, less at the edge) and the texture of CT noise are those of this
slice. One calibration constant per filter scale, measured on simulated repeat scans
(``scripts/calibrate_analysis.py``), relates that reference to the difference of two low-dose
realisations (it absorbs the part of x's measured noise that two realisations share).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from ..metrics import body_mask

CALIBRATION_FILE = Path(__file__).resolve().parents[2] / "Resources" / "Analysis" / "calibration.json"
DEFAULT_SCALES_MM = (1.0, 2.0, 4.0)
# Smoothing of the per-pixel variance of the J reference fields: J = 8 fields give 8 degrees of
# freedom per pixel; a 6 mm Gaussian pools a few hundred pixels while keeping the level local.
LEVEL_SMOOTHING_MM = 6.0
REFERENCE_REALISATIONS = 8


@lru_cache(maxsize=1)
def load_calibration(path: str | None = None) -> dict:
    """The calibration constants (per scale in mm: the factor c_s), as written by the script."""
    p = Path(path) if path else CALIBRATION_FILE
    with open(p) as f:
        return json.load(f)


def calibration_factor(scale_mm: float, calibration: dict | None = None) -> float:
    cal = calibration if calibration is not None else load_calibration()
    table = cal["factor_by_scale_mm"]
    key = min(table, key=lambda k: abs(float(k) - scale_mm))
    if abs(float(key) - scale_mm) > 1e-6:
        raise ValueError(
            f"no calibration for the {scale_mm} mm scale (calibrated: {', '.join(sorted(table))} mm); "
            "run scripts/calibrate_analysis.py with --scales"
        )
    return float(table[key])


def _sigma_px(scale_mm: float, spacing_mm: tuple[float, float]) -> tuple[float, float]:
    return (scale_mm / spacing_mm[0], scale_mm / spacing_mm[1])


def smooth(image: np.ndarray, scale_mm: float, spacing_mm: tuple[float, float]) -> np.ndarray:
    """G_s * image: the Gaussian low-pass of the test, sigma ``scale_mm`` in each direction."""
    return ndimage.gaussian_filter(
        np.asarray(image, np.float64), _sigma_px(scale_mm, spacing_mm), mode="nearest"
    )


# Filters and networks see padding near the image's edge, so samples and smoothed differences are
# unreliable there (a 256 px crop of the demo slice flagged 5 of 6 redcnn samples at the edge).
EDGE_MARGIN_MM = 8.0


def away_from_image_edge(shape, spacing_mm, margin_mm: float = EDGE_MARGIN_MM) -> np.ndarray:
    """Pixels at least ``margin_mm`` from the image's edge: where the analysis looks."""
    m = np.zeros(shape, bool)
    r, c = int(np.ceil(margin_mm / spacing_mm[0])), int(np.ceil(margin_mm / spacing_mm[1]))
    m[r : shape[0] - r, c : shape[1] - c] = True
    return m


@dataclass
class NoiseReference:
    """Per scale: the local std (HU) of G_s * (difference of two noise realisations of x) and the
    roughness lambda (variance of the gradient of the unit-variance field, per pixel^2) that the
    maximum statistic's null distribution needs."""

    spacing_mm: tuple[float, float]
    noise_std_hu: float
    body: np.ndarray
    scales_mm: tuple[float, ...]
    level: dict[float, np.ndarray] = field(default_factory=dict)
    roughness: dict[float, float] = field(default_factory=dict)
    kappa: dict[float, float] = field(default_factory=dict)


def build_reference(
    x_hu: np.ndarray,
    spacing_mm: tuple[float, float],
    scales_mm: tuple[float, ...] = DEFAULT_SCALES_MM,
    realisations: int = REFERENCE_REALISATIONS,
    seed: int = 0,
    device: str = "cpu",
    calibration: dict | None = None,
    body: np.ndarray | None = None,
) -> NoiseReference:
    """The noise reference of slice ``x_hu`` (HU, [H, W]) with pixel spacing (row, col) in mm."""
    from ..invariance.sampler import fresh_noise_of

    x = np.asarray(x_hu, np.float32)
    seeds = [int(seed) * 7919 + 104729 + j for j in range(realisations)]
    sigma, noise = fresh_noise_of(x, spacing_mm, seeds, device)
    body = body_mask(x) if body is None else body
    body = body & away_from_image_edge(x.shape, spacing_mm)
    ref = NoiseReference(tuple(spacing_mm), float(sigma), body, tuple(scales_mm))
    # The local level comes from the unfiltered realisations (one number per pixel and realisation:
    # a well-estimated map), the scale's noise reduction kappa_s from the filtered ones over the
    # whole body (a low-pass field has few independent values locally, so its local variance over
    # 8 realisations would be a noisy estimate, and a noisy reference makes false alarms).
    var_n = ndimage.gaussian_filter(
        np.mean(noise**2, 0), _sigma_px(LEVEL_SMOOTHING_MM, spacing_mm), mode="nearest"
    )
    sd_n = np.sqrt(np.maximum(var_n, 1e-12))
    for s in scales_mm:
        c = calibration_factor(s, calibration)
        g = np.stack([smooth(n, s, spacing_mm) for n in noise])
        kappa = float(np.sqrt(np.mean((g / sd_n) ** 2, 0)[body].mean()))
        # difference of two realisations: twice the variance; c_s from the calibration
        level = c * np.sqrt(2.0) * kappa * sd_n
        ref.level[s] = level.astype(np.float32)
        ref.kappa[s] = kappa
        lam = []
        for gj in g:
            z = gj / (kappa * sd_n)
            gy, gx = np.gradient(z)
            lam.append(0.5 * (np.mean(gy[body] ** 2) + np.mean(gx[body] ** 2)))
        ref.roughness[s] = float(np.median(lam))
    return ref
