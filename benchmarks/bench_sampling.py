"""Sampling speed and memory (issue 3, section 4): K = 32 invariance samples of a full 512x512 slice
with the bundled compact models, and samples per second of the paper-size decoder and cINN.

    .venv/bin/python benchmarks/bench_sampling.py [--device cpu|cuda] [--samples 32] [--repeat 2]

Each configuration runs in a fresh subprocess so that its peak memory (max RSS; on CUDA also
torch's peak allocated memory) is its own. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))


def _slice():
    from pydicom.data import get_testdata_file

    from CTInvariancesLib.io import read_volume
    from CTInvariancesLib.lowdose import LowDoseSettings, LowDoseSimulator

    vol = read_volume(get_testdata_file("explicit_VR-UN.dcm"))
    low, _ = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25)).simulate(
        vol.array[0], (vol.spacing[1], vol.spacing[0]), 0
    )
    return low


def run_compact(device: str, denoiser: str, k: int, repeat: int, check: bool) -> dict:
    import torch

    from CTInvariancesLib.invariance.pipeline import slice_check
    from CTInvariancesLib.invariance.sampler import InvarianceSampler
    from CTInvariancesLib.metrics import body_mask

    x = _slice()
    sampler = InvarianceSampler.load(denoiser, device=device)
    sampler.sample(x[:128, :128], 2, seed=0)  # warm-up
    times = []
    for r in range(repeat):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        res = sampler.sample(x, k, seed=r, batch_size=64 if device == "cpu" else 512)
        if check:
            slice_check(sampler, x, res.denoised, res.samples, body_mask(x) & res.sampled_mask)
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    active = int(res.sampled_mask.mean() * 100)
    return {"seconds": min(times), "tiles_sampled_pct": active}


def run_paper(device: str, part: str, batch: int, repeat: int) -> dict:
    import torch

    from CTInvariancesLib.invariance.cinn import CINNConfig, ConditionalINN
    from CTInvariancesLib.invariance.cvae import ConditionalVAE, CVAEConfig

    torch.manual_seed(0)
    fx = torch.randn(batch, 1, 128, 128, device=device)
    v = torch.randn(batch, 256, device=device)
    if part == "decoder":
        model = ConditionalVAE(CVAEConfig.paper()).to(device).eval()

        def step():
            return model.decode(v, fx)
    else:
        model = ConditionalINN(CINNConfig.paper()).to(device).eval()

        def step():
            return model.reverse(v, fx)

    with torch.inference_mode():
        step()
        times = []
        for _ in range(repeat):
            if device == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            step()
            if device == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
    return {"seconds": min(times), "samples_per_s": batch / min(times)}


def child(spec: dict) -> None:
    import torch

    if spec["device"] == "cuda":
        torch.cuda.reset_peak_memory_stats()
    if spec["kind"] == "compact":
        out = run_compact(spec["device"], spec["denoiser"], spec["k"], spec["repeat"], spec["check"])
    else:
        out = run_paper(spec["device"], spec["part"], spec["batch"], spec["repeat"])
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if spec["device"] == "cuda":
        out["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--denoisers", nargs="*", default=["cnn10", "redcnn"])
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return 0
    import torch

    specs = []
    for d in args.denoisers:
        for check in (False, True):
            specs.append(
                {
                    "kind": "compact",
                    "device": args.device,
                    "denoiser": d,
                    "k": args.samples,
                    "repeat": args.repeat,
                    "check": check,
                }
            )
    for part in ("decoder", "cinn"):
        specs.append(
            {
                "kind": "paper",
                "device": args.device,
                "part": part,
                "batch": 4 if args.device == "cpu" else 64,
                "repeat": args.repeat,
            }
        )
    print(f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    print("| what | seconds | rate | peak RSS MB | peak GPU MB |")
    print("| --- | --- | --- | --- | --- |")
    for spec in specs:
        res = subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True
        )
        line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT ")]
        if not line:
            print(f"| {spec} | failed: {res.stderr.strip().splitlines()[-1] if res.stderr else '?'} | | | |")
            continue
        r = json.loads(line[0][7:])
        gpu = f"{r['peak_cuda_mb']:.0f}" if "peak_cuda_mb" in r else "-"
        if spec["kind"] == "compact":
            what = (
                f"compact, {spec['denoiser']}, K={spec['k']}, 512x512 slice"
                + (" + f(x~) check" if spec["check"] else "")
                + f" ({r['tiles_sampled_pct']} % of the slice in sampled tiles)"
            )
            rate = f"{spec['k'] / r['seconds']:.2f} samples/s"
        else:
            what = f"paper-size {spec['part']}, batch {spec['batch']}, 128x128"
            rate = f"{r['samples_per_s']:.2f} samples/s"
        print(f"| {what} | {r['seconds']:.2f} | {rate} | {r['peak_rss_mb']:.0f} | {gpu} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
