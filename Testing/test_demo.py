"""`make demo` end to end: the bundled sample, simulated 25 % dose, four bundled denoisers, and
invariance samples for each (noise sampler and bundled engine, raw and consistent)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("cnn10", "redcnn", "wganvgg", "dugan")


def test_demo_runs_denoises_and_draws_consistent_invariances():
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True,
                          text=True, timeout=1800, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    split = next(i for i, ln in enumerate(lines) if ln.startswith("invariance samples"))
    quality = {ln.split()[0]: ln.split() for ln in lines[:split] if ln.split() and ln.split()[0] in
               ("low",) + NAMES}
    low_psnr = float(quality["low"][2])
    rows = {(ln.split()[0], ln.split()[1]): ln.split() for ln in lines[split:]
            if len(ln.split()) == 10 and ln.split()[0] in NAMES}
    for name in NAMES:
        # the README states +2.7 to +3.4 dB on this slice
        assert float(quality[name][1]) >= low_psnr + 2.6, proc.stdout
        for kind in ("noise", "cinn"):
            fresh, raw, final, std_raw, std_final = (float(v) for v in rows[(name, kind)][2:7])
            assert final <= 0.1 and final <= 0.25 * fresh, (name, kind, proc.stdout)
            assert final < raw and std_final > 0
            run = ROOT / "runs" / "demo" / f"invariances_{name}_{kind}"
            run_json = json.loads((run / "run.json").read_text())
            assert run_json["n_samples"] == 4 and run_json["sampler"] == kind
            assert (run / "samples.seq.nrrd").exists() and (run / "samples_raw.seq.nrrd").exists()
        assert float(rows[(name, "cinn")][8]) > 0  # seam ratio printed for the tiled engine
        assert (ROOT / "runs" / "demo" / f"invariances_{name}.png").stat().st_size > 10_000
    assert (ROOT / "runs" / "demo" / "denoised_dugan.nrrd").exists()
