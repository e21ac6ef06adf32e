"""`make demo` end to end: the bundled sample, simulated 25 % dose, four bundled denoisers."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_and_every_denoiser_improves_the_unseen_sample():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    rows = {line.split()[0]: line.split() for line in proc.stdout.splitlines()
            if line.split() and line.split()[0] in ("low", "cnn10", "redcnn", "wganvgg", "dugan")}
    low_psnr = float(rows["low"][2])
    for name in ("cnn10", "redcnn", "wganvgg", "dugan"):
        assert float(rows[name][1]) > low_psnr + 1.0, proc.stdout
    assert (ROOT / "runs" / "demo" / "denoised_dugan.nrrd").exists()
