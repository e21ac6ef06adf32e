"""Evaluate a denoiser on the held-out slices: PSNR/SSIM of low dose and denoised vs full dose."""

from __future__ import annotations

import numpy as np

from .denoisers import Denoiser
from .metrics import SOFT_TISSUE, Window, psnr, rmse_hu, ssim
from .training.data import make_pairs

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
    rows = {"low_dose": ld, "denoised": out}
    result = {
        "denoiser": denoiser.name,
        "dose_fraction": dose_fraction,
        "window": str(window),
        "n_slices": int(len(fd)),
        "slices": [str(n) for n in pairs["names"]],
    }
    for key, imgs in rows.items():
        result[key] = {
            "psnr_db": float(np.mean([psnr(a, b, window) for a, b in zip(imgs, fd)])),
            "ssim": float(np.mean([ssim(a, b, window) for a, b in zip(imgs, fd)])),
            "rmse_hu": float(np.mean([rmse_hu(a, b) for a, b in zip(imgs, fd)])),
        }
    result["psnr_gain_db"] = result["denoised"]["psnr_db"] - result["low_dose"]["psnr_db"]
    result["ssim_gain"] = result["denoised"]["ssim"] - result["low_dose"]["ssim"]
    return result
