"""Fit the output calibration of the bundled spatial cINNs and install them (README, "The output
calibration"): per denoiser, ``train cinn --init <bundled cINN> --steps 0`` (no gradient step: only
the calibration's maximum-likelihood fit on 1024 training crops, the rest frozen), then the bundled
file is replaced and its card keeps the training history, the provenance and, under
``metrics.before_calibration``, the numbers measured with the uncalibrated weights.

    .venv/bin/python scripts/calibrate_bundled_cinns.py --work DIR [--denoisers cnn10 ...] [--install]

A calibrated cINN already in DIR whose warm start is the bundled file is reused. Measure the result
with ``scripts/measure_exact_invariances.py --cvae DIR --samplers cinn --steps 0`` and
``scripts/engine_diagnostics.py --cvae DIR`` before ``--install``; then
``scripts/raw_table_by_anatomy.py LOG --cards CTInvariances/Resources/Models/invariance/spatial``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.denoisers import DENOISER_NAMES  # noqa: E402
from CTInvariancesLib.training.invariance import CINNTrainer, CINNTrainingConfig  # noqa: E402

BUNDLED = ROOT / "CTInvariances" / "Resources" / "Models" / "invariance" / "spatial"


def calibrated(work: Path, name: str, device: str, crops: int) -> Path:
    bundled = BUNDLED / f"cinn-{name}.safetensors"
    old = json.loads(bundled.with_suffix(".json").read_text())
    path = work / bundled.name
    card_path = path.with_suffix(".json")
    if card_path.exists():
        card = json.loads(card_path.read_text())
        training = card.get("training", {})
        if (training.get("init") or {}).get("sha256") == old["sha256"] and training.get("calibration"):
            print(f"{name}: reusing {path.name}", flush=True)
            return path
    for f in ("cvae.safetensors", "cvae.json"):
        if not (work / f).exists():
            shutil.copy(BUNDLED / f, work / f)
    cfg = CINNTrainingConfig(
        out=str(work), denoiser=name, cvae=str(work), init=str(bundled), steps=0, batch_size=32,
        device=device, calibration_crops=crops,
    )
    out = CINNTrainer(cfg).run(progress=False)
    if out is None:
        raise SystemExit(f"{name}: the calibration did not finish")
    print(f"{name}: {json.loads(card_path.read_text())['training']['calibration']}", flush=True)
    return out


def install(path: Path, name: str) -> None:
    bundled = BUNDLED / f"cinn-{name}.safetensors"
    old = json.loads(bundled.with_suffix(".json").read_text())
    card = json.loads(path.with_suffix(".json").read_text())
    cal = card["training"]["calibration"]
    card["provenance"] = (
        old["provenance"]
        + f" Then its output calibration (8 numbers per latent channel) fitted by maximum likelihood on"
        f" {cal['crops']} training crops of {cal['crop_px']} px with every other weight frozen, by"
        " scripts/calibrate_bundled_cinns.py on a CPU (no gradient step)."
    )
    hardware = old["training"].get("hardware")
    card["training"]["hardware"] = f"{hardware}; calibration: {card['training']['hardware']}"
    card["metrics"] = {"before_calibration": {"sha256": old["sha256"], **old.get("metrics", {})}}
    shutil.copy(path, bundled)
    bundled.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    print(f"{name}: installed {bundled.relative_to(ROOT)}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", required=True, help="folder for the calibrated cINNs (reused when present)")
    ap.add_argument("--denoisers", nargs="*", default=list(DENOISER_NAMES))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--crops", type=int, default=1024)
    ap.add_argument("--install", action="store_true", help="replace the bundled cINNs and their cards")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    for name in args.denoisers:
        path = calibrated(work, name, args.device, args.crops)
        if args.install:
            install(path, name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
