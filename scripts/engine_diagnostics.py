"""Diagnostics of a learned invariance engine on held-out patches, per denoiser: does the decoder use
z, does the cINN reproduce the encoder's latent statistics, latent normality, invertibility, and
whether the cINN uses f(x) (NLL with the true f(x) against shuffled f(x) and the prior).

    .venv/bin/python scripts/engine_diagnostics.py [--cvae ENGINE] [--patches 256] [--device cpu]
        [--out benchmarks/results/engine_diagnostics.json] [--cards DIR]
    .venv/bin/python scripts/engine_diagnostics.py --from-json RESULT.json --cards DIR

``--cards DIR`` stores each denoiser's latent normality, round trip and NLLs in the metrics of its
cINN card in DIR (``cinn-<denoiser>.json``), when the card's cINN is the one measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.denoisers import DENOISER_NAMES, load_denoiser  # noqa: E402
from CTInvariancesLib.invariance.metrics import (  # noqa: E402
    holdout_patches,
    invertibility,
    latent_usage,
)
from CTInvariancesLib.invariance.models import load_cinn, load_cvae, resolve_cinn_path, resolve_cvae_path  # noqa: E402
from CTInvariancesLib.weights import set_card_metric  # noqa: E402


def write_cards(result: dict, folder: Path) -> None:
    for name, row in result["denoisers"].items():
        card_path = folder / f"cinn-{name}.json"
        if not card_path.exists():
            continue
        card = json.loads(card_path.read_text())
        if row.get("cinn_sha256") not in (None, card.get("sha256")):
            print(f"{name}: {card_path.name} holds another cINN than the one measured; not written")
            continue
        inv = row["invertibility"]
        set_card_metric(card_path, "latent_diagnostics", {
            "measured_by": "scripts/engine_diagnostics.py (held-out 128 px patches, with their noise maps)",
            "n_patches": inv["n_latents"],
            "normality": inv["normality"],
            "max_abs_roundtrip_error": inv["max_abs_roundtrip_error"],
            "nll_per_dim": inv["nll_per_dim"],
            "cinn_power_ratio": row["latent_usage"]["cinn_power_ratio"],
        })
        print(f"{name}: wrote {card_path.name}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cvae", help="engine folder or cVAE file (default: bundled)")
    ap.add_argument("--denoisers", nargs="*", default=list(DENOISER_NAMES))
    ap.add_argument("--patches", type=int, default=256)
    ap.add_argument("--patch", type=int, help="patch size (default: the cVAE's)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "engine_diagnostics.json"))
    ap.add_argument("--cards", help="folder of cINN cards to write the rows into")
    ap.add_argument("--from-json", help="write --cards from this earlier result instead of measuring")
    args = ap.parse_args()
    if args.from_json:
        if not args.cards:
            ap.error("--from-json only writes cards: give --cards DIR")
        write_cards(json.loads(Path(args.from_json).read_text()), Path(args.cards))
        return 0
    cvae_path = resolve_cvae_path(args.cvae)
    cvae, card = load_cvae(cvae_path, args.device)
    result = {"cvae": {k: card.get(k) for k in ("file", "sha256", "size")}, "denoisers": {}}
    for name in args.denoisers:
        den = load_denoiser(name, device=args.device)
        cinn, cinn_card = load_cinn(resolve_cinn_path(None, name, cvae_path), args.device)
        maps = bool(getattr(cinn.cfg, "noise_map", False))
        ps = holdout_patches(den, args.patch or cvae.patch, args.patches, seed=7, noise_maps=maps)
        with torch.inference_mode():
            row = {
                "latent_usage": latent_usage(cvae, cinn, ps),
                "invertibility": invertibility(cvae, cinn, ps),
                "cinn_sha256": cinn_card.get("sha256"),
            }
        result["denoisers"][name] = row
        print(name, json.dumps(row, indent=1), flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    if args.cards:
        write_cards(result, Path(args.cards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
