"""The adversarial suite (cases in Testing/adversarial.py): every bad input or option is a clean,
one-line error naming the file or option with nothing written; every odd but valid input succeeds
with finite output on the input's geometry; inputs are never modified; nothing is left behind, also
after SIGINT and SIGTERM. ``scripts/adversarial_report.py`` runs the same cases and counts them."""

from __future__ import annotations

import pytest
from adversarial import DATA, all_cases, run_case

CASES = all_cases()


def test_the_suite_covers_every_class():
    ids = [c.id for c in CASES]
    assert len(ids) == len(set(ids)) and len(ids) >= 80
    for prefix in ("option-", "input-", "denoiser-", "engine-", "output-", "memory-", "ok-", "signal-"):
        assert any(i.startswith(prefix) for i in ids), prefix


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case(case, tmp_path):
    if case.needs_data and not (DATA / "ct").is_dir():
        pytest.skip(f"needs ../shared/data (set CTINVARIANCES_DATA); not found at {DATA}")
    res = run_case(case, tmp_path)
    expected = "ok" if case.expect == "ok" else "clean_error"
    assert res.kind == expected and not res.problems, (
        f"{res.kind}: {res.detail}\n{res.problems}\n{res.stderr[-1500:]}"
    )
