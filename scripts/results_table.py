"""Print the bundled denoisers' held-out metrics (from their model cards) as a Markdown table.

Usage: .venv/bin/python scripts/results_table.py [--readme]   (--readme rewrites the table in
README.md between the RESULTS markers).
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = ROOT / "CTInvariances" / "Resources" / "Models" / "denoisers"
KEY = "holdout_dose_0.25"


def n_parameters(weights: Path) -> int:
    from safetensors import safe_open

    with safe_open(str(weights), "pt") as f:
        return sum(_prod(f.get_slice(k).get_shape()) for k in f.keys())


def _prod(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _stages(training: dict) -> list[dict]:
    """Training stages, earliest first (a fine-tuned model's card nests its starting point's)."""
    init = training.get("init") or {}
    earlier = _stages(init["training"]) if init.get("training") else []
    return [*earlier, training]


def table() -> str:
    rows = [
        "| model | params | steps | train time | PSNR dB (LD -> denoised) | gain dB "
        "| SSIM (LD -> denoised) | gain |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for name in ("cnn10", "redcnn", "wganvgg", "dugan"):
        card_path = MODELS / f"{name}.json"
        if not card_path.exists():
            rows.append(f"| {name} | not trained yet | | | | | | |")
            continue
        card = json.loads(card_path.read_text())
        m = card.get("metrics", {}).get(KEY)
        stages = _stages(card["training"])
        t = {"steps": sum(st["steps"] for st in stages),
             "train_time_s": sum(st["train_time_s"] for st in stages)}
        width = card.get("kwargs", {}).get("width", "published")
        if m is None:
            rows.append(f"| {name} (width {width}) | | {t['steps']} | | not evaluated | | | |")
            continue
        ld, dn = m["low_dose"], m["denoised"]
        n_params = n_parameters(card_path.with_suffix(".safetensors"))
        rows.append(
            f"| {name} (width {width}) | {n_params:,} | {t['steps']} | "
            f"{t['train_time_s'] / 60:.0f} min | {ld['psnr_db']:.2f} -> {dn['psnr_db']:.2f} | "
            f"{m['psnr_gain_db']:+.2f} | {ld['ssim']:.3f} -> {dn['ssim']:.3f} | {m['ssim_gain']:+.3f} |"
        )
    return "\n".join(rows)


def main() -> None:
    text = table()
    if "--readme" in sys.argv:
        readme = ROOT / "README.md"
        body = readme.read_text()
        new = re.sub(r"<!-- RESULTS -->.*?<!-- /RESULTS -->",
                     f"<!-- RESULTS -->\n{text}\n<!-- /RESULTS -->", body, flags=re.S)
        readme.write_text(new)
    print(text)


if __name__ == "__main__":
    main()
