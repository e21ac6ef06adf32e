"""Where the learned sampler's consistent diversity is lost: one held-out slice, several samplers.

    .venv/bin/python scripts/diversity_diagnostics.py --denoiser redcnn --slice 2 [--samples 4]
        [--temperature 1.5] [--device cuda] [--cvae RUN_FOLDER]
        [--out benchmarks/results/diversity_diagnostics_redcnn_k16.json]

Draws K samples of x (the first 25 % dose realisation of held-out slice ``--slice``, indices as for
measure_exact_invariances.py) from
- ``noise``: the training-free sampler f(x) + fresh noise (the reference);
- ``cinn``: the bundled learned sampler (v ~ N(0, I));
- ``prior``: the same cVAE decoder with z from its prior N(0, I), no cINN: what the decoder can vary;
- ``cinn-shaped``: the cinn samples with x~ - f(x) filtered by a radial gain that makes its radial
  power spectrum equal to that of x - f(x) on this very slice (an optimistic test of whether the
  decoder's texture, not its amount of variation, is what is missing);
- ``cinn-T``: the cINN with v ~ N(0, T^2 I) (realism is then lost: the power ratio is printed);
- ``noise-matched``: the noise sampler with its noise scaled so that the power of x~ - f(x) equals
  that of x - f(x), as the learned sampler's nearly does (fresh noise on top of f(x) has about twice
  that power, since f keeps part of x's own noise): the reference at equal realism;
then applies the default consistency step to each and prints, per sampler: the raw std-map median in
the body, the raw power ratio (power of x~ - f(x) over that of x - f(x)), the consistent std-map
median and its ratio to the noise sampler's, and the raw power ratio outside the body; and, per
radial band, the power of the samples' deviations from their mean (raw and consistent) relative to
the noise sampler's, and the power of the raw residual x~ - f(x) relative to that of x - f(x).
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
sys.path.insert(0, str(ROOT / "scripts"))
from measure_exact_invariances import median_power_ratio, radial_power  # noqa: E402

from CTInvariancesLib.datasets import make_pairs, source_pixel_mm  # noqa: E402
from CTInvariancesLib.denoisers import load_denoiser  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.invariance.consistency import consistency_project  # noqa: E402
from CTInvariancesLib.invariance.pipeline import diversity  # noqa: E402
from CTInvariancesLib.invariance.sampler import InvarianceSampler, NoiseSampler  # noqa: E402
from CTInvariancesLib.metrics import body_mask  # noqa: E402

BANDS = 12


def shape_residual(samples: np.ndarray, fx: np.ndarray, x: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Filter each x~ - f(x) by the radial gain sqrt(P_{x - f(x)} / P_{x~ - f(x)}) (band centres,
    linearly interpolated), so that the samples' residual has the radial spectrum of x's."""
    target = np.array(radial_power(x - fx, body, BANDS))
    have = np.mean([radial_power(s - fx, body, BANDS) for s in samples], 0)
    fy = np.fft.fftfreq(x.shape[0])[:, None]
    fxx = np.fft.fftfreq(x.shape[1])[None, :]
    band = np.sqrt(fy**2 + fxx**2) / 0.5 * BANDS
    gain = np.interp(band, np.arange(BANDS) + 0.5, np.sqrt(target / have))
    shaped = [fx + np.real(np.fft.ifft2(np.fft.fft2(s - fx) * gain)) for s in samples]
    return np.stack(shaped).astype(np.float32)


def deviation_power(samples: np.ndarray, body: np.ndarray) -> np.ndarray:
    """Radial power of the samples' deviations from their mean (unbiased for K samples)."""
    k = len(samples)
    mean = samples.mean(0)
    return np.mean([radial_power(s - mean, body, BANDS) for s in samples], 0) * k / (k - 1)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--denoiser", default="redcnn")
    ap.add_argument("--slice", type=int, default=2, help="held-out slice index (2 = abdomen k 16)")
    ap.add_argument("--samples", type=int, default=4)
    ap.add_argument("--temperature", type=float, default=1.5)
    ap.add_argument("--samplers", nargs="*",
                    default=["noise", "cinn", "prior", "cinn-shaped", "cinn-T", "noise-matched"],
                    help="which rows (noise is always measured: it is the reference)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cvae", help="engine folder or cVAE file (default: the bundled spatial engine)")
    ap.add_argument("--out")
    ap.add_argument("--png", help="a picture: per sampler one raw sample, its x~ - f(x) and the "
                    "consistent std map, on a 192 px crop at the body's centre")
    args = ap.parse_args()
    torch.manual_seed(0)
    pairs = make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
    i = args.slice
    x = pairs["ld"][2 * i]
    name = str(pairs["names"][2 * i]).split("#")[0]
    body = body_mask(pairs["fd"][2 * i])
    px = source_pixel_mm(name.split("[")[0])
    den = load_denoiser(args.denoiser, device=args.device)
    fx = den.denoise_slices(x[None])[0]
    wanted = set(args.samplers)
    # only what is asked for is loaded: a cVAE run folder may not have its cINNs yet
    learned = (InvarianceSampler.load(den, cvae=args.cvae, device=args.device)
               if wanted & {"cinn", "cinn-shaped", "cinn-T"} else None)
    prior = InvarianceSampler.load(den, cvae=args.cvae, use_cinn=False, device=args.device)

    def draw(sampler, temperature=1.0):
        return sampler.sample(x, args.samples, seed=0, denoised_hu=fx, slice_index=i, pixel_mm=px,
                              temperature=temperature).samples

    noise = NoiseSampler(den, device=args.device)
    raw = {"noise": draw(noise)}
    power_noise = median_power_ratio(raw["noise"], fx, x, body)
    if {"cinn", "cinn-shaped"} & wanted:
        raw["cinn"] = draw(learned)
    if "prior" in wanted:
        raw["prior"] = draw(prior)
    if "cinn-shaped" in wanted:
        raw["cinn-shaped"] = shape_residual(raw["cinn"], fx, x, body)
    if "cinn-T" in wanted:
        raw[f"cinn-T{args.temperature:g}"] = draw(learned, args.temperature)
    if "noise-matched" in wanted:
        raw[f"noise-T{power_noise ** -0.5:.2f}"] = draw(noise, power_noise**-0.5)
    rows, spectra, consistent, residual_spectra = {}, {}, {}, {}
    x_spectrum = np.array(radial_power(x - fx, body, BANDS))
    for kind, s in raw.items():
        t = time.perf_counter()
        cons = consistent[kind] = consistency_project(den, x, s, denoised_hu=fx).samples
        rows[kind] = {
            "raw_std_hu": diversity(s, body)["std_map_median_hu"],
            "raw_power_ratio": median_power_ratio(s, fx, x, body),
            "consistent_std_hu": diversity(cons, body)["std_map_median_hu"],
            # the same ratio in the air around the patient, which the body's bound does not see
            "raw_power_ratio_outside": median_power_ratio(s, fx, x, ~body),
            "seconds": time.perf_counter() - t,
        }
        spectra[kind] = (deviation_power(s, body), deviation_power(cons, body))
        # realism of texture: the raw residual's radial spectrum against x - f(x)'s
        residual_spectra[kind] = np.mean([radial_power(v - fx, body, BANDS) for v in s], 0) / x_spectrum
        print(kind, {k: round(v, 2) for k, v in rows[kind].items()}, flush=True)
    ref = rows["noise"]["consistent_std_hu"]
    print(f"\n{args.denoiser}, {name}, K = {args.samples}, default consistency step\n")
    print("| sampler | raw std (HU) | raw power ratio | outside the body | consistent std (HU) "
          "| consistent std / noise sampler's |")
    print("| --- | --- | --- | --- | --- | --- |")
    for kind, r in rows.items():
        print(f"| {kind} | {r['raw_std_hu']:.1f} | {r['raw_power_ratio']:.2f} "
              f"| {r['raw_power_ratio_outside']:.2f} | {r['consistent_std_hu']:.2f} "
              f"| {r['consistent_std_hu'] / ref:.2f} |")
    print("\ndeviation power per radial band (low -> Nyquist) relative to the noise sampler's, "
          "raw / consistent")
    for kind, (a, b) in spectra.items():
        if kind != "noise":
            print(f"{kind:12s} raw  {np.round(a / spectra['noise'][0], 2).tolist()}")
            print(f"{'':12s} cons {np.round(b / spectra['noise'][1], 2).tolist()}")
    print("\nraw residual x~ - f(x): power per radial band (low -> Nyquist) relative to x - f(x)'s")
    for kind, r in residual_spectra.items():
        print(f"{kind:12s} {np.round(r, 2).tolist()}")
    if args.out:
        Path(args.out).write_text(json.dumps({
            "residual_power_vs_x": {k: r.tolist() for k, r in residual_spectra.items()},
            "denoiser": args.denoiser, "slice": name, "samples": args.samples, "rows": rows,
            "deviation_power_vs_noise": {k: {"raw": (a / spectra["noise"][0]).tolist(),
                                             "consistent": (b / spectra["noise"][1]).tolist()}
                                         for k, (a, b) in spectra.items() if k != "noise"},
        }, indent=2) + "\n")
    if args.png:
        save_panel(Path(args.png), x, fx, body, raw, consistent, f"{args.denoiser}, {name}")
    return 0


def save_panel(path: Path, x, fx, body, raw: dict, consistent: dict, title: str) -> None:
    """Rows: x, then each sampler; columns: the image (W 400 / L 40), its residual from f(x)
    (+-60 HU), the consistent samples' std map (0 to the largest row's 99th percentile)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cy, cx = (int(np.median(a)) for a in np.nonzero(body))
    win = (slice(max(cy - 96, 0), cy + 96), slice(max(cx - 96, 0), cx + 96))
    stds = {k: c.std(0, ddof=1) for k, c in consistent.items()}
    top = max(float(np.percentile(v[body], 99)) for v in stds.values())
    rows = [("x", x, None)] + [(k, raw[k][0], stds[k]) for k in raw]
    fig, axes = plt.subplots(len(rows), 3, figsize=(7.5, 2.5 * len(rows)), squeeze=False)
    for ax_row, (kind, img, std) in zip(axes, rows):
        ax_row[0].imshow(img[win], cmap="gray", vmin=-160, vmax=240)
        ax_row[1].imshow((img - fx)[win], cmap="gray", vmin=-60, vmax=60)
        if std is not None:
            ax_row[2].imshow(std[win], cmap="magma", vmin=0, vmax=top)
        ax_row[0].set_ylabel(kind)
        for ax in ax_row:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0][0].set_title("image")
    axes[0][1].set_title("minus f(x), +-60 HU")
    axes[0][2].set_title(f"consistent std, 0-{top:.0f} HU")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
