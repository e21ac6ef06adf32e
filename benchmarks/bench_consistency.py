"""Compare consistency-step methods, and time the default on whole slices.

    .venv/bin/python benchmarks/bench_consistency.py methods [--denoiser cnn10] [--crop 256] [--samples 4]
    .venv/bin/python benchmarks/bench_consistency.py speed [--denoisers cnn10 ...] [--samplers noise cinn]
        [--device cuda] [--cvae ENGINE]
    .venv/bin/python benchmarks/bench_consistency.py raw [--samples 32] [--sizes 512 1024] [--cvae ENGINE]

``methods``: noise-sampler samples of the held-out abdomen slice k = 16 (25 % dose, a central crop),
made consistent by each method with the same number of Jacobian products; prints the fidelity ratio
RMSE(f(x~'), f(x)) / RMSE(x~', x), the std of the samples and the time. Adam (per-pixel step sizes:
its correction leaves the range of J^T) is included for comparison only.
``speed``: K = 16 samples of the whole 512 x 512 slice with the default consistency step, each in a
fresh process: wall time of sampling + consistency and the peak resident memory (``--device cuda``:
the warm second run, and peak GPU memory).
``raw``: K = 32 raw samples of the learned engine (cnn10) for whole slices of 512 and 1024 pixels:
time and peak memory.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.datasets import make_pairs  # noqa: E402
from CTInvariancesLib.denoisers import load_denoiser  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.invariance.consistency import consistency_project  # noqa: E402
from CTInvariancesLib.invariance.pipeline import diversity, slice_check  # noqa: E402
from CTInvariancesLib.invariance.sampler import InvarianceSampler, NoiseSampler  # noqa: E402
from CTInvariancesLib.metrics import body_mask  # noqa: E402

PIXEL_MM = (0.977, 0.977)


def _slice() -> np.ndarray:
    return make_pairs("holdout", 0.25, realisations=1, seed=HOLDOUT_SEED)["ld"][2]


def _adam(den, x, raw, fx, steps, lr=2.0):
    s = torch.from_numpy(raw.copy())[:, None].requires_grad_(True)
    t = torch.from_numpy(fx)[None, None]
    m = torch.from_numpy(body_mask(x).astype(np.float32))[None, None]
    opt = torch.optim.Adam([s], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = 0.5 * ((m * (den(s) - t)) ** 2).sum()
        loss.backward()
        opt.step()
    return s.detach()[:, 0].numpy()


def methods(args) -> None:
    x = _slice()
    c0 = (512 - args.crop) // 2
    x = x[c0 : c0 + args.crop, c0 : c0 + args.crop]
    den = load_denoiser(args.denoiser)
    fx = den.denoise_slices(x[None])[0]
    raw = NoiseSampler(den).sample(x, args.samples, seed=0, pixel_mm=PIXEL_MM, denoised_hu=fx).samples
    body = body_mask(x)

    def report(label, s, secs, steps=None):
        fs = den.denoise_slices(s)
        moved = [np.sqrt(np.mean((a - x)[body] ** 2)) for a in s]
        kept = [np.sqrt(np.mean((b - fx)[body] ** 2)) for b in fs]
        print(f"| {label} | {np.median(np.array(kept) / np.array(moved)):.3f} | {np.median(kept):.2f} | "
              f"{np.median(moved):.1f} | {np.median(s.std(0)[body]):.2f} | "
              f"{'-' if steps is None else steps[0]} | {secs:.1f} |", flush=True)

    print(f"{args.denoiser}, abdomen k=16, 25 % dose, central {args.crop} px, K = {args.samples}, "
          "noise sampler\n")
    print("| method | ratio | RMSE f(x~') - f(x) HU | RMSE x~' - x HU | std of samples HU | iterations | s |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    report("raw samples", raw, 0.0)
    runs = [
        ("gradient descent, 20 steps, step 1, no momentum", dict(method="gd", steps=20, step_size=1.0,
                                                                momentum=0.0, tolerance=0.0)),
        ("gradient descent, 20 steps, step 1.8, momentum 0.3", dict(method="gd", steps=20, tolerance=0.0)),
        ("as above, up to 80 steps, stop at ratio 0.07", dict(method="gd")),
        ("nonlinear CG from the start, stop at ratio 0.07", dict(method="ncg", warmup=0)),
        ("default: 6 gradient steps, then nonlinear CG, stop at ratio 0.07", {}),
        ("12 gradient steps, then nonlinear CG, stop at ratio 0.07", dict(method="ncg", warmup=12)),
        ("Gauss-Newton CG, 10 iterations (20 products), relinearised every 4", dict(method="cg", steps=10,
                                                                                    tolerance=0.0)),
        ("Gauss-Newton CG, 10 iterations, relinearised every 10", dict(method="cg", steps=10, restart=10,
                                                                       tolerance=0.0)),
    ]
    for label, kw in runs:
        t = time.perf_counter()
        res = consistency_project(den, x, raw, denoised_hu=fx, batch_size=args.samples, **kw)
        report(label, res.samples, time.perf_counter() - t, res.steps_used)
    t = time.perf_counter()
    report("Adam, 20 steps, lr 2 HU (not in the range of J^T)", _adam(den, x, raw, fx, 20),
           time.perf_counter() - t, [20])


def _one(denoiser: str, sampler: str, device: str = "cpu", method: str = "", cvae: str | None = None) -> dict:
    """One (denoiser, sampler) run; on a GPU the run is repeated and the second (warm) one timed."""
    x = _slice()
    cuda = device.startswith("cuda")
    den = load_denoiser(denoiser, device=device)
    smp = NoiseSampler(den, device=device) if sampler == "noise" else InvarianceSampler.load(
        den, cvae=cvae, device=device)
    for _ in range(2 if cuda else 1):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        fx = den.denoise_slices(x[None])[0]
        raw = smp.sample(x, 16, seed=0, pixel_mm=PIXEL_MM, denoised_hu=fx).samples
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
        res = consistency_project(den, x, raw, denoised_hu=fx, batch_size=16 if cuda else None,
                                  **({"method": method} if method else {}))
        if cuda:
            torch.cuda.synchronize()
        t2 = time.perf_counter()
    body = body_mask(x)
    ratios = slice_check(den, x, fx, res.samples, body)["ratio"]
    return {"sampling_s": t1 - t0, "consistency_s": t2 - t1, "steps": res.steps_used,
            "ratio_median": float(np.median(ratios)),
            "std_median_hu": diversity(res.samples, body)["std_map_median_hu"],
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def _in_fresh_process(argv: list[str], cvae: str | None, row: str) -> tuple[dict | None, str]:
    """Run this script's ``argv`` in a new process (so peak memory is that run's); its JSON result
    and the peak GPU memory as text, or None after printing the failure as a table row."""
    out = subprocess.run([sys.executable, __file__, *argv] + ([cvae] if cvae else []), capture_output=True,
                         text=True)
    if out.returncode != 0:
        print(f"{row}| failed: {out.stderr.strip().splitlines()[-1:]} |", flush=True)
        return None, ""
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return r, "-" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:.0f}"


def speed(args) -> None:
    from CTInvariancesLib.training.distributed import hardware_description

    print(f"K = 16, whole 512 x 512 slice (abdomen k=16, 25 % dose), consistency step "
          f"{args.method or 'default'} "
          f"(batches of {16 if args.device.startswith('cuda') else 'the CPU default'}); "
          f"{hardware_description(args.device)}"
          f"{'; warm (second) run timed' if args.device.startswith('cuda') else ''}\n")
    print("| denoiser | sampler | sampling s | consistency s | total s | steps per batch "
          "| ratio | std HU | peak RSS MB | peak GPU MB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.denoisers:
        for sampler in args.samplers:
            r, gpu = _in_fresh_process(["_one", name, sampler, args.device, args.method], args.cvae,
                                       f"| {name} | {sampler} ")
            if r is None:
                continue
            print(f"| {name} | {sampler} | {r['sampling_s']:.2f} | {r['consistency_s']:.2f} | "
                  f"{r['sampling_s'] + r['consistency_s']:.2f} | {r['steps']} | "
                  f"{r['ratio_median']:.3f} | {r['std_median_hu']:.2f} | "
                  f"{r['peak_rss_mb']:.0f} | {gpu} |",
                  flush=True)


def _raw_one(size: int, samples: int, device: str, cvae: str | None) -> dict:
    """K raw cINN samples of a size x size slice (the abdomen slice, tiled with reflection if larger)."""
    x = _slice()
    if size != x.shape[0]:
        reps = -(-size // x.shape[0])
        x = np.tile(x, (reps, reps))[:size, :size].copy()
    cuda = device.startswith("cuda")
    den = load_denoiser("cnn10", device=device)
    smp = InvarianceSampler.load(den, cvae=cvae, device=device)
    fx = den.denoise_slices(x[None])[0]
    for _ in range(2 if cuda else 1):
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        smp.sample(x, samples, seed=0, pixel_mm=PIXEL_MM, denoised_hu=fx)
        if cuda:
            torch.cuda.synchronize()
        t1 = time.perf_counter()
    return {"seconds": t1 - t0, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None}


def raw(args) -> None:
    """Raw sampling (no consistency step) with the learned engine, cnn10's cINN: K samples of whole
    slices of several sizes, each in a fresh process (so peak memory is this run's)."""
    from CTInvariancesLib.training.distributed import hardware_description

    print(f"K = {args.samples} raw cINN samples (cnn10), whole slice; {hardware_description(args.device)}\n")
    print("| slice | seconds | peak RSS MB | peak GPU MB |")
    print("| --- | --- | --- | --- |")
    for size in args.sizes:
        r, gpu = _in_fresh_process(["_raw", str(size), str(args.samples), args.device], args.cvae,
                                   f"| {size} ")
        if r is None:
            continue
        print(f"| {size} x {size} | {r['seconds']:.1f} | {r['peak_rss_mb']:.0f} | {gpu} |", flush=True)


def main() -> int:
    if len(sys.argv) >= 4 and sys.argv[1] == "_one":
        torch.set_num_threads(2)
        print(json.dumps(_one(*sys.argv[2:])))
        return 0
    if len(sys.argv) >= 5 and sys.argv[1] == "_raw":
        torch.set_num_threads(2)
        a = sys.argv[2:]
        print(json.dumps(_raw_one(int(a[0]), int(a[1]), a[2], a[3] if len(a) > 3 else None)))
        return 0
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="what", required=True)
    m = sub.add_parser("methods")
    m.add_argument("--denoiser", default="cnn10")
    m.add_argument("--crop", type=int, default=256)
    m.add_argument("--samples", type=int, default=4)
    s = sub.add_parser("speed")
    s.add_argument("--denoisers", nargs="*", default=["cnn10", "wganvgg", "redcnn", "dugan"])
    s.add_argument("--samplers", nargs="*", default=["noise", "cinn"])
    s.add_argument("--device", default="cpu")
    s.add_argument("--method", default="", help="consistency method (default: the library's)")
    s.add_argument("--cvae", help="engine folder or cVAE file for the cinn sampler (default: bundled)")
    r = sub.add_parser("raw")
    r.add_argument("--samples", type=int, default=32)
    r.add_argument("--sizes", nargs="*", type=int, default=[512, 1024])
    r.add_argument("--device", default="cpu")
    r.add_argument("--cvae", help="engine folder or cVAE file (default: bundled)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    {"methods": methods, "speed": speed, "raw": raw}[args.what](args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
