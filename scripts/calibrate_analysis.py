"""Calibrate method A's noise reference on simulated repeat scans (the training slices).

    .venv/bin/python scripts/calibrate_analysis.py [--slices N] [--out PATH]

For each training slice (abdomen and head, 25 % dose) two independent low-dose realisations x1, x2
are simulated from the full-dose slice. The reference of x1 (fresh noise realisations of x1 at its
measured noise level, ``analysis/reference.py``) predicts the local std of G_s * (x2 - x1); the
factor c_s is the median over slices of the measured std of G_s * (x2 - x1) / predicted std in the
body. It absorbs what the reference cannot know: the part of x1's noise that x2 shares (the
full-dose image's own noise) and the difference between the simulator's texture and the scanner's.
Then the family-wise error of method A's maximum statistic: with ``--tail N``, N + 1 realisations
of every training slice (x = the first, N samples = the others, all noise) give the maximum |Z| per
sample and scale; the factor m that scales Z down so that a fraction alpha = 0.05 of these null
samples is flagged is stored as ``max_statistic_factor``. Random field theory's tail assumes a
Gaussian field with exactly the predicted level; real noise has heavier local tails (near bone and
the body's edge), which this factor absorbs.
Writes ``CTInvariances/Resources/Analysis/calibration.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.analysis.reference import (  # noqa: E402
    CALIBRATION_FILE,
    DEFAULT_SCALES_MM,
    build_reference,
    smooth,
)
from CTInvariancesLib.datasets import make_pairs, source_pixel_mm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=float, nargs="*", default=list(DEFAULT_SCALES_MM))
    ap.add_argument("--slices", type=int, default=0, help="use every n-th training slice only (0: all)")
    ap.add_argument("--out", default=str(CALIBRATION_FILE))
    ap.add_argument(
        "--tail", type=int, default=3, help="null samples per slice for the tail factor (0: skip)"
    )
    args = ap.parse_args()
    scales = tuple(args.scales)
    unit = {"factor_by_scale_mm": {str(s): 1.0 for s in scales}}
    pairs = make_pairs("train", 0.25, 2, 0)
    names = [str(n) for n in pairs["names"]]
    idx = list(range(0, len(names), 2))
    if args.slices:
        idx = idx[:: max(1, len(idx) // args.slices)]
    per: dict[str, dict[float, list[float]]] = {}
    t0 = time.perf_counter()
    for i in idx:
        series = names[i].split("[")[0]
        px = source_pixel_mm(series)
        x1, x2 = pairs["ld"][i], pairs["ld"][i + 1]
        ref = build_reference(x1, px, scales, calibration=unit, seed=i)
        d = x2.astype(np.float64) - x1
        anatomy = series.split("-")[0]
        row = per.setdefault(anatomy, {s: [] for s in scales})
        for s in scales:
            z = smooth(d, s, px) / ref.level[s]
            row[s].append(float(np.std(z[ref.body])))
        print(f"{names[i]:28s} " + "  ".join(f"{s:g} mm {row[s][-1]:.3f}" for s in scales), flush=True)
    factors = {str(s): float(np.median([v for a in per.values() for v in a[s]])) for s in scales}
    result = {
        "factor_by_scale_mm": factors,
        "per_anatomy": {
            a: {
                str(s): {
                    "median": float(np.median(v)),
                    "min": float(np.min(v)),
                    "max": float(np.max(v)),
                    "slices": len(v),
                }
                for s, v in r.items()
            }
            for a, r in per.items()
        },
        "data": "training slices of the shared data (abdomen-siemens-20, head-ge-28), 25 % dose, "
        "two realisations each (make_pairs('train', 0.25, 2, 0))",
        "procedure": "scripts/calibrate_analysis.py",
        "seconds": round(time.perf_counter() - t0, 1),
    }
    if args.tail:
        result["max_statistic_factor"] = tail_factor(result, idx, names, args.tail, scales)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["factor_by_scale_mm"]), json.dumps(result["per_anatomy"], indent=1))
    return 0


def tail_factor(calibration: dict, idx, names, n_null: int, scales, alpha: float = 0.05) -> dict:
    """The factor m (Z / m) at which the fraction of null samples with p < alpha is alpha."""
    from scipy import ndimage

    from CTInvariancesLib.analysis.significance import expected_euler_characteristic
    from CTInvariancesLib.datasets import slice_realisations

    maxima = []  # per null sample: [(max |Z|, area, perimeter, roughness) per scale]
    for i in idx:
        series, k = names[i].split("[")[0], int(names[i].split("[")[1].split("]")[0])
        ld, _, px = slice_realisations(series, k, n_null + 1, seed=7)
        ref = build_reference(ld[0], px, scales, calibration=calibration, seed=k)
        area = float(ref.body.sum())
        per = float((ref.body & ~ndimage.binary_erosion(ref.body)).sum())
        for j in range(1, n_null + 1):
            d = ld[j].astype(np.float64) - ld[0]
            maxima.append(
                [
                    (
                        float(np.max(np.abs(smooth(d, s, px))[ref.body] / ref.level[s][ref.body])),
                        area,
                        per,
                        ref.roughness[s],
                    )
                    for s in scales
                ]
            )
        print(f"tail: {names[i]:28s} {len(maxima)} null samples", flush=True)

    def flagged(m: float) -> float:
        p = [
            min(len(scales) * expected_euler_characteristic(z / m, a, pe, r) for z, a, pe, r in row)
            for row in maxima
        ]
        return float(np.mean(np.array(p) < alpha))

    lo, hi = 0.8, 2.0
    for _ in range(30):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if flagged(mid) > alpha else (lo, mid)
    return {
        "factor": hi,
        "null_samples": len(maxima),
        "flagged_at_factor_1": flagged(1.0),
        "flagged_at_factor": flagged(hi),
        "alpha": alpha,
        "data": f"training slices, {n_null + 1} realisations each (slice_realisations seed 7)",
    }


if __name__ == "__main__":
    sys.exit(main())
