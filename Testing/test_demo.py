"""`make demo` end to end: the bundled sample, simulated 25 % dose, four bundled denoisers, and
invariance samples for each with the bundled engine."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("cnn10", "redcnn", "wganvgg", "dugan")


def _rows(lines):
    return {ln.split()[0]: ln.split() for ln in lines if ln.split() and ln.split()[0] in ("low",) + NAMES}


def test_demo_runs_and_every_denoiser_improves_the_unseen_sample():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True,
                          text=True, timeout=900, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    split = next(i for i, ln in enumerate(lines) if ln.startswith("invariance samples"))
    quality, invariances = _rows(lines[:split]), _rows(lines[split:])
    low_psnr = float(quality["low"][2])
    for name in NAMES:
        assert float(quality[name][1]) > low_psnr + 1.0, proc.stdout
        moved, kept, ratio = (float(v) for v in invariances[name][1:4])
        assert moved > 0 and abs(kept / moved - ratio) < 0.2  # medians of different samples
        run = ROOT / "runs" / "demo" / f"invariances_{name}"
        assert json.loads((run / "run.json").read_text())["n_samples"] == 8
        assert (run / "samples.seq.nrrd").exists()
    assert (ROOT / "runs" / "demo" / "denoised_dugan.nrrd").exists()
