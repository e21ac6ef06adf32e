"""The command line, run as a user runs it (a subprocess): outputs, exit codes, one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from CTInvariancesLib.io import read_volume

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "CTInvariances"), str(ROOT / "Testing")]))
    return subprocess.run(
        [sys.executable, "-m", "CTInvariancesLib.cli.main", *args],
        capture_output=True, text=True, env=env, cwd=cwd or ROOT / "Testing", timeout=600,
    )


def assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0]


def test_inspect_json(ct_small):
    proc = run("inspect", str(ct_small), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["shape"] == [1, 128, 128]
    assert info["modality"] == "CT"
    assert info["spacing_mm"][1:] == pytest.approx([0.661468, 0.661468])
    assert info["hu_min"] < info["hu_max"]
    assert info["series_uid"].startswith("1.3.6.1.4.1.5962")


def test_inspect_abdomen_text_and_slices(abdomen_dir):
    proc = run("inspect", str(abdomen_dir), "--json", "--slices", "2:5")
    info = json.loads(proc.stdout)
    assert info["shape"] == [3, 512, 512]
    assert info["spacing_mm"] == [2.0, 0.9765625, 0.9765625]
    text = run("inspect", str(abdomen_dir))
    assert text.returncode == 0 and "Br38f" in text.stdout and "20 x 512 x 512" in text.stdout


def test_errors_are_one_line_with_exit_2(tmp_path):
    assert_one_line_error(run("inspect", str(tmp_path / "missing")), str(tmp_path / "missing"),
                          "no such file or folder")
    assert_one_line_error(run("inspect", str(tmp_path)), "folder is empty")
    (tmp_path / "bad.nrrd").write_text("nope")
    assert_one_line_error(run("inspect", str(tmp_path / "bad.nrrd")), "bad.nrrd", "unreadable NRRD header")


def test_debug_shows_the_traceback(tmp_path):
    proc = run("--debug", "inspect", str(tmp_path / "missing"))
    assert proc.returncode != 0 and "Traceback" in proc.stderr


def test_tilt_warning_and_refusal(head_dir):
    proc = run("inspect", str(head_dir), "--json", "--slices", "0:3")
    assert proc.returncode == 0
    assert "warning:" in proc.stderr and "gantry tilt of 18.5 degrees" in proc.stderr
    assert_one_line_error(run("inspect", str(head_dir), "--tilt", "refuse"), "gantry tilt of 18.5")


def test_simulate_low_dose_cli(ct_small, tmp_path):
    src_dir = tmp_path / "in"
    src_dir.mkdir()
    src = src_dir / "ct.dcm"
    src.write_bytes(ct_small.read_bytes())
    out = tmp_path / "out" / "ld.nrrd"
    proc = run("simulate-low-dose", str(src), "--dose", "0.25", "--seed", "3", "--out", str(out),
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in src_dir.iterdir()) == ["ct.dcm"]  # nothing next to the input
    fd, ld = read_volume(src), read_volume(out)
    assert ld.shape == fd.shape and ld.origin == pytest.approx(fd.origin)
    assert ld.spacing == pytest.approx(fd.spacing)
    assert 0 < float(np.std(ld.array - fd.array)) < 200
    out2 = tmp_path / "ld2.nrrd"
    run("simulate-low-dose", str(src), "--seed", "3", "--out", str(out2))
    assert np.array_equal(read_volume(out2).array, ld.array)
    assert_one_line_error(run("simulate-low-dose", str(src), "--dose", "1.5", "--out", str(out2)),
                          "--dose", "1.5 is out of range")
    assert_one_line_error(run("simulate-low-dose", str(src), "--out", str(src)),
                          "refusing to write onto or inside the input")


def test_denoise_cli_with_custom_callable(ct_small, tmp_path):
    out = tmp_path / "den.nii.gz"
    proc = run("denoise", str(ct_small), "--denoiser", "custom_denoisers:identity", "--out", str(out),
               "--device", "cpu")
    assert proc.returncode == 0, proc.stderr
    np.testing.assert_allclose(read_volume(out).array, read_volume(ct_small).array, atol=1e-3)


def test_device_errors(ct_small, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert_one_line_error(
        run("denoise", str(ct_small), "--denoiser", "custom_denoisers:identity", "--out",
            str(tmp_path / "x.nrrd"), "--device", "cuda"),
        "no CUDA GPU is available",
    )
    assert not (tmp_path / "x.nrrd").exists()


def test_simulate_slices_keep_their_noise(abdomen_dir, tmp_path):
    """Noise is seeded per input slice index: slice 1 is the same whether run alone or in 0:2."""
    a, b = tmp_path / "a.nrrd", tmp_path / "b.nrrd"
    assert run("simulate-low-dose", str(abdomen_dir), "--slices", "0:2", "--out", str(a),
               "--i0", "3e6").returncode == 0
    assert run("simulate-low-dose", str(abdomen_dir), "--slices", "1", "--out", str(b),
               "--i0", "3e6").returncode == 0
    va, vb = read_volume(a), read_volume(b)
    assert np.array_equal(va.array[1], vb.array[0])
    assert vb.origin == pytest.approx(va.index_to_physical(1, 0, 0))
    # a memory limit under the two slices' batch (about 0.39 GiB) but above one slice's (0.33 GiB):
    # simulated one slice at a time, said so, with the same images
    c = tmp_path / "c.nrrd"
    proc = run("simulate-low-dose", str(abdomen_dir), "--slices", "0:2", "--out", str(c), "--i0", "3e6",
               "--max-memory", "0.36")
    assert proc.returncode == 0, proc.stderr
    assert "simulating 1 slice at a time (instead of 2)" in proc.stderr, proc.stderr
    assert np.array_equal(read_volume(c).array, va.array)
