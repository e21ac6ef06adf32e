"""Options and inputs are checked before any work: a bad number names the option and its range,
non-finite images and outputs are refused, nothing is written, and what is written is valid JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from CTInvariancesLib.cli.main import main
from CTInvariancesLib.invariance.pipeline import finite_json

BAD_OPTIONS = [
    ("sample", "--temperature", "nan", "not a finite number"),
    ("sample", "--temperature", "0", "out of range"),
    ("sample", "--temperature", "inf", "not a finite number"),
    ("sample", "--samples", "0", "out of range"),
    ("sample", "--samples", "100000", "out of range"),
    ("sample", "--seed", str(2**70), "out of range"),
    ("sample", "--seed", "-1", "out of range"),
    ("sample", "--consistency", "-1", "out of range"),
    ("sample", "--batch-size", "0", "out of range"),
    ("sample", "--overlap", "-3", "out of range"),
    ("sample", "--samples", "4.5", "not a whole number"),
    ("denoise", "--batch-size", "-1", "out of range"),
    ("simulate-low-dose", "--views", "0", "out of range"),
    ("simulate-low-dose", "--i0", "0", "out of range"),
    ("simulate-low-dose", "--dose", "1.5", "out of range"),
    ("simulate-low-dose", "--dose", "nan", "not a finite number"),
    ("simulate-low-dose", "--electronic-noise", "-2", "out of range"),
]


@pytest.mark.parametrize("command,option,value,why", BAD_OPTIONS)
def test_bad_numbers_are_refused_before_any_work(tmp_path, capsys, command, option, value, why):
    out = tmp_path / ("out" if command == "sample" else "out.nrrd")
    args = [command, str(tmp_path / "input.nrrd"), "--out", str(out), option, value]
    if command in ("sample", "denoise"):
        args += ["--denoiser", "cnn10"]
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {option}" in err and why in err, err
    assert "Traceback" not in err
    assert not out.exists()


def test_an_image_with_nan_voxels_is_refused_with_the_file_named(tmp_path, capsys):
    import nrrd

    arr = np.zeros((4, 8, 8), np.float32)
    arr[1, 2, 3] = np.nan
    arr[2, 0, 0] = np.inf
    path = tmp_path / "bad.nrrd"
    nrrd.write(str(path), arr)
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert "bad.nrrd" in err and "2 voxels are NaN or infinite" in err


def test_a_denoiser_that_returns_nan_is_an_error_and_writes_nothing(tmp_path, capsys, monkeypatch):
    import nrrd

    here = __import__("pathlib").Path(__file__).parent
    monkeypatch.syspath_prepend(str(here))
    path = tmp_path / "in.nrrd"
    nrrd.write(str(path), np.full((2, 32, 32), 40.0, np.float32))
    out = tmp_path / "den.nrrd"
    assert main(["denoise", str(path), "--denoiser", "custom_denoisers:nan_out", "--out", str(out),
                 "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "nan_out" in err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_written_json_is_valid_even_when_a_number_is_not_finite():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), np.float32(2.5)], "c": {"d": -float("inf")}}
    text = json.dumps(finite_json(obj), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.0, None, 2.5], "c": {"d": None}}
