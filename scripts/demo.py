"""`make demo`: simulate a 25 % dose scan of the bundled sample slice, denoise it with the four
bundled denoisers and print a quality table; then the main job (`ctinvariances run`) on the 25 %
dose slice with all four denoisers, which prints the comparison table; outputs in runs/demo/.

The sample is a real abdominal CT slice (TCIA Pancreas-CT, CC BY 3.0, Roth et al.) that ships with
the PyPI package pydicom-data as ``explicit_VR-UN.dcm``; no model was trained on it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

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
    crop = vol.with_array(low).crop_in_plane(slice(ROW0, ROW0 + CROP), slice(COL0, COL0 + CROP))
    write_volume(crop, out_dir / "low_dose_25_crop.nrrd")
    run_main_job(out_dir)
    print(f"\nimages written to {out_dir.relative_to(ROOT)}/ (open them in 3D Slicer)")
    return 0


# K = 4: with the spatial engine (the default since its samples vary like the noise of x) the
# consistency step has more to remove than with the tiled engine's nearly identical samples; K = 6
# took 364 s (352 s of it the main job) against the 5-minute target.
SAMPLES = 4
# The main job runs on a 256 x 256 px box of the 25 % dose slice (liver, kidneys, spine, pancreas):
# the consistency step of the larger denoisers costs minutes per 512 x 512 slice on a 2-core CPU,
# and `make demo` should take about 5 minutes. On a GPU run the whole slice
# (`ctinvariances run runs/demo/low_dose_25.nrrd ...`).
CROP, ROW0, COL0 = 256, 166, 128


def run_main_job(out_dir: Path) -> None:
    """The main job on the 25 % dose slice, exactly as a user types it."""
    from CTInvariancesLib.cli.main import main as cli

    args = [str(out_dir / "low_dose_25_crop.nrrd"), "--denoiser", ",".join(DENOISER_NAMES), "--samples",
            str(SAMPLES), "--out", str(out_dir / "run"), "--overwrite"]
    print(f"\n$ ctinvariances run {' '.join(Path(a).name if '/' in a else a for a in args)}", flush=True)
    t0 = time.perf_counter()
    code = cli(["run", *args])
    if code:
        raise CTInvariancesError(f"the main job failed (exit {code})")
    print(f"main job: {time.perf_counter() - t0:.0f} s; per denoiser: {out_dir.relative_to(ROOT)}/run/<name>/"
          "report.png, findings.csv, per_sample.csv, alterations.seg.nrrd, ...")


if __name__ == "__main__":
    try:
        sys.exit(main())
    except CTInvariancesError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
