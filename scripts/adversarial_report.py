"""Run the adversarial suite's cases (Testing/adversarial.py) and count the outcomes: clean errors,
correct successes, wrong successes, tracebacks, unclear errors, leftovers, modified inputs.

    .venv/bin/python scripts/adversarial_report.py [--only SUBSTRING] [--json FILE]

Writes benchmarks/results/adversarial.json by default; the per-case assertions are the tests in
Testing/test_adversarial.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "Testing"))

from adversarial import DATA, all_cases, run_case  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", help="run the cases whose id contains this")
    ap.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "adversarial.json"))
    args = ap.parse_args()
    cases = [c for c in all_cases() if not args.only or args.only in c.id]
    rows = []
    t0 = time.perf_counter()
    for case in cases:
        if case.needs_data and not (DATA / "ct").is_dir():
            rows.append({"id": case.id, "expect": case.expect, "kind": "skipped", "detail": "no shared data"})
            continue
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            res = run_case(case, Path(tmp))

            def portable(text: str) -> str:  # no path of this machine in the committed record
                for path, name in ((tmp, "<tmp>"), (str(DATA), "<data>"), (str(ROOT), "<repo>")):
                    text = text.replace(path, name)
                return text

        rows.append(
            {
                "id": case.id,
                "expect": case.expect,
                "kind": res.kind,
                "detail": portable(res.detail),
                "problems": [portable(p) for p in res.problems],
                "seconds": round(time.perf_counter() - t, 2),
            }
        )
        print(f"{res.kind:<15} {case.id:<45} {rows[-1]['detail'][:150]}", flush=True)
    counts = collections.Counter(r["kind"] for r in rows)
    good = {"clean_error", "ok", "skipped"}
    print(f"\n{len(rows)} cases in {time.perf_counter() - t0:.0f} s")
    for kind, n in sorted(counts.items()):
        print(f"  {kind:<15} {n}")
    summary = {
        "cases": len(rows),
        "expected_errors": sum(r["expect"] != "ok" for r in rows),
        "expected_successes": sum(r["expect"] == "ok" for r in rows),
        "counts": dict(counts),
        "wrong_successes": counts.get("wrong_success", 0) + counts.get("bad_output", 0),
        "tracebacks": counts.get("traceback", 0),
        "leftovers": counts.get("leftover", 0),
        "rows": rows,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    return 0 if set(counts) <= good else 1


if __name__ == "__main__":
    sys.exit(main())
