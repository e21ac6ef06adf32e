"""Seams and fixed patterns in std maps of the tiled engines (README: "Seam-free std maps").

    .venv/bin/python benchmarks/seams.py [--size 256] [--samples 16] [--paper]
    .venv/bin/python benchmarks/seams.py --spatial cnn10 redcnn [--size 512] [--samples 16]

On the held-out abdomen slice k = 16 at 25 % dose (a central crop of --size pixels), for the
bundled compact engine (cnn10's cINN) and, with --paper, a paper-size engine with random weights:
seam ratio = mean std within 4 px of a tile edge / mean std elsewhere in the body (1 = no seams),
and whether the std map of the input shifted by (13, 21) px (drawn with another seed) is the shifted
std map (correlation with the shifted map, to compare with the correlation of two draws for the
same input) or a pattern fixed to the image grid (correlation with the unshifted map).
Fixed tiling (the previous sampler) and jittered tiling (the default) side by side.
``--spatial``: the bundled spatial engine (the default; no tiles, so no seam ratio), its real
weights, the shift test only; its noise-map condition is recomputed for the shifted input.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTInvariances"))

from CTInvariancesLib.datasets import make_pairs  # noqa: E402
from CTInvariancesLib.denoisers import load_denoiser  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.invariance.cinn import CINNConfig, ConditionalINN  # noqa: E402
from CTInvariancesLib.invariance.cvae import ConditionalVAE, CVAEConfig  # noqa: E402
from CTInvariancesLib.invariance.metrics import seam_ratio, shift_consistency  # noqa: E402
from CTInvariancesLib.invariance.sampler import InvarianceSampler  # noqa: E402
from CTInvariancesLib.metrics import body_mask  # noqa: E402

SHIFT = (13, 21)


def measure(sampler: InvarianceSampler, x: np.ndarray, k: int) -> dict:
    body = body_mask(x)
    a = sampler.sample(x, k, seed=0)
    a2 = sampler.sample(x, k, seed=1)  # same input, new draws: how alike two std maps can be
    b = sampler.sample(np.roll(x, SHIFT, axis=(0, 1)), k, seed=1)
    region = body & a.sampled_mask
    sa, sb = a.samples.std(0), b.samples.std(0)
    return {"seam_ratio": seam_ratio(sa, region, sampler.patch, sampler.overlap),
            **shift_consistency(sa, sb, SHIFT, region),
            "ceiling": shift_consistency(sa, a2.samples.std(0), (0, 0), region)["corr_with_fixed"],
            "std_median": float(np.median(sa[region]))}


def measure_spatial(sampler, x: np.ndarray, k: int) -> dict:
    body = body_mask(x)
    mm = (0.977, 0.977)
    a = sampler.sample(x, k, seed=0, pixel_mm=mm)
    a2 = sampler.sample(x, k, seed=1, pixel_mm=mm)
    b = sampler.sample(np.roll(x, SHIFT, axis=(0, 1)), k, seed=1, pixel_mm=mm)
    sa, sb = a.samples.std(0), b.samples.std(0)
    return {**shift_consistency(sa, sb, SHIFT, body),
            "ceiling": shift_consistency(sa, a2.samples.std(0), (0, 0), body)["corr_with_fixed"],
            "std_median": float(np.median(sa[body]))}


def paper_engine(seed: int = 0):
    torch.manual_seed(seed)
    vae, inn = ConditionalVAE(CVAEConfig.paper()), ConditionalINN(CINNConfig.paper())
    vae.train()
    inn.train()
    with torch.no_grad():  # data-dependent ActNorm initialisation on random input
        xx = torch.randn(4, 1, 128, 128)
        inn(vae.encode(xx, xx).sample(), xx)
        vae(xx, xx)
    return vae.eval(), inn.eval()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--paper", action="store_true")
    ap.add_argument("--paper-only", action="store_true", help="skip the compact engine")
    ap.add_argument("--spatial", nargs="*", metavar="DENOISER", help="the bundled spatial engine's cINNs")
    args = ap.parse_args()
    torch.set_num_threads(2)
    x = make_pairs("holdout", 0.25, realisations=1, seed=HOLDOUT_SEED)["ld"][2]
    c0 = (512 - args.size) // 2
    x = x[c0 : c0 + args.size, c0 : c0 + args.size]
    if args.spatial:
        print(f"bundled spatial engine, abdomen k=16, 25 % dose, central {args.size} px, K = {args.samples}, "
              f"shift {SHIFT}\n")
        print("| denoiser | corr. with shifted map | corr. with fixed map | corr. of two draws, same input "
              "| std median (HU) |")
        print("| --- | --- | --- | --- | --- |")
        for name in args.spatial:
            m = measure_spatial(InvarianceSampler.load(load_denoiser(name)), x, args.samples)
            print(f"| {name} | {m['corr_with_shifted']:.3f} | {m['corr_with_fixed']:.3f} | "
                  f"{m['ceiling']:.3f} | {m['std_median']:.2f} |", flush=True)
        return 0
    den = load_denoiser("cnn10")
    engines = {} if args.paper_only else {
        "compact (bundled, cnn10)": lambda jit: InvarianceSampler.load(den, jitter=jit)}
    if args.paper or args.paper_only:
        vae, inn = paper_engine()
        engines["paper size, random weights"] = lambda jit: InvarianceSampler(den, vae, inn, jitter=jit)
    print(f"abdomen k=16, 25 % dose, central {args.size} px crop, K = {args.samples}, shift {SHIFT}\n")
    print("| engine | tiling | seam ratio | corr. with shifted map | corr. with fixed map "
          "| corr. of two draws, same input | std median (HU) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, make in engines.items():
        for jit in (False, True):
            m = measure(make(jit), x, args.samples)
            print(f"| {name} | {'jittered' if jit else 'fixed'} | {m['seam_ratio']:.3f} | "
                  f"{m['corr_with_shifted']:.3f} | {m['corr_with_fixed']:.3f} | {m['ceiling']:.3f} | "
                  f"{m['std_median']:.2f} |",
                  flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
