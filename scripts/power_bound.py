"""How much signal a single sample difference can carry: the SNR of an ideal, disc-matched filter at
the known disc position (held-out abdomen slice 16, liver, 25 % dose, 16 realisations), for x~ - x
and for x~ minus the mean of the 14 other samples. Bounds what any image-wide test can detect.

    .venv/bin/python scripts/power_bound.py
"""

import sys

import numpy as np

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "CTInvariances"))
from scipy import ndimage

from CTInvariancesLib.analysis.probes import disc_profile
from CTInvariancesLib.datasets import slice_realisations
from CTInvariancesLib.metrics import body_mask

ld, fd, px = slice_realisations("abdomen-siemens-20", 16, 16, seed=20260)
body = ndimage.binary_erosion(body_mask(fd), iterations=20)
s = ndimage.gaussian_filter(fd, 2)
liver = ndimage.binary_erosion((s > 30) & (s < 90), iterations=12)
c = np.argwhere(liver)[len(np.argwhere(liver)) // 2]
cen = (c[0] * px[0], c[1] * px[1])
for d_mm, C in ((5, 40), (10, 20)):
    prof = disc_profile(fd.shape, px, cen, d_mm)
    k = prof[c[0] - 15 : c[0] + 16, c[1] - 15 : c[1] + 16]
    k = k / k.sum()
    sig = ndimage.convolve(C * prof.astype(np.float64), k)[c[0], c[1]]
    nulls = [ndimage.convolve(ld[j].astype(np.float64) - ld[0], k)[liver] for j in range(1, 16)]
    sd2 = np.std(np.concatenate(nulls))
    pooled = [
        ndimage.convolve(ld[j].astype(np.float64) - ld[1:][np.arange(15) != j - 1].mean(0), k)[liver]
        for j in range(1, 16)
    ]
    sd1 = np.std(np.concatenate(pooled))
    print(
        f"{d_mm} mm {C} HU: matched disc filter SNR x~-x: {sig / sd2:.2f}; "
        f"vs pooled mean of 14 others: {sig / sd1:.2f}"
    )
