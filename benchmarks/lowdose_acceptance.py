"""Print the low-dose simulator's acceptance numbers on the real data (no timing).

Run: .venv/bin/python benchmarks/lowdose_acceptance.py   (needs ../shared/data)
The same checks run, with pass/fail bounds, in Testing/test_lowdose.py; this prints the values.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "CTInvariances"))

from CTInvariancesLib.io import read_volume  # noqa: E402
from CTInvariancesLib.lowdose import (  # noqa: E402
    LowDoseSettings,
    LowDoseSimulator,
    estimate_noise_hu,
    flat_soft_tissue_mask,
)
from CTInvariancesLib.training.data import require_shared_data  # noqa: E402

ROI = (slice(110, 146), slice(110, 146))


def main() -> None:
    data = require_shared_data()
    rows = []
    for name, k, tilt in (("abdomen-siemens-20", 17, "resample"), ("head-ge-28", 24, "keep")):
        vol = read_volume(data / "ct" / name, tilt=tilt)
        fd, px = vol.array[k], (vol.spacing[1], vol.spacing[0])
        mask = flat_soft_tissue_mask(fd)
        sim = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25))
        ld, i0 = sim.simulate(fd, px, seed=1)
        rows.append((f"{name} k={k}: mean(LD-FD) in soft tissue, HU", float(np.mean((ld - fd)[mask]))))
        rows.append((f"{name} k={k}: noise LD25/FD (estimator)",
                     estimate_noise_hu(ld, mask) / estimate_noise_hu(fd, mask)))
        stds = {}
        for a in (0.10, 0.25):
            s = LowDoseSimulator(LowDoseSettings(dose_fraction=a, i0=i0))
            stds[a] = float(np.std(s.added_noise(fd, px, seed=3, i0=i0)[mask]))
        rows.append((f"{name} k={k}: added std 10%/25% (target 1.73)", stds[0.10] / stds[0.25]))
        other, _ = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25, i0=i0)).simulate(fd, px, seed=2)
        rows.append((f"{name} k={k}: corr(noise seed 1, seed 2)",
                     float(np.corrcoef((ld - fd)[mask], (other - fd)[mask])[0, 1])))
    ph = data / "phantom" / "lcd-mita-fda" / "fbp"
    fd = read_volume(ph / "dose_100" / "signal_absent" / "signal_absent.mhd").array[0] - 1000.0
    real10 = read_volume(ph / "dose_010" / "signal_absent" / "signal_absent.mhd").array - 1000.0
    ld25, _ = LowDoseSimulator(LowDoseSettings(dose_fraction=0.25)).simulate(fd, (1.0, 1.0), seed=5)
    ld10, _ = LowDoseSimulator(LowDoseSettings(dose_fraction=0.10)).simulate(fd, (1.0, 1.0), seed=6)
    rows.append(("phantom: ROI std LD25/FD", float(ld25[ROI].std() / fd[ROI].std())))
    real = float(np.mean([r[ROI].std() for r in real10]))
    rows.append(("phantom: ROI std simulated 10% / FDA's real 10%", float(ld10[ROI].std()) / real))
    rows.append(("phantom: expected 10%/100% std ratio sqrt(10)", math.sqrt(10)))
    width = max(len(r[0]) for r in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:8.3f}")


if __name__ == "__main__":
    main()
