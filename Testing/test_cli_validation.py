"""Options and inputs are checked before any work: a bad number names the option and its range,
non-finite images and outputs are refused, nothing is written, and what is written is valid JSON."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from CTInvariancesLib.cli.main import main
from CTInvariancesLib.invariance.pipeline import finite_json

SPATIAL_ENGINE = Path(__file__).resolve().parents[1] / "CTInvariances/Resources/Models/invariance/spatial"

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
    assert (
        main(
            [
                "denoise",
                str(path),
                "--denoiser",
                "custom_denoisers:nan_out",
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert "NaN or infinite" in err and "nan_out" in err
    assert not out.exists() and not list(tmp_path.glob("*.partial*"))


def test_written_json_is_valid_even_when_a_number_is_not_finite():
    obj = {"a": float("nan"), "b": [1.0, float("inf"), np.float32(2.5)], "c": {"d": -float("inf")}}
    text = json.dumps(finite_json(obj), allow_nan=False)
    assert json.loads(text) == {"a": None, "b": [1.0, None, 2.5], "c": {"d": None}}


def _nrrd(path, value=40.0, shape=(2, 32, 32)):
    """A noisy water disc in air."""
    import nrrd

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[: shape[1], : shape[2]]
    disc = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (0.45 * shape[1]) ** 2
    arr = np.where(disc, value, -1000.0)[None] + 15.0 * rng.standard_normal(shape)
    nrrd.write(str(path), arr.astype(np.float32))
    return path


def test_output_file_is_checked_first_and_never_silently_overwritten(tmp_path, capsys, monkeypatch):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    inp = _nrrd(tmp_path / "in.nrrd")
    out = tmp_path / "out.nrrd"
    out.write_bytes(b"earlier result")
    args = [
        "denoise",
        str(inp),
        "--denoiser",
        "custom_denoisers:identity",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == b"earlier result"
    assert main(args + ["--overwrite"]) == 0 and out.read_bytes() != b"earlier result"
    bad = tmp_path / "out.png"
    assert main(["denoise", str(inp), "--denoiser", "custom_denoisers:identity", "--out", str(bad)]) == 2
    assert "cannot write '.png'" in capsys.readouterr().err and not bad.exists()


def test_a_failed_sample_run_leaves_no_folder_and_overwrite_replaces_results(
    tmp_path, capsys, monkeypatch, ct_small
):
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    inp = ct_small
    out = tmp_path / "new" / "run"

    def run_args(denoiser: str) -> list[str]:
        return [
            "sample",
            str(inp),
            "--denoiser",
            denoiser,
            "--sampler",
            "noise",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--samples",
            "2",
            "--consistency",
            "0",
        ]

    assert main(run_args("custom_denoisers:nan_out")) == 2
    capsys.readouterr()
    assert not out.exists() and not (tmp_path / "new").exists()
    good = run_args("custom_denoisers:smoother")
    assert main(good) == 0
    first = json.loads((out / "run.json").read_text())["seed"]
    assert main(good + ["--seed", "5"]) == 2  # results there: refused, kept
    assert "--overwrite" in capsys.readouterr().err
    assert main(good + ["--seed", "5", "--overwrite"]) == 0
    assert first == 0 and json.loads((out / "run.json").read_text())["seed"] == 5
    json.loads((out / "metrics.json").read_text())  # valid JSON


@pytest.mark.parametrize("name", ["vol.nii.gz", "vol.nrrd"])
def test_a_truncated_compressed_file_is_refused(tmp_path, capsys, name):
    import SimpleITK as sitk

    arr = np.random.default_rng(0).normal(0, 50, (16, 32, 32)).astype(np.float32)
    path = tmp_path / name
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), useCompression=True)
    assert main(["inspect", str(path)]) == 0  # the whole file reads
    capsys.readouterr()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert main(["inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert name in err and "truncated or corrupt" in err


def test_sample_that_cannot_fit_in_memory_is_refused_before_any_work(tmp_path, capsys):
    from pydicom.data import get_testdata_file

    out = tmp_path / "s"
    rc = main(
        [
            "sample",
            get_testdata_file("explicit_VR-UN.dcm"),
            "--denoiser",
            "cnn10",
            "--samples",
            "4096",
            "--max-memory",
            "1",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "memory" in err and "--max-memory 1 GiB" in err, err
    assert not out.exists()


def _water_volume(path, slices: int = 3, size: int = 96):
    """A noisy water disc, ``slices`` slices of ``size`` x ``size`` at 1.5 mm, written as NRRD."""
    from CTInvariancesLib.io import CTVolume, write_volume

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    disc = np.where(np.hypot(yy - size / 2, xx - size / 2) < 0.42 * size, 40.0, -1000.0)
    arr = np.stack([disc + rng.normal(0, 15, disc.shape) for _ in range(slices)])
    write_volume(CTVolume(arr, spacing=(1.5, 1.5, 2.0)), path)
    return path


def test_training_volumes_are_simulated_within_the_memory_limit(tmp_path, capsys):
    """`train cvae|cinn --data V --max-memory M`: the simulator takes as many slices together as fit
    M (the same images as all at once), the data are refused with the numbers when not even one
    slice fits, and volumes of different slice sizes are refused by name, all before any training."""
    from CTInvariancesLib.errors import CTInvariancesError
    from CTInvariancesLib.lowdose import LowDoseSettings, simulation_memory_bytes
    from CTInvariancesLib.training.invariance import training_slices

    volume = _water_volume(tmp_path / "water.nrrd")
    whole = training_slices((str(volume),), 0.25, 2, 0)
    assert whole["ld"].shape == (6, 96, 96)
    # the volume and its two low-dose copies, plus the simulator for one slice's two noise images
    views = LowDoseSettings().geometry.n_views
    one_slice = 4.0 * 3 * 96 * 96 * (1 + 2) + simulation_memory_bytes((96, 96), views, 2)
    assert simulation_memory_bytes((96, 96), views, 4) > 1.05 * one_slice  # two slices would not fit
    limited = training_slices((str(volume),), 0.25, 2, 0, max_memory_gb=1.05 * one_slice / 2**30)
    assert np.array_equal(limited["ld"], whole["ld"])
    assert list(limited["names"]) == list(whole["names"])
    with pytest.raises(CTInvariancesError, match=r"needs about .* above --max-memory"):
        training_slices((str(volume),), 0.25, 2, 0, max_memory_gb=0.9 * one_slice / 2**30)
    # what training holds beside the slices afterwards (f(x) per denoiser) counts too
    with pytest.raises(CTInvariancesError, match=r"and their f\(x\)\) needs about"):
        training_slices((str(volume),), 0.25, 2, 0, max_memory_gb=1.05 * one_slice / 2**30, companions=150)
    smaller = _water_volume(tmp_path / "small.nrrd", slices=1, size=80)
    with pytest.raises(CTInvariancesError, match="80 x 80 pixels but those of .*water.nrrd are 96 x 96"):
        training_slices((str(volume), str(smaller)), 0.25, 1, 0)
    # the CLI passes --max-memory on: refused before any training, nothing written
    patch_wide = _water_volume(tmp_path / "patch-wide.nrrd", slices=2, size=128)
    for model in ("cvae", "cinn"):
        out = tmp_path / f"run-{model}"
        args = ["train", model, "--data", str(patch_wide), "--max-memory", "0.001", "--out", str(out),
                "--steps", "1", "--device", "cpu"]
        if model == "cinn":
            args += ["--denoiser", "cnn10", "--cvae", str(SPATIAL_ENGINE)]
        rc = main(args)
        err = capsys.readouterr().err
        assert rc != 0 and "above --max-memory 0.001 GiB" in err, err
        assert not out.exists() or not any(out.iterdir()), list(out.iterdir())


def test_training_data_that_cannot_give_patches_is_refused(tmp_path, capsys):
    """Slices narrower than the training patch are refused by name before any simulation (they
    ended in numpy's "high <= 0"), and slices that are all air end the patch search with an error
    instead of searching forever."""
    from CTInvariancesLib.errors import CTInvariancesError
    from CTInvariancesLib.training.data import PatchSampler

    volume = _water_volume(tmp_path / "water.nrrd", slices=1)
    out = tmp_path / "run"
    rc = main(["train", "cvae", "--data", str(volume), "--steps", "1", "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert rc != 0 and "water.nrrd: its slices are 96 x 96 pixels; training needs at least 128" in err, err
    assert not out.exists() or not any(out.iterdir())
    air = np.full((2, 32, 32), -1000.0, np.float32)
    with pytest.raises(CTInvariancesError, match="smaller than the training patch"):
        PatchSampler(air, air, 48)
    with pytest.raises(CTInvariancesError, match="holds anatomy"):
        PatchSampler(air, air, 16).batch(2)


def _probe_inputs(tmp_path):
    """A noisy water disc (2 slices of 96 x 96, 0.8 mm) and a label image on its grid: label 1 a
    6 mm blob in both slices, label 2 a 10 mm blob in slice 1."""
    import nrrd

    rng = np.random.default_rng(0)
    kk, jj, ii = np.mgrid[:2, :96, :96]
    ct = np.where((jj - 48) ** 2 + (ii - 48) ** 2 < 42**2, 40.0, -1000.0) + 15 * rng.standard_normal(jj.shape)
    header = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.0]),
        "space origin": np.zeros(3),
    }
    nrrd.write(str(tmp_path / "ct.nrrd"), ct.astype(np.float32), header, index_order="C")
    labels = np.zeros(ct.shape, np.int16)
    labels[(jj - 40) ** 2 + (ii - 48) ** 2 <= 14] = 1
    labels[(kk == 1) & ((jj - 62) ** 2 + (ii - 50) ** 2 <= 39)] = 2
    nrrd.write(str(tmp_path / "labels.nrrd"), labels, header, index_order="C")
    return tmp_path / "ct.nrrd", tmp_path / "labels.nrrd"


@pytest.mark.parametrize("denoiser,lo,hi", [("identity", -0.1, 0.1), ("constant", 0.9, 1.1)])
def test_probe_segmented_structures_one_answer_per_label(tmp_path, capsys, monkeypatch, denoiser, lo, hi):
    """Planted truth: an identity network sees every structure (nothing erased), a network that
    ignores its input sees none (all erased); each label is its own structure."""
    monkeypatch.syspath_prepend(str(__import__("pathlib").Path(__file__).parent))
    ct, labels = _probe_inputs(tmp_path)
    args = [
        "probe",
        str(ct),
        "--denoiser",
        f"custom_denoisers:{denoiser}",
        "--mask",
        str(labels),
        "--contrast",
        "40",
        "--consistency",
        "20",
        "--device",
        "cpu",
        "--json",
    ]
    assert main(args) == 0, capsys.readouterr().err
    out = json.loads(capsys.readouterr().out)
    assert [s["label"] for s in out["structures"]] == [1, 2]
    assert [len(s["slices"]) for s in out["structures"]] == [2, 1]
    for st in out["structures"]:
        assert lo <= st["erasure"] <= hi, st
    assert main(args[:-1] + ["--label", "2"]) == 0 and "label 2 (1 slices" in capsys.readouterr().out


def test_probe_mask_on_another_grid_or_without_the_label_is_refused(tmp_path, capsys):
    import nrrd

    ct, labels = _probe_inputs(tmp_path)
    data, header = nrrd.read(str(labels), index_order="C")
    nrrd.write(str(tmp_path / "other.nrrd"), data[:, :80], header, index_order="C")
    base = ["probe", str(ct), "--denoiser", "cnn10", "--device", "cpu"]
    assert main(base + ["--mask", str(tmp_path / "other.nrrd")]) == 2
    assert "other.nrrd" in capsys.readouterr().err
    assert main(base + ["--mask", str(labels), "--label", "7"]) == 2
    assert "label 7 is not in it" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # one or the other
        main(base + ["--mask", str(labels), "--at", "0,0,0"])
    assert exc.value.code == 2
    assert "not allowed with" in capsys.readouterr().err
