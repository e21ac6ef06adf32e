"""Measure the invariance engine on the held-out slices (issue section 4) and store the numbers in
the model cards; ``--install`` copies the weights and cards into the bundled models folder.

    .venv/bin/python scripts/measure_invariance_models.py --runs runs/invariance [--install]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser  # noqa: E402
from CTInvariancesLib.invariance.metrics import engine_metrics  # noqa: E402
from CTInvariancesLib.invariance.models import bundled_dir, load_cinn, load_cvae  # noqa: E402


def _update_card(weights: Path, key: str, value) -> None:
    card_path = weights.with_suffix(".json")
    card = json.loads(card_path.read_text())
    card[key] = value
    card_path.write_text(json.dumps(card, indent=2) + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", default="runs/invariance")
    ap.add_argument("--denoisers", nargs="*", default=list(DENOISER_NAMES))
    ap.add_argument("--n-latents", type=int, default=1000)
    ap.add_argument("--n-fidelity", type=int, default=200)
    ap.add_argument("--install", action="store_true")
    args = ap.parse_args()
    runs = Path(args.runs)
    cvae_path = runs / "cvae" / "cvae.safetensors"
    cvae, _ = load_cvae(cvae_path)
    all_metrics, cinn_paths = {}, {}
    for name in args.denoisers:
        den = load_denoiser(name)
        cinn_path = runs / f"cinn-{name}" / f"cinn-{name}.safetensors"
        cinn, _ = load_cinn(cinn_path)
        m = engine_metrics(den, cvae, cinn, n_latents=args.n_latents, n_fidelity=args.n_fidelity)
        all_metrics[name] = m
        _update_card(cinn_path, "metrics", {"holdout_dose_0.25": m})
        cinn_paths[name] = cinn_path
        inv = m["invertibility_and_normality"]
        fc, fp = m["fidelity_cinn"], m["fidelity_prior"]
        nrm = inv["normality"]
        noise = fc.get("median_lowdose_noise_hu", float("nan"))
        print(
            f"{name:8s} roundtrip {inv['max_abs_roundtrip_error']:.2e}  |mean|max {nrm['mean_abs_max']:.3f}"
            f"  std [{nrm['std_min']:.3f}, {nrm['std_max']:.3f}]"
            f"  ratio cINN {fc['median_ratio']:.3f} prior {fp['median_ratio']:.3f}"
            f"  rmse(x~,x) {fc['median_rmse_input_hu']:.1f} HU / noise {noise:.1f} HU"
            f"  recon {m['reconstruction']['median_rmse_hu_posterior_mean']:.1f} HU",
            flush=True,
        )
    _update_card(
        cvae_path,
        "metrics",
        {"holdout_dose_0.25_reconstruction": {n: m["reconstruction"] for n, m in all_metrics.items()}},
    )
    (runs / "metrics.json").write_text(json.dumps(all_metrics, indent=2) + "\n")
    if args.install:
        dest = bundled_dir()
        dest.mkdir(parents=True, exist_ok=True)
        for src in [cvae_path, *cinn_paths.values()]:
            for f in (src, src.with_suffix(".json")):
                shutil.copy2(f, dest / f.name)
        print(f"installed into {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
