"""README figure: raw samples and std maps of the tiled and the spatial engine (redcnn, held-out
abdomen slice 16, sampled whole, central 256 px shown, K = 8). Writes docs/images/spatial_vs_tiled_redcnn.png.

    .venv/bin/python scripts/figure_spatial_vs_tiled.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.datasets import make_pairs, source_pixel_mm  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.invariance.sampler import InvarianceSampler, std_map  # noqa: E402


def main() -> None:
    pairs = make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
    full = pairs["ld"][4]  # abdomen k = 16, first realisation; sampled whole, shown cropped
    crop = (slice(128, 384), slice(128, 384))
    x = full[crop]
    fig, ax = plt.subplots(2, 4, figsize=(16, 8))
    gray = {"cmap": "gray", "vmin": -160, "vmax": 240}
    for row, (cvae, label) in enumerate(((None, "tiled engine"), ("spatial", "spatial engine"))):
        res = InvarianceSampler.load("redcnn", cvae=cvae).sample(
            full, 8, seed=0, pixel_mm=source_pixel_mm("abdomen-siemens-20")
        )
        samples = res.samples[:, crop[0], crop[1]]
        ax[row, 0].imshow(x, **gray)
        ax[row, 0].set_title("x (abdomen k16, 25 %)")
        for j in (1, 2):
            ax[row, j].imshow(samples[j - 1], **gray)
            ax[row, j].set_title(f"{label}: raw sample {j}")
        im = ax[row, 3].imshow(std_map(samples), cmap="magma", vmin=0, vmax=25)
        ax[row, 3].set_title(f"{label}: std map (HU), K=8")
        plt.colorbar(im, ax=ax[row, 3], fraction=0.046)
    for a in ax.ravel():
        a.axis("off")
    plt.tight_layout()
    plt.savefig(ROOT / "docs" / "images" / "spatial_vs_tiled_redcnn.png", dpi=70)


if __name__ == "__main__":
    main()
