"""How far each bundled denoiser is from idempotent on held-out patches (the README's numbers).

    .venv/bin/python scripts/measure_idempotency.py [--patches 200] [--patch 64]

Median over body patches of the held-out slices (25 % dose) of RMSE(f(f(x)), f(x)) / RMSE(f(x), x),
f applied to the patch: a sample close to f(x) cannot have a smaller fidelity ratio than this.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTInvariances"))

from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser  # noqa: E402
from CTInvariancesLib.invariance.metrics import holdout_patches, idempotency  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--patches", type=int, default=200)
    ap.add_argument("--patch", type=int, default=64)
    args = ap.parse_args()
    for name in DENOISER_NAMES:
        den = load_denoiser(name)
        ps = holdout_patches(den, args.patch, args.patches, seed=7)
        print(f"{name:8s} {idempotency(den, ps)['median_ratio']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
