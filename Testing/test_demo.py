"""`make demo` end to end: the bundled sample, simulated 25 % dose, four bundled denoisers, then the
main job (`ctinvariances run`) with all four, its comparison table and its files."""

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAMES = ("cnn10", "redcnn", "wganvgg", "dugan")
FILES = (
    "denoised.nrrd",
    "samples.seq.nrrd",
    "std_map.nrrd",
    "alteration_frequency.nrrd",
    "alterations.seg.nrrd",
    "findings.csv",
    "findings.json",
    "per_sample.csv",
    "report.png",
    "summary.json",
    "run.json",
)


def test_demo_denoises_and_runs_the_main_job():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py")],
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    split = next(i for i, ln in enumerate(lines) if ln.startswith("$ ctinvariances run"))
    quality = {
        ln.split()[0]: ln.split() for ln in lines[:split] if ln.split() and ln.split()[0] in ("low",) + NAMES
    }
    low_psnr = float(quality["low"][2])
    table = {ln.split()[0]: ln.split() for ln in lines[split:] if ln.split() and ln.split()[0] in NAMES}
    run = ROOT / "runs" / "demo" / "run"
    demo_source = (ROOT / "scripts" / "demo.py").read_text()
    demo_samples = int(re.search(r"^SAMPLES = (\d+)", demo_source, re.M).group(1))
    comparison = {r["denoiser"]: r for r in csv.DictReader(open(run / "comparison.csv"))}
    summary = json.loads((run / "summary.json").read_text())
    assert [d["denoiser"] for d in summary["denoisers"]] == list(NAMES)
    for name in NAMES:
        assert float(quality[name][1]) >= low_psnr + 2.6, proc.stdout  # README: +2.7 to +3.4 dB
        row = comparison[name]
        assert float(row["fidelity_ratio"]) <= 0.1  # consistent samples: f(x~) = f(x)
        assert float(row["median_std_hu"]) > 0
        assert table[name][1] == row["sampler"]  # the printed table is the written one
        for f in FILES:
            assert (run / name / f).stat().st_size > 0, f
        per_sample = list(csv.DictReader(open(run / name / "per_sample.csv")))
        assert len(per_sample) == demo_samples and all(0 <= float(r["p_value"]) <= 1 for r in per_sample)
        assert (run / name / "report.png").stat().st_size > 50_000
    assert not any(p.name.startswith(".run.partial") for p in run.parent.iterdir())
