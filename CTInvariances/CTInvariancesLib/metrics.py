"""Image quality in a display window: PSNR and SSIM of images mapped to [0, 1].

Both can be restricted to a region (``mask``), normally the patient body: outside it the window
clips air to 0 for every image, which adds perfect-SSIM pixels that dilute any difference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from skimage.metrics import structural_similarity


@dataclass(frozen=True)
class Window:
    center: float
    width: float
    name: str = ""

    @property
    def low(self) -> float:
        return self.center - self.width / 2

    def apply(self, hu: np.ndarray) -> np.ndarray:
        """HU -> [0, 1], clipped."""
        return np.clip((np.asarray(hu, dtype=np.float64) - self.low) / self.width, 0.0, 1.0)

    def __str__(self) -> str:
        return f"{self.name + ' ' if self.name else ''}W{self.width:g}/L{self.center:g}"


SOFT_TISSUE = Window(40.0, 400.0, "soft tissue")
LUNG = Window(-600.0, 1500.0, "lung")
WINDOWS = {"soft-tissue": SOFT_TISSUE, "lung": LUNG}


def parse_window(text: str) -> Window:
    """'soft-tissue', 'lung', or 'L,W' (centre, width in HU)."""
    if text in WINDOWS:
        return WINDOWS[text]
    try:
        c, w = (float(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"window {text!r}: use soft-tissue, lung, or CENTER,WIDTH in HU") from None
    if w <= 0:
        raise ValueError(f"window width must be positive, got {w}")
    return Window(c, w)


def psnr(
    test_hu: np.ndarray, ref_hu: np.ndarray, window: Window = SOFT_TISSUE, mask: np.ndarray | None = None
) -> float:
    err = (window.apply(test_hu) - window.apply(ref_hu)) ** 2
    mse = float(np.mean(err if mask is None else err[mask]))
    return float("inf") if mse == 0 else 10.0 * np.log10(1.0 / mse)


def ssim(
    test_hu: np.ndarray, ref_hu: np.ndarray, window: Window = SOFT_TISSUE, mask: np.ndarray | None = None
) -> float:
    """Mean SSIM (scikit-image, 7x7 uniform window, data range 1) of a slice, or over ``mask``."""
    value, ssim_map = structural_similarity(
        window.apply(test_hu), window.apply(ref_hu), data_range=1.0, full=True
    )
    return float(value) if mask is None else float(np.mean(ssim_map[mask]))


def body_mask(image_hu: np.ndarray, threshold_hu: float = -500.0) -> np.ndarray:
    """The patient: the largest connected region above ``threshold_hu`` (smoothed), holes filled."""
    from scipy import ndimage

    mask = ndimage.gaussian_filter(np.asarray(image_hu, np.float32), 2.0) > threshold_hu
    labels, n = ndimage.label(mask)
    if n == 0:
        return np.ones_like(mask)
    sizes = ndimage.sum(mask, labels, range(1, n + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def rmse_hu(test_hu: np.ndarray, ref_hu: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(test_hu, np.float64) - ref_hu) ** 2)))
