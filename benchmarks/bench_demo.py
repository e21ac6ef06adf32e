"""Time `make demo`'s work (scripts/demo.py) end to end; target <= 5 minutes on a 2-core CPU.

.venv/bin/python benchmarks/bench_demo.py
"""

import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
t0 = time.perf_counter()
proc = subprocess.run(
    [sys.executable, str(ROOT / "scripts" / "demo.py")], capture_output=True, text=True, cwd=ROOT
)
total = time.perf_counter() - t0
if proc.returncode:
    sys.exit(proc.stderr)
job = re.search(r"main job: (\d+) s", proc.stdout)
samples = re.search(r"^SAMPLES = (\d+)", (ROOT / "scripts" / "demo.py").read_text(), re.M).group(1)
print("| what | seconds | target |")
print("| --- | --- | --- |")
print(f"| scripts/demo.py (simulate, denoise x4, main job x4 denoisers) | {total:.0f} | <= 300 |")
print(
    f"| of which the main job (`ctinvariances run`, 256 px box, K = {samples}) "
    f"| {job.group(1) if job else '?'} | |"
)
