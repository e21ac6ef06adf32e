"""Validate methods A and B on simulated truth; writes the tables of docs/analysis.md.

    .venv/bin/python scripts/validate_analysis.py [--realisations 16] [--trials 20] [--out JSON]

Null: held-out slices (abdomen k 14-19, head k 20-27), 25 % dose, R independent realisations per
slice; x = realisation 0, the samples = realisations 1..R-1 (R = 16: 210 samples). Method A's
flagged fraction at alpha = 0.05, method B's findings per sample.
Power (method A): a smooth-edged disc (contrast 10, 20, 40 HU; diameter 3, 5, 10 mm) planted into
one realisation, in liver (held-out abdomen slices), fat (same) and lung (training abdomen slices
0-3: the held-out ones hold no lung); detected = p < alpha and the flagged region holds the disc
centre.
Method B: a 6 mm soft-tissue nodule (40 HU) planted into lung in the sample (appeared) or in x
(removed, so it disappeared from the sample): centroid and area error of the matching finding.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.analysis import build_reference, noise_referenced_test, structure_alterations  # noqa: E402
from CTInvariancesLib.analysis.probes import disc_profile  # noqa: E402
from CTInvariancesLib.datasets import slice_realisations  # noqa: E402
from CTInvariancesLib.metrics import body_mask  # noqa: E402

HOLDOUT = [("abdomen-siemens-20", k) for k in range(14, 20)] + [("head-ge-28", k) for k in range(20, 28)]
LUNG = [("abdomen-siemens-20", k) for k in range(0, 4)]
BACKGROUNDS = {"liver": (30.0, 90.0), "fat": (-150.0, -60.0), "lung": (-1000.0, -700.0)}
CONTRASTS = (10.0, 20.0, 40.0)
DIAMETERS = (3.0, 5.0, 10.0)
SEED = 20260


def positions(fd, px, lo, hi, radius_mm, rng, n):
    """n random centres (row, col mm) where the smoothed full-dose slice is within [lo, hi] over a
    disc of radius_mm (+ 2 mm) and inside the body."""
    s = ndimage.gaussian_filter(fd, 2.0)
    ok = (s > lo) & (s < hi) & ndimage.binary_erosion(body_mask(fd), iterations=10)
    r = int(np.ceil((radius_mm + 2.0) / min(px)))
    ok = ndimage.binary_erosion(ok, structure=np.ones((2 * r + 1, 2 * r + 1)))
    idx = np.argwhere(ok)
    if len(idx) == 0:
        return []
    pick = idx[rng.choice(len(idx), size=min(n, len(idx)), replace=False)]
    return [(float(a * px[0]), float(b * px[1])) for a, b in pick]


def null_study(R, seed):
    flagged, findings_per_sample, rows = [], [], []
    for series, k in HOLDOUT:
        ld, fd, px = slice_realisations(series, k, R, seed=seed)
        t = time.perf_counter()
        ref = build_reference(ld[0], px, seed=k)
        res = noise_referenced_test(ld[0], ld[1:], px, reference=ref)
        b = structure_alterations(ld[0], ld[1:], px, reference=ref)
        flagged += list(res.altered)
        findings_per_sample += list(b.counts())
        rows.append(
            {
                "slice": f"{series}[{k}]",
                "flagged": int(res.altered.sum()),
                "samples": R - 1,
                "min_p": float(res.p_values.min()),
                "findings": int(b.counts().sum()),
                "seconds": round(time.perf_counter() - t, 1),
            }
        )
        print(rows[-1], flush=True)
    return {
        "samples": len(flagged),
        "fraction_flagged": float(np.mean(flagged)),
        "findings_per_sample": float(np.mean(findings_per_sample)),
        "per_slice": rows,
    }


def power_study(R, trials, seed):
    rng = np.random.default_rng(seed)
    cells = {}
    for bg, (lo, hi) in BACKGROUNDS.items():
        slices = LUNG if bg == "lung" else HOLDOUT[:6]
        for series, k in slices:
            n_real = R if bg != "lung" else 6
            ld, fd, px = slice_realisations(series, k, n_real, seed=seed if bg != "lung" else SEED)
            ref = build_reference(ld[0], px, seed=k)
            per_slice = int(np.ceil(trials / len(slices)))
            for d in DIAMETERS:
                cents = positions(fd, px, lo, hi, d / 2, rng, per_slice)
                for c in CONTRASTS:
                    cell = cells.setdefault((bg, d, c), [])
                    for t, cen in enumerate(cents):
                        j = 1 + t % (n_real - 1)
                        prof = disc_profile(fd.shape, px, cen, d)
                        sample = ld[j] + c * prof
                        res = noise_referenced_test(
                            ld[0], np.stack([sample, ld[1 + (t + 1) % (n_real - 1)]]), px, reference=ref
                        )
                        r0, c0 = int(round(cen[0] / px[0])), int(round(cen[1] / px[1]))
                        cell.append(bool(res.altered[0] and res.maps[0][r0, c0]))
        print(
            bg,
            {
                f"{d:g}mm/{c:g}HU": f"{np.mean(cells[(bg, d, c)]):.2f} (n={len(cells[(bg, d, c)])})"
                for d in DIAMETERS
                for c in CONTRASTS
                if (bg, d, c) in cells
            },
            flush=True,
        )
    return {
        f"{bg}|{d:g}|{c:g}": {"power": float(np.mean(v)), "trials": len(v)} for (bg, d, c), v in cells.items()
    }


def nodule_study(seed):
    rows = []
    rng = np.random.default_rng(seed + 1)
    for series, k in LUNG:
        ld, fd, px = slice_realisations(series, k, 6, seed=SEED)
        ref = build_reference(ld[0], px, seed=k)
        for cen in positions(fd, px, -1000.0, -700.0, 3.0, rng, 2):
            prof = disc_profile(fd.shape, px, cen, 6.0)
            smooth_fd = ndimage.gaussian_filter(fd, 1.0)
            nodule = prof * (40.0 - smooth_fd)  # the nodule replaces lung: 40 HU inside
            true_area = float(prof.sum() * px[0] * px[1])
            for kind, x, sample in (
                ("appeared", ld[0], ld[1] + nodule),
                ("disappeared", ld[0] + nodule, ld[1]),
            ):
                res = structure_alterations(x, sample[None], px, reference=ref)
                best = None
                for f in res.findings:
                    err = float(np.hypot(f.centroid_mm[0] - cen[0], f.centroid_mm[1] - cen[1]))
                    if best is None or err < best[0]:
                        best = (err, f)
                row = {
                    "slice": f"{series}[{k}]",
                    "planted": kind,
                    "true_area_mm2": round(true_area, 1),
                    "findings": len(res.findings),
                }
                if best:
                    row.update(
                        {
                            "kind": best[1].kind,
                            "centroid_error_mm": round(best[0], 2),
                            "area_mm2": round(best[1].area_mm2, 1),
                            "area_error": round(abs(best[1].area_mm2 - true_area) / true_area, 3),
                        }
                    )
                rows.append(row)
                print(row, flush=True)
    return rows


def markdown(out: dict) -> str:
    """The tables of docs/analysis.md."""
    lines = []
    if "null" in out:
        n = out["null"]
        lines += [
            f"Null: {n['samples']} noise-only samples (held-out slices, 25 % dose): fraction flagged by "
            f"method A at alpha 0.05 = **{n['fraction_flagged']:.3f}**; method B findings per sample = "
            f"**{n['findings_per_sample']:.3f}**.",
            "",
            "| slice | samples | flagged (A) | smallest p | findings (B) |",
            "| --- | --- | --- | --- | --- |",
        ]
        lines += [
            f"| {r['slice']} | {r['samples']} | {r['flagged']} | {r['min_p']:.3g} | {r['findings']} |"
            for r in n["per_slice"]
        ]
        lines.append("")
    if "power" in out:
        lines += [
            "Power of method A (detected: p < 0.05 and the flagged region holds the disc centre):",
            "",
            "| background | diameter | 10 HU | 20 HU | 40 HU |",
            "| --- | --- | --- | --- | --- |",
        ]
        for bg in BACKGROUNDS:
            for d in DIAMETERS:
                cells = [out["power"].get(f"{bg}|{d:g}|{c:g}") for c in CONTRASTS]
                if any(cells):
                    lines.append(
                        f"| {bg} | {d:g} mm | "
                        + " | ".join(f"{c['power']:.2f} ({c['trials']})" if c else "-" for c in cells)
                        + " |"
                    )
        lines.append("")
    if "nodule" in out:
        rows = out["nodule"]
        found = [r for r in rows if "centroid_error_mm" in r and r.get("kind") == r["planted"]]
        worst_c = max((r["centroid_error_mm"] for r in found), default=float("nan"))
        worst_a = max((r["area_error"] for r in found), default=float("nan"))
        lines += [
            f"Method B, 6 mm soft-tissue nodule planted into lung ({len(rows)} cases): found with the right "
            f"kind in {len(found)}; centroid error max {worst_c:.2f} mm; area error max {worst_a:.3f}.",
            "",
        ]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--realisations", type=int, default=16)
    ap.add_argument("--trials", type=int, default=24)
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "analysis_validation.json"))
    ap.add_argument("--parts", nargs="*", default=["null", "power", "nodule"])
    args = ap.parse_args()
    out = {"alpha": 0.05, "dose_fraction": 0.25, "realisations": args.realisations}
    t0 = time.perf_counter()
    if "nodule" in args.parts:
        out["nodule"] = nodule_study(args.seed)
    if "null" in args.parts:
        out["null"] = null_study(args.realisations, args.seed)
    if "power" in args.parts:
        out["power"] = power_study(args.realisations, args.trials, args.seed)
    out["seconds"] = round(time.perf_counter() - t0, 1)
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.out).with_suffix(".md").write_text(markdown(out))
    print(markdown(out))
    print(json.dumps({k: v for k, v in out.items() if k != "power"}, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
