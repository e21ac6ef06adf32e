"""Per-anatomy table of a raw run's log (``measure_exact_invariances.py --steps 0``).

    .venv/bin/python scripts/raw_table_by_anatomy.py benchmarks/results/spatial_raw_gpu.log [--cards DIR]

Per slice: the raw std-map median over the noise std of x (the project's estimator, recomputed from
the same held-out realisation) and the power ratio; then the median (and range) per anatomy and
denoiser. The script's own table takes medians over all slices, which mixes a 23 HU abdomen with a
5 HU head; this one does not. ``--cards DIR`` also writes each denoiser's rows into the metrics of
its cINN card in DIR (``cinn-<denoiser>.json``). ``--consistent`` reads runs with the consistency
step and both samplers instead (several logs: a slice measured twice counts once) and prints, per
anatomy and denoiser, the fresh-noise ratio, the cINN sampler's consistent fidelity ratio, both
samplers' std (raw -> consistent) and their ratio. ``--seconds`` prints, from the same lines, the
seconds per slice (sampling + consistency step) per denoiser and sampler: median per anatomy and the
slowest slice.
"""

import argparse
import re
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "CTInvariances"))
from CTInvariancesLib.datasets import make_pairs  # noqa: E402
from CTInvariancesLib.evaluation import HOLDOUT_SEED  # noqa: E402
from CTInvariancesLib.lowdose import estimate_noise_hu  # noqa: E402
from CTInvariancesLib.weights import set_card_metric  # noqa: E402

LINE = re.compile(r"(\w+)\s+(\w+)\s+(\S+)#0\s+fresh [\d.]+ raw [\d.]+ -> [\d.]+\s+"
                  r"std ([\d.]+) -> [\d.]+ HU\s+power ([\d.]+)")


def main(log: str, cards: str | None = None) -> None:
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
    if cards:
        write_cards(rows, Path(cards))


SPLITS = {"abdomen": "abdomen_k14_19", "head": "head_k20_27"}


def write_cards(rows: dict, folder: Path) -> None:
    for den in sorted({d for _, d, _ in rows}):
        card = folder / f"cinn-{den}.json"
        entry = {
            "measured_by": "scripts/measure_exact_invariances.py --samplers cinn --steps 0 (K = 16), "
                           "then scripts/raw_table_by_anatomy.py; per-slice ratios, median per anatomy",
            "bounds": {"raw_std_over_noise_std": ">= 0.5", "power_ratio": "[0.7, 1.3]"},
        }
        for (anat, d, kind), r in sorted(rows.items()):
            if d == den and kind == "cinn":
                entry[SPLITS.get(anat, anat)] = {
                    "slices": len(r["std"]),
                    "raw_std_over_noise_std_median": round(float(np.median(r["std"])), 2),
                    "raw_std_over_noise_std_min": round(min(r["std"]), 2),
                    "power_ratio_median": round(float(np.median(r["power"])), 2),
                    "power_ratio_range": [round(min(r["power"]), 2), round(max(r["power"]), 2)],
                }
        set_card_metric(card, "raw_samples_dose_0.25", entry)


CONSISTENT = re.compile(r"(\w+)\s+(\w+)\s+(\S+)#0\s+fresh ([\d.]+) raw [\d.]+ -> ([\d.]+)\s+"
                        r"std ([\d.]+) -> ([\d.]+) HU")


def consistent_table(logs: list[str]) -> None:
    rows: dict = {}
    seen: set = set()
    for line in "\n".join(Path(p).read_text() for p in logs).splitlines():
        m = CONSISTENT.match(line)
        if m and (m.group(1), m.group(2), m.group(3)) not in seen:  # logs of several runs: first wins
            seen.add((m.group(1), m.group(2), m.group(3)))
            den, kind, name, fresh, ratio, s0, s1 = m.groups()
            key = (name.split("-")[0], den)
            rows.setdefault(key, {}).setdefault(kind, []).append(
                (float(fresh), float(ratio), float(s0), float(s1))
            )
    print("| anatomy | denoiser | slices | fresh-noise ratio | consistent ratio cinn (median / max) "
          "| std raw → consistent, noise sampler (HU) | std raw → consistent, cinn (HU) "
          "| consistent std cinn / noise (≥ 0.8) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for (anat, den), r in sorted(rows.items()):
        n, c = np.array(r["noise"]), np.array(r["cinn"])
        ratio = float(np.median(c[:, 3]) / np.median(n[:, 3])) if np.median(n[:, 3]) >= 1.0 else None
        shown = f"{ratio:.2f}" if ratio is not None else "— (both < 1 HU)"
        print(f"| {anat} | {den} | {len(c)} | {np.median(n[:, 0]):.3f} | {np.median(c[:, 1]):.3f} / "
              f"{c[:, 1].max():.3f} | {np.median(n[:, 2]):.1f} → {np.median(n[:, 3]):.1f} "
              f"| {np.median(c[:, 2]):.1f} → {np.median(c[:, 3]):.1f} | {shown} |")


SECONDS = re.compile(r"(\w+)\s+(\w+)\s+(\S+)#0\s+fresh .*\(([\d.]+) \+ ([\d.]+) s\)")


def seconds_table(logs: list[str]) -> None:
    rows: dict = {}
    for line in "\n".join(Path(p).read_text() for p in logs).splitlines():
        m = SECONDS.match(line)
        if m:
            den, kind, name, t_s, t_c = m.groups()
            rows.setdefault((den, kind), []).append((name, float(t_s) + float(t_c)))
    print("| denoiser | sampler | median s per slice, abdomen / head | max s (slice) |")
    print("| --- | --- | --- | --- |")
    for (den, kind), r in rows.items():
        med = [np.median([t for n, t in r if n.startswith(a)] or [np.nan]) for a in ("abdomen", "head")]
        name, worst = max(r, key=lambda item: item[1])
        print(f"| {den} | {kind} | {med[0]:.1f} / {med[1]:.1f} | {worst:.1f} ({name}) |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("log", nargs="+", help="one raw log; with --consistent, one or more logs")
    ap.add_argument("--cards", help="folder of cINN cards to write the per-anatomy rows into")
    ap.add_argument("--consistent", action="store_true", help="the log of a run with the consistency step")
    ap.add_argument("--seconds", action="store_true", help="seconds per slice of a run's log(s)")
    a = ap.parse_args()
    if a.seconds:
        seconds_table(a.log)
    elif a.consistent:
        consistent_table(a.log)
    else:
        main(a.log[0], a.cards)
