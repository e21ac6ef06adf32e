"""README figure: raw samples and std maps of the tiled and the spatial engine (redcnn, held-out
abdomen slice 16, central 256 px, K = 8). Writes docs/images/spatial_vs_tiled_redcnn.png.

    .venv/bin/python scripts/figure_spatial_vs_tiled.py
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'CTInvariances'))
import matplotlib; matplotlib.use("Agg"); import matplotlib.pyplot as plt
from CTInvariancesLib.invariance.sampler import InvarianceSampler, std_map
from CTInvariancesLib.datasets import make_pairs
from CTInvariancesLib.evaluation import HOLDOUT_SEED
p = make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
x = p["ld"][4][128:384, 128:384].copy()
fig, ax = plt.subplots(2, 4, figsize=(16, 8))
for row, (cv, label) in enumerate(((None, "tiled engine"), ("spatial", "spatial engine"))):
    s = InvarianceSampler.load("redcnn", cvae=cv)
    r = s.sample(x, 8, seed=0)
    w = dict(cmap="gray", vmin=-160, vmax=240)
    ax[row,0].imshow(x, **w); ax[row,0].set_title("x (abdomen k16, 25 %)")
    ax[row,1].imshow(r.samples[0], **w); ax[row,1].set_title(f"{label}: raw sample 1")
    ax[row,2].imshow(r.samples[1], **w); ax[row,2].set_title(f"{label}: raw sample 2")
    im = ax[row,3].imshow(std_map(r.samples), cmap="magma", vmin=0, vmax=25); ax[row,3].set_title(f"{label}: std map (HU), K=8")
    plt.colorbar(im, ax=ax[row,3], fraction=0.046)
for a in ax.ravel(): a.axis("off")
plt.tight_layout(); plt.savefig(ROOT / "docs/images/spatial_vs_tiled_redcnn.png", dpi=70)
