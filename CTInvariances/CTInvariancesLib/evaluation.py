"""Evaluate a denoiser on the held-out slices: PSNR/SSIM of low dose and denoised vs full dose.

Primary numbers are computed inside the patient body (see :func:`metrics.body_mask`) in the
display window; whole-slice numbers are reported beside them.
"""

from __future__ import annotations

import numpy as np

from .datasets import make_pairs
from .denoisers import Denoiser
from .metrics import SOFT_TISSUE, Window, body_mask, psnr, rmse_hu, ssim

HOLDOUT_SEED = 7  # noise realisation of the evaluation set (differs from training seeds)


def evaluate_denoiser(
    denoiser: Denoiser,
    dose_fraction: float = 0.25,
    window: Window = SOFT_TISSUE,
    batch_size: int = 2,
    pairs: dict[str, np.ndarray] | None = None,
) -> dict:
    """Mean PSNR (dB) / SSIM / RMSE (HU) over the held-out slices, low dose and denoised."""
    if pairs is None:
        pairs = make_pairs("holdout", dose_fraction, realisations=1, seed=HOLDOUT_SEED)
    ld, fd = pairs["ld"], pairs["fd"]
    out = denoiser.denoise_slices(ld, batch_size=batch_size)
    masks = [body_mask(f) for f in fd]
    rows = {"low_dose": ld, "denoised": out}
    result = {
        "denoiser": denoiser.name,
        "dose_fraction": dose_fraction,
        "window": str(window),
        "region": "patient body (full dose > -500 HU, largest component, holes filled)",
        "n_slices": int(len(fd)),
        "slices": [str(n) for n in pairs["names"]],
    }
    groups = {"all": range(len(fd))}
    for name in pairs["names"]:
        groups.setdefault(str(name).split("[")[0], [])
    for i, name in enumerate(pairs["names"]):
        groups[str(name).split("[")[0]].append(i)
    for key, imgs in rows.items():
        per = [
            {
                "psnr_db": psnr(imgs[i], fd[i], window, masks[i]),
                "ssim": ssim(imgs[i], fd[i], window, masks[i]),
                "psnr_db_whole_slice": psnr(imgs[i], fd[i], window),
                "ssim_whole_slice": ssim(imgs[i], fd[i], window),
                "rmse_hu": rmse_hu(imgs[i][masks[i]], fd[i][masks[i]]),
            }
            for i in range(len(fd))
        ]
        result[key] = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
        result[f"{key}_by_series"] = {
            g: {k: float(np.mean([per[i][k] for i in idx])) for k in per[0]}
            for g, idx in groups.items()
            if g != "all"
        }
    for suffix in ("", "_whole_slice"):
        result[f"psnr_gain_db{suffix}"] = (
            result["denoised"][f"psnr_db{suffix}"] - result["low_dose"][f"psnr_db{suffix}"]
        )
        result[f"ssim_gain{suffix}"] = (
            result["denoised"][f"ssim{suffix}"] - result["low_dose"][f"ssim{suffix}"]
        )
    return result
