"""`make demo`: simulate a 25 % dose scan of the bundled sample slice, denoise it with the four
bundled denoisers, write the images to runs/demo/ and print a quality table.

The sample is a real abdominal CT slice (TCIA Pancreas-CT, CC BY 3.0, Roth et al.) that ships with
the PyPI package pydicom-data as ``explicit_VR-UN.dcm``; no model was trained on it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser  # noqa: E402
from CTInvariancesLib.errors import CTInvariancesError  # noqa: E402
from CTInvariancesLib.io import read_volume, write_volume  # noqa: E402
from CTInvariancesLib.lowdose import LowDoseSettings, LowDoseSimulator  # noqa: E402
from CTInvariancesLib.metrics import SOFT_TISSUE, body_mask, psnr, rmse_hu, ssim  # noqa: E402

DOSE = 0.25
SEED = 0


def sample_path() -> Path:
    from pydicom.data import get_testdata_file

    path = get_testdata_file("explicit_VR-UN.dcm")
    if path is None:
        raise CTInvariancesError("the demo sample needs the pydicom-data package (pip install pydicom-data)")
    return Path(path)


def main() -> int:
    out_dir = ROOT / "runs" / "demo"
    src = sample_path()
    vol = read_volume(src)
    full = vol.array[0]
    pixel_mm = (vol.spacing[1], vol.spacing[0])
    t0 = time.perf_counter()
    low, i0 = LowDoseSimulator(LowDoseSettings(dose_fraction=DOSE)).simulate(full, pixel_mm, SEED)
    t_sim = time.perf_counter() - t0
    write_volume(vol, out_dir / "full_dose.nrrd")
    write_volume(vol.with_array(low), out_dir / "low_dose_25.nrrd")
    print(
        f"sample: {src.name} (TCIA Pancreas-CT slice, {vol.shape[1]}x{vol.shape[2]}, "
        f"{vol.spacing[0]:.3f} mm pixels)"
    )
    print(
        f"simulated {DOSE:.0%} dose (seed {SEED}, I0 {i0:.3g} estimated from the image noise) "
        f"in {t_sim:.1f} s"
    )
    body = body_mask(full)
    print(f"\nreference: the full-dose slice; window {SOFT_TISSUE}; inside the patient body")

    def row(label: str, img, seconds: str = "") -> None:
        p, s = psnr(img, full, SOFT_TISSUE, body), ssim(img, full, SOFT_TISSUE, body)
        print(f"{label:<12} {p:8.2f} {s:7.3f} {rmse_hu(img[body], full[body]):8.2f} {seconds:>7}")

    print(f"{'image':<12} {'PSNR dB':>8} {'SSIM':>7} {'RMSE HU':>8} {'time s':>7}")
    row("low dose", low)
    for name in DENOISER_NAMES:
        den = load_denoiser(name)
        t0 = time.perf_counter()
        out = den.denoise_slices(low[None])[0]
        dt = time.perf_counter() - t0
        write_volume(vol.with_array(out), out_dir / f"denoised_{name}.nrrd")
        row(name, out, f"{dt:.2f}")
    invariances(vol.with_array(low), out_dir)
    print(f"\nimages written to {out_dir.relative_to(ROOT)}/ (open them in 3D Slicer)")
    return 0


CROP = 160  # the invariance part works on a central crop: the consistency step costs many passes


def invariances(low_vol, out_dir: Path, k: int = 4) -> None:
    """K invariance samples per denoiser and sampler (noise; cinn with the bundled compact engine),
    raw and after the consistency step, with the fresh-noise reference; one PNG per denoiser."""
    import shutil

    from CTInvariancesLib.invariance.metrics import seam_ratio
    from CTInvariancesLib.invariance.models import bundled_dir
    from CTInvariancesLib.invariance.pipeline import sample_volume
    from CTInvariancesLib.invariance.sampler import InvarianceSampler, NoiseSampler

    h, w = low_vol.shape[1:]
    r0, c0 = (h - CROP) // 2, (w - CROP) // 2
    sub = low_vol.crop_in_plane(slice(r0, r0 + CROP), slice(c0, c0 + CROP))
    have_engine = (bundled_dir() / "cvae.safetensors").exists()
    print(
        f"\ninvariance samples: K={k} inputs per denoiser that it maps to the same output, on the central "
        f"{CROP} x {CROP} px of the slice; inside the body. raw = as drawn; final = after the consistency "
        "step (f(x~) = f(x))"
    )
    print(f"{'denoiser':<9} {'sampler':<7} {'fresh':>6} {'raw ratio':>10} {'final ratio':>12} "
          f"{'std raw':>8} {'std final':>10} {'pairwise':>9} {'seams':>6} {'time s':>7}")
    for name in DENOISER_NAMES:
        den = load_denoiser(name)
        results, fresh = {}, float("nan")
        for kind in ("noise", "cinn"):
            if kind == "cinn" and not have_engine:
                continue
            run_dir = out_dir / f"invariances_{name}_{kind}"
            shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own output from an earlier run
            sampler = NoiseSampler(den) if kind == "noise" else InvarianceSampler.load(den)
            t0 = time.perf_counter()
            m = sample_volume(sub, sampler, run_dir, n_samples=k, seed=SEED, keep_raw=True)
            dt = time.perf_counter() - t0
            results[kind] = run_dir
            if "fresh_noise_ratio" in m:  # from the noise sampler's draws; the cinn row reuses it
                fresh = m["fresh_noise_ratio"]["median"]
            seams = "-"
            if kind == "cinn":
                from CTInvariancesLib.io import read_volume as _rv

                std = _rv(run_dir / "std_map.nrrd").array[0]
                seams = f"{seam_ratio(std, body_mask(sub.array[0]), sampler.patch, sampler.overlap):.2f}"
            print(
                f"{name:<9} {kind:<7} {fresh:6.3f} {m['fidelity_raw']['median_ratio']:10.3f} "
                f"{m['fidelity']['median_ratio']:12.3f} {m['diversity_raw']['std_map_median_hu']:8.1f} "
                f"{m['diversity']['std_map_median_hu']:10.1f} "
                f"{m['diversity']['pairwise_rmse_median_hu']:9.1f} "
                f"{seams:>6} {dt:7.1f}", flush=True
            )
        _figure(name, sub.array[0], results, out_dir / f"invariances_{name}.png")
    print(
        "(fresh = RMSE(f(x1), f(x2)) / RMSE(x1, x2) for two fresh-noise draws: what the denoiser does to "
        "new noise; ratio = RMSE(f(x~), f(x)) / RMSE(x~, x), medians over samples; std = median of the "
        "std map in HU; seams = std at tile edges / elsewhere, 1 = none)"
    )


def _figure(name: str, x, runs: dict, path: Path) -> None:
    """Per sampler: x, f(x), raw sample 1, three consistent samples, the std map, consistent minus raw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from CTInvariancesLib.io import read_volume as _rv
    from CTInvariancesLib.io.streaming import read_sequence

    kinds = [k for k in ("noise", "cinn") if k in runs]
    fig, axes = plt.subplots(len(kinds), 8, figsize=(20, 2.8 * len(kinds) + 0.4), squeeze=False)
    lo, hi = SOFT_TISSUE.low, SOFT_TISSUE.low + SOFT_TISSUE.width
    for row, kind in zip(axes, kinds):
        d = runs[kind]
        fx = _rv(d / "denoised.nrrd").array[0]
        samples = read_sequence(d / "samples.seq.nrrd")[:, 0]
        raw = read_sequence(d / "samples_raw.seq.nrrd")[:, 0]
        std = _rv(d / "std_map.nrrd").array[0]
        panels = [(x, "low-dose input x"), (fx, "f(x)"), (raw[0], "raw sample 1")] + [
            (samples[i], f"consistent sample {i + 1}") for i in range(3)]
        for ax, (img, title) in zip(row, panels):
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi)
            ax.set_title(title, fontsize=9)
        im = row[6].imshow(std, cmap="magma", vmin=0, vmax=max(10.0, float(np.percentile(std, 99))))
        row[6].set_title("std map, consistent (HU)", fontsize=9)
        fig.colorbar(im, ax=row[6], fraction=0.046)
        diff = samples[0] - raw[0]
        v = max(5.0, float(np.percentile(np.abs(diff), 99)))
        im = row[7].imshow(diff, cmap="coolwarm", vmin=-v, vmax=v)
        row[7].set_title("consistent - raw, sample 1 (HU)", fontsize=9)
        fig.colorbar(im, ax=row[7], fraction=0.046)
        row[0].set_ylabel(f"{kind} sampler", fontsize=10)
        for ax in row:
            ax.set_xticks([])
            ax.set_yticks([])
    fig.suptitle(f"{name}: what it ignores (window {SOFT_TISSUE})", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CTInvariancesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
