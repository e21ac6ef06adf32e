"""Method A: the noise-referenced significance test (docs/analysis.md gives the formulas).

For each sample x~_k and filter scale s: Z_ks = G_s * (x~_k - x) / (sqrt(2) c_s sd_s(r)), with
sd_s(r) the local std of G_s * n over fresh noise realisations n of x and c_s the calibration
factor (``reference.py``). Under the null (x~_k differs from x as a repeat scan would) Z_ks is a
smooth, unit-variance Gaussian field; its maximum over the body has the tail of the expected Euler
characteristic (random field theory: Worsley et al. 1996), from the body's area and perimeter and
the field's measured roughness. The per-sample p-value is the smallest over scales, Bonferroni
corrected over the scales: family-wise error over the image and the scales.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from scipy.stats import norm

from .reference import DEFAULT_SCALES_MM, NoiseReference, build_reference, load_calibration, smooth


def tail_factor(calibration: dict | None = None) -> float:
    """The calibrated factor on Z that makes the maximum statistic's family-wise error alpha on
    simulated repeat scans (1 when the calibration has none)."""
    cal = calibration if calibration is not None else load_calibration()
    return float((cal.get("max_statistic_factor") or {}).get("factor", 1.0))


def expected_euler_characteristic(u: float, area_px: float, perimeter_px: float, roughness: float) -> float:
    """E[EC] of the excursion set {|Z| > u} of a 2-D unit Gaussian field: the tail probability of
    max |Z| for high u (two-sided: twice the one-sided sum)."""
    e = math.exp(-0.5 * u * u)
    one = (
        norm.sf(u)
        + 0.5 * perimeter_px * math.sqrt(roughness) / (2 * math.pi) * e
        + area_px * roughness / (2 * math.pi) ** 1.5 * u * e
    )
    return 2.0 * one


def max_statistic_threshold(alpha: float, area_px: float, perimeter_px: float, roughness: float) -> float:
    """The u at which the family-wise false-positive probability of max |Z| is ``alpha``."""
    lo, hi = 0.5, 40.0
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        if expected_euler_characteristic(mid, area_px, perimeter_px, roughness) > alpha:
            lo = mid
        else:
            hi = mid
    return hi


@dataclass
class SignificanceResult:
    """p_values [K]; maps [K, H, W] (bool, the significantly altered pixels of each sample);
    frequency [H, W] (fraction of samples altered at each pixel); z_max [K, H, W] (|Z| maximised
    over scales, in units of each scale's threshold: > 1 is significant); thresholds per scale."""

    p_values: np.ndarray
    maps: np.ndarray
    frequency: np.ndarray
    z_max: np.ndarray
    thresholds: dict
    alpha: float
    scales_mm: tuple
    noise_std_hu: float

    @property
    def altered(self) -> np.ndarray:
        return self.p_values < self.alpha


def check_inputs(x_hu, samples_hu, spacing_mm, min_samples: int = 1) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x_hu, np.float32)
    s = np.asarray(samples_hu, np.float32)
    if x.ndim != 2:
        raise ValueError(f"x must be one slice [H, W]; got shape {tuple(x.shape)}")
    if s.ndim == 2:
        s = s[None]
    if s.ndim != 3 or s.shape[1:] != x.shape:
        raise ValueError(f"samples must be [K, H, W] with H, W = {x.shape}; got shape {tuple(s.shape)}")
    if s.shape[0] < min_samples:
        raise ValueError(f"at least {min_samples} samples are needed; got {s.shape[0]}")
    if not (np.isfinite(x).all() and np.isfinite(s).all()):
        raise ValueError("x and the samples must be finite (NaN or Inf found)")
    if len(spacing_mm) != 2 or not all(np.isfinite(v) and v > 0 for v in spacing_mm):
        raise ValueError(f"spacing_mm must be two positive numbers (row, col); got {spacing_mm}")
    return x, s


def noise_referenced_test(
    x_hu,
    samples_hu,
    spacing_mm: tuple[float, float],
    alpha: float = 0.05,
    scales_mm: tuple[float, ...] = DEFAULT_SCALES_MM,
    reference: NoiseReference | None = None,
    seed: int = 0,
    device: str = "cpu",
) -> SignificanceResult:
    """Which samples differ from x by more than noise, and where (method A)."""
    x, s = check_inputs(x_hu, samples_hu, spacing_mm, min_samples=2)
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be within (0, 1); got {alpha}")
    spacing_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
    ref = reference or build_reference(x, spacing_mm, scales_mm, seed=seed, device=device)
    body = ref.body
    tail = tail_factor()
    area = float(body.sum())
    perimeter = float((body & ~ndimage.binary_erosion(body)).sum())
    n_scales = len(scales_mm)
    thresholds = {
        sc: max_statistic_threshold(alpha / n_scales, area, perimeter, ref.roughness[sc]) for sc in scales_mm
    }
    K = s.shape[0]
    p = np.ones(K)
    maps = np.zeros(s.shape, bool)
    zrel = np.zeros(s.shape, np.float32)
    for k in range(K):
        d = s[k].astype(np.float64) - x
        for sc in scales_mm:
            z = np.abs(smooth(d, sc, spacing_mm)) / (tail * ref.level[sc])
            zb = np.where(body, z, 0.0)
            m = float(zb.max())
            p_sc = min(1.0, n_scales * expected_euler_characteristic(m, area, perimeter, ref.roughness[sc]))
            p[k] = min(p[k], p_sc)
            zrel[k] = np.maximum(zrel[k], (zb / thresholds[sc]).astype(np.float32))
        maps[k] = zrel[k] > 1.0
    return SignificanceResult(
        p_values=p,
        maps=maps,
        frequency=maps.mean(0).astype(np.float32),
        z_max=zrel,
        thresholds=thresholds,
        alpha=alpha,
        scales_mm=tuple(scales_mm),
        noise_std_hu=ref.noise_std_hu,
    )
