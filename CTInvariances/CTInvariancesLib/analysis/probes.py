"""Method C: structure probes. Would a structure of this size and contrast, here, survive f?

A smooth-edged disc p (or a user-given mask) of contrast C is added to x. The consistency step then
looks for the input closest to x + p that f maps to f(x), the output *without* the structure:
x_c = x + p + d with f(x_c) = f(x) and d in the range of J^T (the engine's step). What remains of
the probe in x_c is what f cannot see:

    erasure  = <x_c - x, p> / <p, p>        (1: f erases the structure completely; 0: f keeps it)
    transfer = <f(x + p) - f(x), p> / <p, p> (f's own contrast transfer for this structure)

For a linear f both describe the same operator; they differ where f is not linear (clipping,
noise-dependent smoothing), which is why both are reported (docs/analysis.md).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..invariance.consistency import DEFAULT_STEPS, consistency_project
from ..metrics import body_mask

EDGE_MM = 0.5  # width of the disc's smooth edge (tanh profile)
# Erasure is measured with plain gradient steps: the sampling default (nonlinear CG after six
# gradient steps) stops at the same residual but at a different consistent input, and the erasure
# validation in docs/analysis.md was measured with this method.
PROBE_METHOD = "gd"


@dataclass
class ProbeResult:
    centres_mm: np.ndarray  # [P, 2] (row, col) in mm, as given
    diameter_mm: float
    contrast_hu: float
    erasure: np.ndarray  # [P]
    transfer: np.ndarray  # [P]
    consistent_ratio: np.ndarray  # [P] fidelity of the consistent input: |f(x_c) - f(x)| / |x_c - x|

    def rows(self) -> list[dict]:
        return [
            {
                "row_mm": float(c[0]),
                "col_mm": float(c[1]),
                "diameter_mm": self.diameter_mm,
                "contrast_hu": self.contrast_hu,
                "erasure": float(e),
                "transfer": float(t),
            }
            for c, e, t in zip(self.centres_mm, self.erasure, self.transfer)
        ]


def disc_profile(shape, spacing_mm, centre_mm, diameter_mm) -> np.ndarray:
    """Smooth-edged disc (peak 1) at ``centre_mm`` (row, col in mm from pixel (0, 0))."""
    yy = (np.arange(shape[0]) * spacing_mm[0])[:, None] - centre_mm[0]
    xx = (np.arange(shape[1]) * spacing_mm[1])[None, :] - centre_mm[1]
    r = np.sqrt(yy**2 + xx**2)
    return (0.5 * (1.0 - np.tanh((r - diameter_mm / 2.0) / (EDGE_MM / 2.0)))).astype(np.float32)


def _check(x, spacing_mm, centres_mm, diameter_mm, body):
    if diameter_mm < 2 * max(spacing_mm):
        raise ValueError(
            f"probe diameter {diameter_mm} mm is below two pixels ({2 * max(spacing_mm):.2f} mm here)"
        )
    H, W = x.shape
    for c in centres_mm:
        r, col = c[0] / spacing_mm[0], c[1] / spacing_mm[1]
        if not (0 <= r < H and 0 <= col < W):
            raise ValueError(f"probe centre ({c[0]:.1f}, {c[1]:.1f}) mm is outside the image")
        if not body[int(round(min(r, H - 1))), int(round(min(col, W - 1)))]:
            raise ValueError(f"probe centre ({c[0]:.1f}, {c[1]:.1f}) mm is outside the body")


def structure_probe(
    denoiser,
    x_hu,
    spacing_mm: tuple[float, float],
    centres_mm,
    diameter_mm: float,
    contrast_hu: float,
    steps: int = DEFAULT_STEPS,
    mask: np.ndarray | None = None,
    denoised_hu: np.ndarray | None = None,
    batch_size: int = 4,
    should_stop: Callable[[], bool] | None = None,
    min_separation_mm: float = 40.0,
) -> ProbeResult:
    """Erasure and contrast transfer of probes at ``centres_mm`` ([P, 2], row/col mm), one probe per
    consistency problem; ``mask`` (bool [H, W]) replaces the disc with a user-given shape (its
    centroid is then the only centre). Probes at least ``min_separation_mm`` apart are inserted
    into one input together (0: each on its own)."""
    x = np.asarray(x_hu, np.float32)
    if x.ndim != 2 or not np.isfinite(x).all():
        raise ValueError("x must be one finite slice [H, W]")
    spacing_mm = (float(spacing_mm[0]), float(spacing_mm[1]))
    body = body_mask(x)
    if mask is not None:
        mask = np.asarray(mask, bool)
        if mask.shape != x.shape or not mask.any():
            raise ValueError(f"the probe mask must be a non-empty [H, W] = {x.shape} mask")
        from scipy import ndimage

        rc = ndimage.center_of_mass(mask)
        centres = np.array([[rc[0] * spacing_mm[0], rc[1] * spacing_mm[1]]])
        profiles = [ndimage.gaussian_filter(mask.astype(np.float32), EDGE_MM / 2 / min(spacing_mm))]
        diameter_mm = float(2 * np.sqrt(mask.sum() * spacing_mm[0] * spacing_mm[1] / np.pi))
    else:
        centres = np.atleast_2d(np.asarray(centres_mm, np.float64))
        _check(x, spacing_mm, centres, diameter_mm, body)
        profiles = [disc_profile(x.shape, spacing_mm, c, diameter_mm) for c in centres]
    fx = denoiser.denoise_slices(x[None])[0] if denoised_hu is None else np.asarray(denoised_hu, np.float32)
    probes = [np.float32(contrast_hu) * p for p in profiles]
    groups = group_probes(centres, min_separation_mm)
    # probes far apart share one input: f is local, so each is measured on its own profile
    inserted = np.stack([x + sum(probes[i] for i in g) for g in groups]).astype(np.float32)
    f_inserted = denoiser.denoise_slices(inserted, batch_size=batch_size)
    cons = consistency_project(
        denoiser,
        x,
        inserted,
        steps,
        PROBE_METHOD,
        denoised_hu=fx,
        batch_size=batch_size,
        should_stop=should_stop,
    )
    f_cons = denoiser.denoise_slices(cons.samples, batch_size=batch_size)
    n = len(probes)
    erasure, transfer, ratio = np.zeros(n), np.zeros(n), np.zeros(n)
    for gi, g in enumerate(groups):
        for i in g:
            p = probes[i].astype(np.float64)
            w = p > 1e-3 * abs(contrast_hu)
            pp = float((p[w] ** 2).sum())
            erasure[i] = float(((cons.samples[gi] - x)[w] * p[w]).sum()) / pp
            transfer[i] = float(((f_inserted[gi] - fx)[w] * p[w]).sum()) / pp
            moved = np.sqrt(np.mean((cons.samples[gi] - x)[w] ** 2))
            ratio[i] = np.sqrt(np.mean((f_cons[gi] - fx)[w] ** 2)) / max(moved, 1e-9)
    return ProbeResult(centres, float(diameter_mm), float(contrast_hu), erasure, transfer, ratio)


def group_probes(centres_mm: np.ndarray, min_separation_mm: float) -> list[list[int]]:
    """Greedy groups of probe indices whose centres are at least ``min_separation_mm`` apart."""
    groups: list[list[int]] = []
    for i, c in enumerate(centres_mm):
        for g in groups:
            if all(np.hypot(*(c - centres_mm[j])) >= min_separation_mm for j in g):
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def probe_grid(x_hu, spacing_mm, diameter_mm: float, spacing_factor: float = 3.0, min_step_mm: float = 15.0):
    """Probe centres (row, col mm) on a regular grid inside the body, away from its edge."""
    from scipy import ndimage

    x = np.asarray(x_hu, np.float32)
    step = max(spacing_factor * diameter_mm, min_step_mm)
    inner = ndimage.binary_erosion(body_mask(x), iterations=max(1, int(diameter_mm / min(spacing_mm))))
    H, W = x.shape
    rows = np.arange(step / 2, H * spacing_mm[0], step)
    cols = np.arange(step / 2, W * spacing_mm[1], step)
    out = [
        (r, c)
        for r in rows
        for c in cols
        if inner[min(int(r / spacing_mm[0]), H - 1), min(int(c / spacing_mm[1]), W - 1)]
    ]
    return np.array(out, np.float64).reshape(-1, 2)


NO_PROBE = -1.0  # erasure maps outside the body (a finite value: NaN would make the file unusable)


def erasure_map(shape, spacing_mm, result: ProbeResult, body: np.ndarray | None = None) -> np.ndarray:
    """Each pixel takes the erasure of its nearest probe (``NO_PROBE`` outside the body): the map per
    size and contrast that the main job writes."""
    yy = (np.arange(shape[0]) * spacing_mm[0])[:, None, None]
    xx = (np.arange(shape[1]) * spacing_mm[1])[None, :, None]
    c = result.centres_mm
    out = np.full(shape, NO_PROBE, np.float32)
    if len(c) == 0:
        return out
    nearest = np.argmin((yy - c[None, None, :, 0]) ** 2 + (xx - c[None, None, :, 1]) ** 2, axis=-1)
    out = result.erasure[nearest].astype(np.float32)
    if body is not None:
        out[~body] = NO_PROBE
    return out
