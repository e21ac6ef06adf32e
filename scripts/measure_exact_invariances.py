"""Measure exact invariances on the held-out slices: fidelity (raw and after the consistency step)
against the fresh-noise reference, and what remains (diversity), per denoiser and sampler.

    .venv/bin/python scripts/measure_exact_invariances.py [--slices 2 9] [--samples 16]
        [--readme] [--cards]

For each held-out slice (abdomen k 14-19, head k 20-27; ``--slices`` picks indices into that list),
two independent 25 % dose realisations x1, x2 are simulated from the full-dose slice. Per denoiser f:
- fresh-noise ratio RMSE(f(x1), f(x2)) / RMSE(x1, x2) in the body (what f does to new noise);
- per sampler (noise, cinn): K samples of x = x1, raw and after the default consistency step;
  median over samples of RMSE(f(x~), f(x)) / RMSE(x~, x); std-map median and median pairwise RMSE
  in the body; the noise sampler's std relative to the noise std of x.
Results go to ``benchmarks/results/exact_invariances.json``; ``--readme`` replaces the table between
the markers in README.md, ``--cards`` stores each denoiser's rows in its bundled cINN card.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.datasets import make_pairs, source_pixel_mm  # noqa: E402
from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.invariance.consistency import (  # noqa: E402
    DEFAULT_METHOD,
    DEFAULT_STEPS,
    consistency_project,
)
from CTInvariancesLib.invariance.models import resolve_cvae_path  # noqa: E402
from CTInvariancesLib.invariance.pipeline import diversity, slice_check  # noqa: E402
from CTInvariancesLib.invariance.sampler import InvarianceSampler, NoiseSampler  # noqa: E402
from CTInvariancesLib.lowdose import estimate_noise_hu  # noqa: E402
from CTInvariancesLib.metrics import body_mask  # noqa: E402
from CTInvariancesLib.weights import set_card_metric  # noqa: E402


def _rmse(a, b, m) -> float:
    return float(np.sqrt(np.mean((a[m].astype(np.float64) - b[m]) ** 2)))


def median_power_ratio(samples, fx: np.ndarray, x: np.ndarray, mask: np.ndarray) -> float:
    """Realism in power: the median over samples of power(x~ - f(x)) / power(x - f(x)) in ``mask``."""
    power_x = float(np.mean((x - fx)[mask].astype(np.float64) ** 2))
    return float(np.median([np.mean((s - fx)[mask].astype(np.float64) ** 2) / power_x for s in samples]))


def radial_power(residual: np.ndarray, mask: np.ndarray, bands: int = 12) -> list[float]:
    """Radial noise power spectrum of ``residual`` inside ``mask`` (mean |FFT|^2 per pixel of the
    mask, in ``bands`` rings from 0 to the Nyquist frequency): the texture of the noise."""
    r = np.where(mask, residual - residual[mask].mean(), 0.0)
    p = np.abs(np.fft.fft2(r)) ** 2 / max(int(mask.sum()), 1)
    fy = np.fft.fftfreq(r.shape[0])[:, None]
    fx = np.fft.fftfreq(r.shape[1])[None, :]
    rad = np.sqrt(fy**2 + fx**2) / 0.5
    idx = np.minimum((rad * bands).astype(int), bands)
    return [float(p[idx == i].mean()) for i in range(bands)]


LISTS = ("raw_ratio", "ratio", "std", "std_raw", "pairwise", "power_raw", "nps_raw", "nps_x",
         "seconds_sampling", "seconds_consistency")


def measure(denoisers, samplers, slice_ids, n_samples, steps, seed=0, device="cpu", cvae=None, cinn=None,
            deadline_s=None, out=None, batch_size=None) -> dict:
    """Slice by slice (all denoisers per slice), so that a run stopped by ``deadline_s`` still covers
    every denoiser; the result so far is written to ``out`` after every slice."""
    t_start = time.perf_counter()
    pairs = make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
    names = [str(n) for n in pairs["names"]]
    models = {}
    per = {}
    for name in denoisers:
        den = load_denoiser(name, device=device)
        smp = {kind: NoiseSampler(den, device=device) if kind == "noise"
               else InvarianceSampler.load(den, cvae=cvae, cinn=cinn, device=device, use_cinn=kind == "cinn")
               for kind in samplers}
        models[name] = (den, smp)
        per[name] = {"fresh": [], "noise_std": [], "slices": [],
                     **{k: {key: [] for key in LISTS} for k in samplers}}
    engine = None
    done = []
    for i in slice_ids:
        if deadline_s is not None and time.perf_counter() - t_start > deadline_s:
            print(f"deadline reached: {len(done)} of {len(slice_ids)} slices measured", flush=True)
            break
        x1, x2 = pairs["ld"][2 * i], pairs["ld"][2 * i + 1]
        series = names[2 * i].split("[")[0]
        px = source_pixel_mm(series)
        body = body_mask(pairs["fd"][2 * i])
        for name, (den, smps) in models.items():
            f1, f2 = den.denoise_slices(np.stack([x1, x2]), batch_size=1)
            p = per[name]
            p["fresh"].append(_rmse(f1, f2, body) / _rmse(x1, x2, body))
            p["noise_std"].append(estimate_noise_hu(x1))
            p["slices"].append(names[2 * i].split("#")[0])
            for kind, smp in smps.items():
                engine = engine or (smp.cards or {}).get("cvae")
                t = time.perf_counter()
                res = smp.sample(x1, n_samples, seed=seed, denoised_hu=f1, slice_index=i, pixel_mm=px)
                t_s = time.perf_counter() - t
                t = time.perf_counter()
                cons = consistency_project(den, x1, res.samples, steps, DEFAULT_METHOD, denoised_hu=f1,
                                           batch_size=batch_size)
                t_c = time.perf_counter() - t
                m = body & res.sampled_mask
                raw_chk = slice_check(den, x1, f1, res.samples, m)
                chk = raw_chk if steps == 0 else slice_check(den, x1, f1, cons.samples, m)
                d = p[kind]
                d["raw_ratio"] += raw_chk["ratio"]
                d["ratio"] += chk["ratio"]
                div, div_raw = diversity(cons.samples, m), diversity(res.samples, m)
                d["std"].append(div["std_map_median_hu"])
                d["pairwise"].append(div["pairwise_rmse_median_hu"])
                d["std_raw"].append(div_raw["std_map_median_hu"])
                # realism: power of x~ - f(x) over that of x - f(x), and their radial spectra
                d["power_raw"].append(median_power_ratio(res.samples, f1, x1, m))
                d["nps_raw"].append(np.mean([radial_power(s - f1, m) for s in res.samples[:4]], 0).tolist())
                d["nps_x"].append(radial_power(x1 - f1, m))
                d["seconds_sampling"].append(t_s)
                d["seconds_consistency"].append(t_c)
                print(f"{name:8s} {kind:5s} {names[2 * i]:28s} fresh {p['fresh'][-1]:.3f} raw "
                      f"{np.median(raw_chk['ratio']):.3f} -> {np.median(chk['ratio']):.3f}  std "
                      f"{div_raw['std_map_median_hu']:.1f} -> {div['std_map_median_hu']:.1f} HU  power "
                      f"{d['power_raw'][-1]:.2f} ({t_s:.1f} + {t_c:.1f} s)", flush=True)
        done.append(i)
        result = summarise(per, samplers, n_samples, steps, device, engine)
        if out is not None:
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(result, indent=2) + "\n")
    return summarise(per, samplers, n_samples, steps, device, engine)


def summarise(per, samplers, n_samples, steps, device, engine) -> dict:
    rows = {}
    for name, p in per.items():
        if not p["fresh"]:
            continue
        fresh = float(np.median(p["fresh"]))
        row = {"slices": p["slices"], "fresh_noise_ratio": fresh,
               "noise_std_hu": float(np.median(p["noise_std"]))}
        for kind in samplers:
            d = p[kind]
            ratio = float(np.median(d["ratio"]))
            row[kind] = {
                "raw_ratio": float(np.median(d["raw_ratio"])),
                "consistent_ratio": ratio,
                "max_ratio": float(np.max(d["ratio"])),
                "meets_bounds": bool(ratio <= 0.1 and ratio <= 0.25 * fresh),
                "std_map_median_hu": float(np.median(d["std"])),
                "std_map_median_hu_raw": float(np.median(d["std_raw"])),
                "raw_std_over_noise_std": float(np.median(d["std_raw"]) / row["noise_std_hu"]),
                "power_ratio_raw": float(np.median(d["power_raw"])),
                "radial_nps_raw": np.mean(d["nps_raw"], 0).tolist(),
                "radial_nps_x": np.mean(d["nps_x"], 0).tolist(),
                "pairwise_rmse_median_hu": float(np.median(d["pairwise"])),
                "std_over_noise_std": float(np.median(d["std"]) / row["noise_std_hu"]),
                "seconds_per_slice": float(
                    np.median(d["seconds_sampling"]) + np.median(d["seconds_consistency"])
                ),
            }
        rows[name] = row
    return {
        "data": "held-out slices, 25 % dose, two realisations per slice",
        "samples": n_samples,
        "consistency": {"method": DEFAULT_METHOD, "steps": steps},
        "engine": None if engine is None else {k: engine.get(k) for k in ("file", "sha256", "size")},
        "machine": _machine(device),
        "denoisers": rows,
    }


def _machine(device: str = "cpu") -> str:
    from CTInvariancesLib.training.distributed import hardware_description

    return hardware_description(device)


def raw_table(result: dict) -> str:
    """The table of a raw-only run (``--steps 0``): diversity and realism of the raw samples."""
    lines = [
        f"K = {result['samples']} raw samples (no consistency step); slices: "
        + ", ".join(next(iter(result["denoisers"].values()))["slices"]) + f"; {result['machine']}.",
        "",
        "| denoiser | sampler | noise std of x (HU) | raw std-map median (HU) | raw std / noise std (>= 0.5) "
        "| raw power ratio ([0.7, 1.3]) | raw fidelity ratio | fresh-noise ratio | pairwise RMSE (HU) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result["denoisers"].items():
        for kind in ("noise", "cinn"):
            if kind in row:
                r = row[kind]
                lines.append(
                    f"| {name} | {kind} | {row['noise_std_hu']:.1f} | {r['std_map_median_hu_raw']:.1f} | "
                    f"{r['raw_std_over_noise_std']:.2f} | {r['power_ratio_raw']:.2f} | "
                    f"{r['raw_ratio']:.3f} | "
                    f"{row['fresh_noise_ratio']:.3f} | {r['pairwise_rmse_median_hu']:.1f} |"
                )
    return "\n".join(lines)


def table(result: dict) -> str:
    if result["consistency"]["steps"] == 0:
        return raw_table(result)
    lines = [
        f"K = {result['samples']}, consistency: {result['consistency']['method']}, "
        f"{result['consistency']['steps']} steps; slices: "
        + ", ".join(next(iter(result["denoisers"].values()))["slices"]) + f"; {result['machine']}.",
        "",
        "| denoiser | sampler | fresh-noise ratio | raw ratio | consistent ratio (median / max) | bounds met "
        "| std-map median (HU) raw -> consistent | raw std / noise std | raw power ratio "
        "| pairwise RMSE (HU) | std / noise std of x | s per slice |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name, row in result["denoisers"].items():
        for kind in ("noise", "cinn"):
            if kind not in row:
                continue
            r = row[kind]
            lines.append(
                f"| {name} | {kind} | {row['fresh_noise_ratio']:.3f} | {r['raw_ratio']:.3f} | "
                f"{r['consistent_ratio']:.3f} / {r['max_ratio']:.3f} | "
                f"{'yes' if r['meets_bounds'] else 'no'} | "
                f"{r['std_map_median_hu_raw']:.1f} -> {r['std_map_median_hu']:.1f} | "
                f"{r.get('raw_std_over_noise_std', float('nan')):.2f} | "
                f"{r.get('power_ratio_raw', float('nan')):.2f} | "
                f"{r['pairwise_rmse_median_hu']:.1f} | {r['std_over_noise_std']:.2f} | "
                f"{r['seconds_per_slice']:.0f} |"
            )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--denoisers", nargs="*", default=list(DENOISER_NAMES))
    ap.add_argument("--samplers", nargs="*", default=["noise", "cinn"])
    ap.add_argument("--slices", nargs="*", type=int, default=list(range(14)),
                    help="indices into the 14 held-out slices (0-5 abdomen k 14-19, 6-13 head k 20-27)")
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "exact_invariances.json"))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cvae", help="cVAE file or folder (default: the bundled engine)")
    ap.add_argument("--cinn", help="cINN file or folder (default: beside the cVAE)")
    ap.add_argument("--deadline", type=float, metavar="S", help="start no new slice after S seconds")
    ap.add_argument("--batch-size", type=int,
                    help="samples per consistency batch (default: the step's own, 2 on the CPU)")
    ap.add_argument("--markers", default="exact-invariances-table",
                    help="README markers <!-- NAME:begin/end --> that --readme writes between")
    ap.add_argument("--readme", action="store_true")
    ap.add_argument("--cards", action="store_true")
    ap.add_argument("--cards-dir",
                    help="folder of the cINN cards --cards writes to (default: that of the engine "
                         "measured, the bundled one where --cvae was not given)")
    ap.add_argument("--from-json", action="store_true",
                    help="do not measure: write the table and cards from an earlier run's --out file")
    args = ap.parse_args()
    out = Path(args.out)
    if args.from_json:
        result = json.loads(out.read_text())
    else:
        if args.device.startswith("cuda"):
            # fidelity is a small residual of f: full fp32 convolutions, not TF32
            torch.backends.cudnn.allow_tf32 = False
            torch.backends.cuda.matmul.allow_tf32 = False
        result = measure(args.denoisers, args.samplers, args.slices, args.samples, args.steps,
                         device=args.device, cvae=args.cvae, cinn=args.cinn, deadline_s=args.deadline,
                         out=out, batch_size=args.batch_size)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
    text = table(result)
    print(text)
    if args.readme:
        readme = ROOT / "README.md"
        s = readme.read_text()
        begin, end = f"<!-- {args.markers}:begin -->", f"<!-- {args.markers}:end -->"
        a, b = s.index(begin) + len(begin), s.index(end)
        readme.write_text(s[:a] + "\n" + text + "\n" + s[b:])
    if args.cards:
        for name, row in result["denoisers"].items():
            card = Path(args.cards_dir or resolve_cvae_path(args.cvae).parent) / f"cinn-{name}.json"
            if card.exists():
                raw_only = result["consistency"]["steps"] == 0
                key = "raw_samples_dose_0.25" if raw_only else "exact_invariances_dose_0.25"
                set_card_metric(card, key, dict(row, samples=result["samples"],
                                                consistency=result["consistency"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
