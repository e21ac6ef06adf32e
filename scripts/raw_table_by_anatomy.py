"""Per-anatomy table of a raw run's log (``measure_exact_invariances.py --steps 0``).

    .venv/bin/python scripts/raw_table_by_anatomy.py benchmarks/results/spatial_raw_gpu.log

Per slice: the raw std-map median over the noise std of x (the project's estimator, recomputed from
the same held-out realisation) and the power ratio; then the median (and range) per anatomy and
denoiser. The script's own table takes medians over all slices, which mixes a 23 HU abdomen with a
5 HU head; this one does not.
"""

import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTInvariances"))
from CTInvariancesLib.datasets import make_pairs  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.lowdose import estimate_noise_hu  # noqa: E402

LINE = re.compile(r"(\w+)\s+(\w+)\s+(\S+)#0\s+fresh [\d.]+ raw [\d.]+ -> [\d.]+\s+"
                  r"std ([\d.]+) -> [\d.]+ HU\s+power ([\d.]+)")


def main(log: str) -> None:
    pairs = make_pairs("holdout", 0.25, realisations=2, seed=HOLDOUT_SEED)
    names = [str(n) for n in pairs["names"]]
    noise = {names[2 * i].split("#")[0]: estimate_noise_hu(pairs["ld"][2 * i])
             for i in range(len(names) // 2)}
    rows: dict = {}
    for line in Path(log).read_text().splitlines():
        m = LINE.match(line)
        if m:
            den, kind, name, std, power = m.groups()
            r = rows.setdefault((name.split("-")[0], den, kind), {"std": [], "power": []})
            r["std"].append(float(std) / noise[name])
            r["power"].append(float(power))
    print("| anatomy | denoiser | sampler | slices | raw std / noise std: median (min) "
          "| power ratio: median [min, max] |")
    print("| --- | --- | --- | --- | --- | --- |")
    for (anat, den, kind), r in sorted(rows.items()):
        print(f"| {anat} | {den} | {kind} | {len(r['std'])} | "
              f"{np.median(r['std']):.2f} ({min(r['std']):.2f}) "
              f"| {np.median(r['power']):.2f} [{min(r['power']):.2f}, {max(r['power']):.2f}] |")


if __name__ == "__main__":
    main(sys.argv[1])
