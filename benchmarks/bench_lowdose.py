"""Benchmark: seconds per 512x512 slice of the low-dose simulator on this machine.

Run: .venv/bin/python benchmarks/bench_lowdose.py  (needs ../shared/data; prints a table).
Each row is the median of REPEATS runs, all measured in this one process.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.io import read_volume  # noqa: E402
from CTInvariancesLib.lowdose import FanBeamGeometry, LowDoseSettings, LowDoseSimulator  # noqa: E402
from CTInvariancesLib.training.data import require_shared_data  # noqa: E402

REPEATS = 3


def main() -> None:
    vol = read_volume(require_shared_data() / "ct" / "abdomen-siemens-20")
    sl = vol.array[17]
    px = (vol.spacing[1], vol.spacing[0])
    i0 = LowDoseSimulator().estimate_i0(sl, px)
    rows = []
    for views in (576, 1152):
        g = FanBeamGeometry(n_views=views)
        for label, settings in (
            ("I0 estimated per slice", LowDoseSettings(geometry=g)),
            ("I0 given", LowDoseSettings(geometry=g, i0=i0)),
        ):
            sim = LowDoseSimulator(settings)
            times = []
            for r in range(REPEATS):
                t0 = time.perf_counter()
                sim.simulate(sl, px, seed=r)
                times.append(time.perf_counter() - t0)
            rows.append((views, label, statistics.median(times)))
        # make_pairs and training data: a series' slices in FBP batches (simulate_slices)
        sim, stack = LowDoseSimulator(LowDoseSettings(geometry=g)), vol.array[14:22]
        times = []
        for r in range(REPEATS):
            t0 = time.perf_counter()
            sim.simulate_slices(stack, px, [[r] for _ in stack])
            times.append((time.perf_counter() - t0) / len(stack))
        rows.append((views, f"I0 estimated, {len(stack)} slices", statistics.median(times)))
    print(f"low-dose simulation, 512x512 slice, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, median of {REPEATS}")
    print(f"{'views':>6}  {'mode':<26} {'s/slice':>8}")
    for views, label, t in rows:
        print(f"{views:>6}  {label:<26} {t:8.2f}")


if __name__ == "__main__":
    main()
