"""The main job (`ctinvariances run`) on the demo slice: outputs, comparison, probes, the one-line
errors of bad options, and a cancelled job that leaves nothing."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--sampler", "noise", "--consistency", "2", "--samples", "3", "--device", "cpu"]


def _cli(*args, timeout=900):
    return subprocess.run(
        [sys.executable, "-m", "CTInvariancesLib.cli.main", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=timeout,
        env={**__import__("os").environ, "PYTHONPATH": str(ROOT / "CTInvariances")},
    )


@pytest.fixture(scope="module")
def demo_dicom():
    from pydicom.data import get_testdata_file

    return get_testdata_file("explicit_VR-UN.dcm")


@pytest.fixture(scope="module")
def job(demo_dicom, tmp_path_factory):
    out = tmp_path_factory.mktemp("job") / "run"
    proc = _cli(
        "run",
        demo_dicom,
        "--simulate-dose",
        "0.25",
        "--denoiser",
        "cnn10,redcnn",
        "--probe",
        "10,100",
        "--dicom-seg",
        "--out",
        out,
        *FAST,
    )
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_job_writes_every_output_per_denoiser(job):
    out, stdout = job
    for name in ("cnn10", "redcnn"):
        files = {p.name for p in (out / name).iterdir()}
        assert {
            "denoised.nrrd",
            "samples.seq.nrrd",
            "std_map.nrrd",
            "alteration_frequency.nrrd",
            "alterations.seg.nrrd",
            "erasure_map_10mm_100HU.nrrd",
            "findings.csv",
            "findings.json",
            "per_sample.csv",
            "report.png",
            "summary.json",
            "metrics.json",
            "run.json",
            "significance_maps.seq.nrrd",
        } <= files
        rows = list(csv.DictReader(open(out / name / "per_sample.csv")))
        assert len(rows) == 3 and all(0 <= float(r["p_value"]) <= 1 for r in rows)
        assert all(float(r["fidelity_ratio"]) < 1 for r in rows)
        summary = json.loads((out / name / "summary.json").read_text())
        erasure = summary["median_erasure"]["10mm_100HU"]
        assert erasure is not None and -0.5 < erasure < 1.5
    comparison = list(csv.DictReader(open(out / "comparison.csv")))
    assert [r["denoiser"] for r in comparison] == ["cnn10", "redcnn"]
    assert "cnn10" in stdout and "redcnn" in stdout and "erasure" in stdout
    run = json.loads((out / "run.json").read_text())
    assert run["settings"]["probes"] == [[10.0, 100.0]] and len(run["denoisers"]) == 2
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no leftovers


def test_erasure_map_is_on_the_input_grid(job):
    from CTInvariancesLib.io import read_volume

    out, _ = job
    den = read_volume(out / "cnn10" / "denoised.nrrd")
    emap = read_volume(out / "cnn10" / "erasure_map_10mm_100HU.nrrd")
    assert emap.shape == den.shape and emap.spacing == den.spacing and emap.origin == den.origin
    inside = emap.array != -1.0  # -1: outside the body, no probe
    assert 0.2 < inside.mean() < 0.9 and np.isfinite(emap.array).all()


def test_existing_run_is_refused_without_overwrite(job, demo_dicom):
    out, _ = job
    proc = _cli("run", demo_dicom, "--denoiser", "cnn10", "--out", out, *FAST)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "--overwrite" in proc.stderr


@pytest.mark.parametrize(
    "args, words",
    [
        (["--probe", "0,20"], "--probe"),
        (["--probe", "5"], "--probe"),
        (["--samples", "1"], "--samples"),
        (["--alpha", "0"], "--alpha"),
        (["--denoiser", "cnn10,cnn10"], "differ"),
    ],
)
def test_bad_options_get_one_line_errors(demo_dicom, tmp_path, args, words):
    base = {"--denoiser": "cnn10", "--samples": "3"}
    for flag, value in zip(args[::2], args[1::2]):
        base[flag] = value
    flat = [v for kv in base.items() for v in kv]
    proc = _cli("run", demo_dicom, *flat, "--sampler", "noise", "--out", tmp_path / "run")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error:") and words in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_cancelled_job_leaves_nothing(demo_dicom, tmp_path):
    from CTInvariancesLib.denoisers import load_denoiser
    from CTInvariancesLib.errors import Cancelled
    from CTInvariancesLib.invariance.sampler import NoiseSampler
    from CTInvariancesLib.io import read_volume
    from CTInvariancesLib.job import JobSettings, run_job

    vol = read_volume(demo_dicom)
    calls = []

    def stop():
        calls.append(1)
        return len(calls) > 1

    with pytest.raises(Cancelled):
        run_job(
            vol,
            [load_denoiser("cnn10")],
            tmp_path / "run",
            NoiseSampler,
            JobSettings(n_samples=2, consistency_steps=1),
            should_stop=stop,
        )
    assert list(tmp_path.iterdir()) == []


def test_dicom_seg_references_the_input_series(job, demo_dicom):
    import pydicom

    out, _ = job
    seg = pydicom.dcmread(out / "cnn10" / "alterations.seg.dcm")
    source = pydicom.dcmread(demo_dicom, stop_before_pixels=True)
    assert seg.Modality == "SEG" and len(seg.SegmentSequence) == 3
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [
        "alteration: appeared",
        "alteration: disappeared",
        "alteration: changed class",
    ]
    assert seg.StudyInstanceUID == source.StudyInstanceUID
    refs = {
        r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence
    }
    assert source.SOPInstanceUID in refs


def test_dicom_seg_needs_dicom_input(tmp_path, demo_dicom):
    from CTInvariancesLib.io import read_volume, write_volume

    nrrd = tmp_path / "x.nrrd"
    write_volume(read_volume(demo_dicom), nrrd)
    proc = _cli("run", nrrd, "--denoiser", "cnn10", "--dicom-seg", "--out", tmp_path / "run", *FAST)
    assert proc.returncode == 2 and "--dicom-seg needs DICOM input" in proc.stderr
    assert not (tmp_path / "run").exists()
