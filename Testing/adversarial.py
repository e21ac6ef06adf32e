"""The adversarial suite: bad and odd inputs and options, built here from pydicom's test files (and
../shared/data where a case needs a real scanner series), run through the command line in-process.

Each case says what a careful tool must do: ``error`` (exit 2, one ``error:`` line naming the file or
option, nothing written) or ``ok`` (exit 0, finite outputs whose geometry equals the input's). For
every case the inputs must be unchanged and no partial file or empty folder may remain.
``Testing/test_adversarial.py`` asserts this per case; ``scripts/adversarial_report.py`` counts the
outcomes (clean errors, wrong successes, tracebacks, leftovers) for the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import pickle
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom

HERE = Path(__file__).resolve().parent
DATA = Path(os.environ.get("CTINVARIANCES_DATA", HERE.parent.parent / "shared" / "data"))
OUT = "{out}"  # placeholder in argv for the output path


@dataclass
class Case:
    id: str
    build: Callable[[Path], list[str]]  # makes the inputs under a folder, returns argv
    expect: str  # "error" or "ok"
    names: str = ""  # what the error line must name (file name or option)
    out: str = "out.nrrd"  # output name (a file or a folder) substituted for {out}
    check: Callable[[Path, list[str], str], None] | None = None  # checks of a success (out, argv, stdout)
    needs_data: bool = False
    says: str = ""  # what the error line must also say (the problem, in words)
    signal: int | None = None  # run as a child process and send this signal once it works
    timeout_s: float = 600.0


@dataclass
class Outcome:
    kind: str  # clean_error | ok | wrong_success | traceback | unclear_error | false_refusal
    #            | leftover | input_modified | bad_output
    detail: str = ""
    stderr: str = ""
    problems: list[str] = field(default_factory=list)


# ---------------------------------------------------------------- input builders


def ct_small() -> Path:
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))


def dicom_slice(dest: Path, z: float = 0.0, series: str | None = None, source: Path | None = None, **changes):
    """A copy of CT_small (or ``source``) at height ``z`` with a new SOPInstanceUID, in series
    ``series`` (default: the source's), with ``changes`` applied (None deletes a tag)."""
    ds = pydicom.dcmread(source or ct_small())
    ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    if series:
        ds.SeriesInstanceUID = series
    for key, value in changes.items():
        if value is None:
            if key in ds:
                delattr(ds, key)
        else:
            setattr(ds, key, value)
    dest.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(dest)
    return dest


def dicom_series(folder: Path, n: int = 3, spacing: float = 2.5, bad: dict | None = None, **changes) -> Path:
    """``n`` slices of CT_small stacked along z; ``bad`` = {index: changes} alters single slices."""
    for k in range(n):
        extra = dict(changes, **(bad or {}).get(k, {}))
        dicom_slice(folder / f"s{k:03d}.dcm", z=k * spacing, **extra)
    return folder


def nrrd_image(path: Path, array=None, shape=(2, 32, 32), header: dict | None = None, **kw) -> Path:
    """A noisy water disc in air (float32, [k, j, i]) with a real geometry."""
    import nrrd

    if array is None:
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[: shape[1], : shape[2]]
        disc = (yy - shape[1] / 2) ** 2 + (xx - shape[2] / 2) ** 2 < (0.42 * shape[1]) ** 2
        array = np.where(disc, 40.0, -1000.0)[None] + 15.0 * rng.standard_normal(shape)
    array = np.asarray(array)
    h = {
        "space": "left-posterior-superior",
        "space directions": np.diag([0.8, 0.8, 2.0][: array.ndim]) if array.ndim <= 3 else None,
        "space origin": np.array([-12.5, -20.0, 30.0][: array.ndim]),
    }
    if array.ndim > 3:
        h = {}
    h.update(header or {})
    h = {k: v for k, v in h.items() if v is not None}
    nrrd.write(str(path), np.ascontiguousarray(array.astype(kw.get("dtype", np.float32)).T), h)
    return path


def mhd_image(
    folder: Path,
    name="vol.mhd",
    data_name="vol.raw",
    dims=(32, 32, 2),
    n_bytes=None,
    write_data=True,
    extra="",
) -> Path:
    if n_bytes is not None and n_bytes < 4 * np.prod(dims, dtype=np.float64):
        raw = np.full(n_bytes // 4, 40.0, np.float32).tobytes()
    else:
        arr = np.full(dims[::-1], 40.0, np.float32)
        arr[:, :4] = -1000.0
        raw = arr.tobytes()
    header = (
        "ObjectType = Image\nNDims = 3\n"
        f"DimSize = {' '.join(map(str, dims))}\nElementSpacing = 0.8 0.8 2\n"
        "Offset = 0 0 0\nTransformMatrix = 1 0 0 0 1 0 0 0 1\n"
        f"ElementType = MET_FLOAT\n{extra}ElementDataFile = {data_name}\n"
    )
    path = folder / name
    folder.mkdir(parents=True, exist_ok=True)
    path.write_text(header)
    if write_data:
        (folder / data_name).parent.mkdir(parents=True, exist_ok=True)
        (folder / data_name).write_bytes(raw)
    return path


def sitk_image(path: Path, compress=True, shape=(8, 32, 32)) -> Path:
    import SimpleITK as sitk

    arr = np.random.default_rng(0).normal(0, 50, shape).astype(np.float32)
    arr[:, :4] = -1000
    sitk.WriteImage(sitk.GetImageFromArray(arr), str(path), useCompression=compress)
    return path


def truncated(path: Path, fraction=0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


# ---------------------------------------------------------------- the cases


def _cmd(command: str, inp: Path | str, *extra: str, denoiser: str | None = None) -> list[str]:
    args = [command, str(inp)]
    if command != "inspect":
        args += ["--out", OUT]
    if denoiser:
        args += ["--denoiser", denoiser]
    if command in ("sample", "run", "denoise", "simulate-low-dose", "probe"):
        args += ["--device", "cpu"]
    if command in ("sample", "run"):
        args += ["--sampler", "noise", "--samples", "2", "--consistency", "0"]
        if command == "sample":
            args += ["--no-check"]
    return [*args, *extra]


def _fix(command: str, *extra: str, denoiser: str | None = "custom_denoisers:identity", inp="nrrd"):
    """A case on a good small input with the given extra options."""

    def build(d: Path) -> list[str]:
        path = nrrd_image(d / "in.nrrd") if inp == "nrrd" else dicom_series(d / "series")
        den = denoiser if command in ("sample", "run", "denoise", "probe") else None
        args = _cmd(command, path, *extra, denoiser=den)
        if command == "probe":
            args.remove("--out")
            args.remove(OUT)
        return args

    return build


def _with(command: str, make: Callable[[Path], Path], *extra: str, denoiser: str | None = None):
    def build(d: Path) -> list[str]:
        return _cmd(command, make(d), *extra, denoiser=denoiser)

    return build


def _option_cases() -> list[Case]:
    bad = [
        ("sample", ["--samples", "-3"], "--samples"),
        ("sample", ["--samples", "two"], "--samples"),
        ("sample", ["--temperature", "-1"], "--temperature"),
        ("sample", ["--temperature", "nan"], "--temperature"),
        ("sample", ["--temperature", "1e400"], "--temperature"),
        ("sample", ["--seed", "1.5"], "--seed"),
        ("sample", ["--seed", str(2**80)], "--seed"),
        ("sample", ["--batch-size", "0"], "--batch-size"),
        ("sample", ["--consistency", "-2"], "--consistency"),
        ("sample", ["--samples", "100000"], "--samples"),
        ("sample", ["--max-memory", "0"], "--max-memory"),
        ("sample", ["--max-memory", "nan"], "--max-memory"),
        ("sample", ["--slices", "5:2"], "--slices"),
        ("sample", ["--slices", "a:b"], "--slices"),
        ("sample", ["--device", "tpu"], "--device"),
        ("sample", ["--overlap", "-1"], "--overlap"),
        ("denoise", ["--batch-size", "-1"], "--batch-size"),
        ("denoise", ["--slices", "1000:1001"], "--slices"),
        ("denoise", ["--device", "cuda:7"], "--device"),
        ("simulate-low-dose", ["--dose", "0"], "--dose"),
        ("simulate-low-dose", ["--dose", "1"], "--dose"),
        ("simulate-low-dose", ["--dose", "-0.25"], "--dose"),
        ("simulate-low-dose", ["--i0", "-5"], "--i0"),
        ("simulate-low-dose", ["--i0", "inf"], "--i0"),
        ("simulate-low-dose", ["--views", "0"], "--views"),
        ("simulate-low-dose", ["--views", "1000000"], "--views"),
        ("simulate-low-dose", ["--electronic-noise", "nan"], "--electronic-noise"),
        ("simulate-low-dose", ["--seed", "-4"], "--seed"),
        ("run", ["--alpha", "0"], "--alpha"),
        ("run", ["--alpha", "1.5"], "--alpha"),
        ("run", ["--alpha", "nan"], "--alpha"),
        ("run", ["--probe", "5"], "--probe"),
        ("run", ["--probe", "0,20"], "--probe"),
        ("run", ["--probe", "5,nan"], "--probe"),
        ("run", ["--simulate-dose", "2"], "--simulate-dose"),
        ("run", ["--samples", "1"], "--samples"),
        ("probe", ["--at", "1,2"], "--at"),
        ("probe", ["--at", "nan,0,0"], "--at"),
        ("probe", ["--at", "0,0,9999"], "--at"),
        ("probe", ["--diameter", "0"], "--diameter"),
        ("probe", ["--contrast", "nan"], "--contrast"),
        ("inspect", ["--slices", "0:0"], "--slices"),
    ]
    cases = []
    for n, (command, extra, names) in enumerate(bad):
        if command == "probe" and names != "--at":
            extra = ["--at", "0,0,30", *extra]
        out = "out" if command in ("sample", "run") else "out.nrrd"
        cases.append(Case(f"option-{command}-{n:02d}", _fix(command, *extra), "error", names, out=out))
    return cases


def _input_cases() -> list[Case]:
    def inp(name, make, names, command="inspect", **kw):
        return Case(f"input-{name}", _with(command, make), "error", names, **kw)

    def nrrd_with(array=None, **header):
        return lambda d: nrrd_image(d / "in.nrrd", array=array, header=header or None)

    nan_arr = np.zeros((2, 8, 8), np.float32)
    nan_arr[0, 1, 1] = np.nan
    inf_arr = np.zeros((2, 8, 8), np.float32)
    inf_arr[1, 2, 2] = -np.inf
    cases = [
        inp("missing-path", lambda d: d / "nope.nrrd", "nope.nrrd"),
        inp("empty-folder", lambda d: (d / "empty").mkdir() or d / "empty", "empty"),
        inp("folder-of-text", lambda d: _textdir(d / "docs"), "docs"),
        inp("only-empty-subfolders", lambda d: _mkdirs(d / "cd" / "a" / "b").parents[1], "cd", says="empty"),
        inp("empty-file", lambda d: _write(d / "e.nrrd", b""), "e.nrrd"),
        inp("random-bytes-nrrd", lambda d: _write(d / "r.nrrd", os.urandom(4096)), "r.nrrd"),
        inp("random-bytes-dcm", lambda d: _write(d / "r.dcm", os.urandom(4096)), "r.dcm"),
        inp("text-with-image-suffix", lambda d: _write(d / "t.mha", b"hello\n"), "t.mha"),
        inp("unsupported-suffix", lambda d: _write(d / "a.png", b"\x89PNG\r\n"), "a.png"),
        inp(
            "truncated-nii-gz", lambda d: truncated(sitk_image(d / "v.nii.gz")), "v.nii.gz", says="truncated"
        ),
        inp("truncated-nrrd-gz", lambda d: truncated(sitk_image(d / "v.nrrd")), "v.nrrd", says="truncated"),
        inp(
            "truncated-raw-nrrd",
            lambda d: truncated(sitk_image(d / "u.nrrd", compress=False), 0.6),
            "u.nrrd",
            says="truncated",
        ),
        inp(
            "truncated-mha",
            lambda d: truncated(sitk_image(d / "u.mha", compress=False), 0.6),
            "u.mha",
            says="truncated",
        ),
        inp("nan-voxels", nrrd_with(nan_arr), "in.nrrd"),
        inp("inf-voxels", nrrd_with(inf_arr), "in.nrrd"),
        inp("4d-image", nrrd_with(np.zeros((2, 2, 8, 8), np.float32)), "in.nrrd"),
        inp("vector-image", lambda d: _vector_image(d / "rgb.mha"), "rgb.mha"),
        inp("zero-spacing", nrrd_with(**{"space directions": np.diag([0.8, 0.0, 2.0])}), "in.nrrd"),
        inp("nan-direction", nrrd_with(**{"space directions": np.diag([0.8, np.nan, 2.0])}), "in.nrrd"),
        inp(
            "collinear-directions",
            nrrd_with(**{"space directions": np.array([[1, 0, 0], [1, 0, 0], [0, 0, 2.0]])}),
            "in.nrrd",
        ),
        inp("nan-origin", nrrd_with(**{"space origin": np.array([0.0, np.nan, 0.0])}), "in.nrrd"),
        inp("values-not-hu", nrrd_with(np.full((2, 8, 8), 1e9, np.float32)), "in.nrrd"),
        inp("mhd-missing-data", lambda d: mhd_image(d, write_data=False), "vol.mhd"),
        inp(
            "mhd-data-outside-folder", lambda d: mhd_image(d / "hdr", data_name="../elsewhere.raw"), "vol.mhd"
        ),
        inp(
            "mhd-absolute-data-path", lambda d: mhd_image(d / "hdr2", data_name=str(d / "abs.raw")), "vol.mhd"
        ),
        inp("nhdr-gzip-data-outside-folder", lambda d: _nhdr_outside(d), "vol.nhdr", says="outside"),
        inp("mhd-short-data", lambda d: mhd_image(d, n_bytes=1000), "vol.mhd", says="truncated"),
        inp("mhd-huge-dims", lambda d: mhd_image(d, dims=(100000, 100000, 100000), n_bytes=4096), "vol.mhd"),
        inp("dicom-no-pixels", lambda d: dicom_slice(d / "np.dcm", PixelData=None), "np.dcm"),
        inp("dicom-mr", lambda d: dicom_slice(d / "mr.dcm", Modality="MR"), "mr.dcm"),
        inp(
            "dicom-nan-position",
            lambda d: dicom_slice(d / "p.dcm", ImagePositionPatient=["nan", "0", "0"]),
            "p.dcm",
        ),
        inp(
            "dicom-zero-orientation",
            lambda d: dicom_slice(d / "o.dcm", ImageOrientationPatient=[0] * 6),
            "o.dcm",
        ),
        inp(
            "dicom-skewed-orientation",
            lambda d: dicom_slice(d / "k.dcm", ImageOrientationPatient=[1, 0, 0, 0.5, 0.866, 0]),
            "k.dcm",
            says="orthonormal",
        ),
        inp(
            "dicom-unnormalised-orientation",
            lambda d: dicom_slice(d / "u.dcm", ImageOrientationPatient=[2, 0, 0, 0, 2, 0]),
            "u.dcm",
            says="orthonormal",
        ),
        inp("dicom-zero-pixel-spacing", lambda d: dicom_slice(d / "z.dcm", PixelSpacing=[0, 0]), "z.dcm"),
        inp(
            "dicom-negative-pixel-spacing",
            lambda d: dicom_slice(d / "n.dcm", PixelSpacing=[-0.5, 0.5]),
            "n.dcm",
        ),
        inp("dicom-rescale-slope-zero", lambda d: dicom_slice(d / "s.dcm", RescaleSlope=0), "s.dcm"),
        inp("dicom-rescale-slope-nan", lambda d: dicom_slice(d / "s.dcm", RescaleSlope="nan"), "s.dcm"),
        inp(
            "dicom-bits-8-with-16-bit-data",
            lambda d: dicom_slice(d / "b.dcm", BitsAllocated=8, BitsStored=8, HighBit=7),
            "b.dcm",
        ),
        inp("series-duplicate-positions", lambda d: dicom_series(d / "dup", spacing=0.0), "dup"),
        inp("series-empty-member", lambda d: _emptied(dicom_series(d / "se"), "s001.dcm"), "s001.dcm"),
        inp("series-garbage-member", lambda d: _garbled(dicom_series(d / "sg"), "s001.dcm"), "s001.dcm"),
        inp(
            "series-pixel-spacing-differs",
            lambda d: dicom_series(d / "ps", bad={1: {"PixelSpacing": [0.4, 0.4]}}),
            "s001.dcm",
        ),
        inp("series-bits-differ", lambda d: dicom_series(d / "bd", bad={2: {"BitsStored": 12}}), "s002.dcm"),
        inp("series-size-differs", lambda d: _resized(dicom_series(d / "sz"), "s001.dcm"), "s001.dcm"),
        inp(
            "series-orientation-differs",
            lambda d: dicom_series(d / "or", bad={1: {"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}}),
            "s001.dcm",
        ),
        inp("dicom-multiframe", lambda d: _multiframe(d / "mf.dcm"), "mf.dcm"),
        inp("dicom-rtstruct", lambda d: _pydicom_copy(d, "rtstruct.dcm"), "rtstruct.dcm"),
        inp("dicom-colour", lambda d: _colour(d / "rgb.dcm"), "rgb.dcm"),
        inp("two-series-unpicked", lambda d: _two_series(d / "two"), "two"),
        Case(
            "input-series-for-a-file",
            lambda d: ["inspect", str(nrrd_image(d / "in.nrrd")), "--series", "1.2.3"],
            "error",
            "--series",
            out="",
        ),
        Case(
            "input-two-series-wrong-uid",
            lambda d: ["inspect", str(_two_series(d / "two")), "--series", "9.9"],
            "error",
            "9.9",
        ),
        Case(
            "input-nan-image-to-denoise",
            _with("denoise", nrrd_with(nan_arr), denoiser="custom_denoisers:identity"),
            "error",
            "in.nrrd",
        ),
        Case(
            "input-nan-image-to-sample",
            _with("sample", nrrd_with(nan_arr), denoiser="custom_denoisers:identity"),
            "error",
            "in.nrrd",
            out="out",
        ),
        Case(
            "input-truncated-to-simulate",
            _with("simulate-low-dose", lambda d: truncated(sitk_image(d / "v.nii.gz"))),
            "error",
            "v.nii.gz",
        ),
    ]
    return cases


def _denoiser_cases() -> list[Case]:
    def den(name, spec_maker, names, command="denoise", **kw):
        def build(d: Path) -> list[str]:
            spec = spec_maker(d)
            return _cmd(command, nrrd_image(d / "in.nrrd"), denoiser=str(spec))

        return Case(
            f"denoiser-{name}", build, "error", names, out="out" if command == "sample" else "out.nrrd", **kw
        )

    return [
        Case("denoiser-wrong-sha256", _wrong_sha256, "error", "sha-256"),
        den("unknown-name", lambda d: "cnn11", "cnn11"),
        den("missing-file", lambda d: d / "nope.pt", "nope.pt"),
        den("malicious-pickle", _malicious_pickle, "evil.pt", check=None),
        den(
            "malicious-pickle-safetensors-name",
            lambda d: _malicious_pickle(d, "evil.safetensors"),
            "evil.safetensors",
        ),
        den("garbage-pt", lambda d: _write(d / "g.pt", os.urandom(2048)), "g.pt"),
        den("whole-pickled-model", _whole_model, "whole.pt", says="state_dict"),
        den("garbage-pt2", lambda d: _write(d / "g.pt2", os.urandom(2048)), "g.pt2"),
        den("zip-not-torchscript", lambda d: _zipfile(d / "z.pt"), "z.pt"),
        den("no-such-module", lambda d: "no_such_module_xyz:make", "no_such_module_xyz"),
        den("no-such-callable", lambda d: "custom_denoisers:nothing_here", "nothing_here"),
        den("network-raises", lambda d: "custom_denoisers:raises", "custom_denoisers:raises"),
        den("network-three-channels", lambda d: "custom_denoisers:three_channels", "three_channels"),
        den("network-half-size", lambda d: "custom_denoisers:half_size", "half_size"),
        den("network-nan", lambda d: "custom_denoisers:nan_out", "nan_out"),
        den("network-nan-in-sample", lambda d: "custom_denoisers:nan_out", "nan_out", command="sample"),
        den("network-raises-in-sample", lambda d: "custom_denoisers:raises", "raises", command="sample"),
        den("network-memory-error", lambda d: "custom_denoisers:memory_error", "memory"),
        den(
            "network-memory-error-in-sample",
            lambda d: "custom_denoisers:memory_error",
            "memory",
            command="sample",
        ),
    ]


def _wrong_sha256(d: Path) -> list[str]:
    return _cmd("denoise", nrrd_image(d / "in.nrrd"), "--sha256", "0" * 64, denoiser="cnn10")


def _more_error_cases() -> list[Case]:
    head = DATA / "ct" / "head-ge-28"
    return [
        Case(
            "engine-cinn-for-a-custom-denoiser",
            _fix("sample", "--sampler", "cinn"),
            "error",
            "cinn",
            out="out",
        ),
        Case(
            "engine-missing-cvae",
            _fix("sample", "--sampler", "prior", "--cvae", "nope.safetensors"),
            "error",
            "nope.safetensors",
            out="out",
        ),
        Case(
            "engine-not-differentiable",
            _fix(
                "sample", "--consistency", "2", "--no-check", denoiser="custom_denoisers:not_differentiable"
            ),
            "error",
            "not_differentiable",
            out="out",
        ),
        Case(
            "denoiser-returns-a-tuple",
            _fix("denoise", denoiser="custom_denoisers:returns_tuple"),
            "error",
            "returns_tuple",
        ),
        Case(
            "run-noiseless-image",
            lambda d: _cmd(
                "run",
                nrrd_image(d / "flat.nrrd", array=np.full((1, 64, 64), 40.0)),
                denoiser="custom_denoisers:smoother",
            ),
            "error",
            "flat.nrrd",
            out="out",
            says="slice 0",
        ),
        Case(
            "models-install-an-image",
            lambda d: ["models", "install", str(nrrd_image(d / "in.nrrd"))],
            "error",
            "in.nrrd",
            out="",
            says="install takes",
        ),
        Case(
            "evaluate-json-into-a-folder",
            lambda d: [
                "evaluate",
                "--denoiser",
                "cnn10",
                "--json",
                str(_mkdirs(d / "results")),
                "--device",
                "cpu",
            ],
            "error",
            "--json",
            out="",
        ),
        Case(
            "evaluate-json-exists",
            lambda d: [
                "evaluate",
                "--denoiser",
                "cnn10",
                "--json",
                str(_write(d / "old.json", b"{}")),
                "--device",
                "cpu",
            ],
            "error",
            "--overwrite",
            out="",
        ),
        Case(
            "probe-an-organ-atlas",
            lambda d: _atlas_probe(d),
            "error",
            "atlas.nrrd",
            out="",
            says="--label",
        ),
        Case("run-dicom-seg-for-nrrd", _fix("run", "--dicom-seg"), "error", "--dicom-seg", out="out"),
        Case(
            "memory-sample-too-big",
            _fix("sample", "--max-memory", "0.00001"),
            "error",
            "--max-memory",
            out="out",
        ),
        Case(
            "memory-simulate-too-big",
            _fix("simulate-low-dose", "--max-memory", "0.00001"),
            "error",
            "--max-memory",
        ),
        Case(
            "memory-run-too-big", _fix("run", "--max-memory", "0.00001"), "error", "--max-memory", out="out"
        ),
        Case(
            "tilt-refused",
            lambda d: ["inspect", str(head), "--tilt", "refuse"],
            "error",
            "head-ge-28",
            out="",
            needs_data=True,
        ),
    ]


def _output_cases() -> list[Case]:
    def onto_input(d: Path) -> list[str]:
        p = nrrd_image(d / "in.nrrd")
        return ["denoise", str(p), "--denoiser", "custom_denoisers:identity", "--out", str(p), "--overwrite"]

    def inside_input(d: Path) -> list[str]:
        folder = dicom_series(d / "series")
        return [
            "sample",
            str(folder),
            "--denoiser",
            "custom_denoisers:identity",
            "--out",
            str(folder / "run"),
            "--sampler",
            "noise",
            "--samples",
            "2",
            "--consistency",
            "0",
            "--device",
            "cpu",
        ]

    def parent_is_file(d: Path) -> list[str]:
        _write(d / "afile", b"x")
        args = _cmd("denoise", nrrd_image(d / "in.nrrd"), denoiser="custom_denoisers:identity")
        return [a.replace(OUT, str(d / "afile" / "o.nrrd")) for a in args]

    def existing(command, out_name, content=b"earlier"):
        def build(d: Path) -> list[str]:
            target = d / out_name
            if out_name.endswith(".nrrd"):
                target.write_bytes(content)
            else:
                target.mkdir()
                (target / "samples.seq.nrrd").write_bytes(content)
            den = "custom_denoisers:identity" if command != "simulate-low-dose" else None
            return [
                a.replace(OUT, str(target)) for a in _cmd(command, nrrd_image(d / "in.nrrd"), denoiser=den)
            ]

        return build

    def out_is_folder(d: Path) -> list[str]:
        (d / "folder.nrrd").mkdir()
        return [
            a.replace(OUT, str(d / "folder.nrrd"))
            for a in _cmd("denoise", nrrd_image(d / "in.nrrd"), denoiser="custom_denoisers:identity")
        ]

    def sample_out_is_file(d: Path) -> list[str]:
        _write(d / "run", b"a file")
        return [
            a.replace(OUT, str(d / "run"))
            for a in _cmd("sample", nrrd_image(d / "in.nrrd"), denoiser="custom_denoisers:identity")
        ]

    return [
        Case("output-onto-input", onto_input, "error", "in.nrrd"),
        Case("output-inside-input-folder", inside_input, "error", "run"),
        Case("output-suffix-png", _fix("denoise"), "error", "out.png", out="out.png"),
        Case("output-suffix-none", _fix("simulate-low-dose"), "error", "out", out="out"),
        Case("output-parent-is-a-file", parent_is_file, "error", "afile"),
        Case("output-exists-denoise", existing("denoise", "old.nrrd"), "error", "--overwrite"),
        Case("output-exists-simulate", existing("simulate-low-dose", "old.nrrd"), "error", "--overwrite"),
        Case("output-exists-sample", existing("sample", "oldrun"), "error", "--overwrite"),
        Case("output-exists-run", existing("run", "oldrun"), "error", "--overwrite"),
        Case("output-is-a-folder", out_is_folder, "error", "folder.nrrd"),
        Case("output-sample-onto-a-file", sample_out_is_file, "error", "run"),
    ]


# ---------------------------------------------------------------- successes that must be right


def _same_geometry(out_path: Path, inp: list[str]) -> None:
    from CTInvariancesLib.io import read_volume

    src = read_volume(inp[0], series_uid=inp[1], tilt=inp[2])
    if inp[3]:
        from CTInvariancesLib.io import parse_slices

        src = src.select_slices(parse_slices(inp[3]))
    got = read_volume(out_path)
    problems = []
    if got.shape != src.shape:
        problems.append(f"shape {got.shape} != input {src.shape}")
    for what in ("spacing", "origin", "direction"):
        if not np.allclose(getattr(got, what), getattr(src, what), atol=1e-3):
            problems.append(f"{what} {getattr(got, what)} != input {getattr(src, what)}")
    if not np.isfinite(got.array).all():
        problems.append("non-finite voxels")
    if problems:
        raise AssertionError(f"{out_path.name}: " + "; ".join(problems))


def _input_spec(argv: list[str]) -> list:
    def opt(name, default=None):
        return argv[argv.index(name) + 1] if name in argv else default

    return [argv[1], opt("--series"), opt("--tilt", "resample"), opt("--slices")]


def _image_out(out: Path, argv: list[str], stdout: str = "") -> None:
    _same_geometry(out, _input_spec(argv))


def _sample_out(out: Path, argv: list[str], stdout: str = "") -> None:
    for name in ("denoised.nrrd", "std_map.nrrd"):
        _same_geometry(out / name, _input_spec(argv))
    _strict_json(out / "metrics.json")
    run = _strict_json(out / "run.json")
    assert len(run.get("input", {}).get("sha256", "")) == 64 or len(str(run.get("input_sha256", ""))) == 64, (
        "run.json records no SHA-256 of the input"
    )


def _run_out(out: Path, argv: list[str], stdout: str = "") -> None:
    _strict_json(out / "run.json")
    folders = [p for p in out.iterdir() if p.is_dir()]
    assert folders, "no per-denoiser folder"
    for f in folders:
        _same_geometry(f / "denoised.nrrd", _input_spec(argv))
        _strict_json(f / "metrics.json")


def _strict_json(path: Path):
    def no_constants(name):
        raise ValueError(f"{path.name} holds {name}: not valid JSON")

    return json.loads(path.read_text(), parse_constant=no_constants)


def _padding_kept(out: Path, argv: list[str], stdout: str = "") -> None:
    from CTInvariancesLib.io import parse_slices, read_volume

    _image_out(out, argv)
    _, _, tilt, slices = _input_spec(argv)
    src = read_volume(argv[1], tilt=tilt)
    src = src.select_slices(parse_slices(slices)) if slices else src
    got = read_volume(out)
    mask = src.padding_mask()
    assert mask is not None and mask.sum() > 1000, "the input marks padding (PixelPaddingValue, -3024 HU)"
    assert np.array_equal(got.array[mask], src.array[mask]), "padding voxels were changed"
    assert not np.array_equal(got.array[~mask], src.array[~mask]), "the image itself was not processed"


def _padded_nrrd(path: Path) -> Path:
    """An image file with -3024 HU outside the reconstructed circle (as scanners export it)."""
    rng = np.random.default_rng(0)
    _, jj, ii = np.mgrid[:2, :64, :64]
    r2 = (jj - 32) ** 2 + (ii - 32) ** 2
    arr = np.where(r2 < 26**2, 40.0, -1000.0) + 15.0 * rng.standard_normal(jj.shape)
    arr[r2 > 30**2] = -3024.0
    return nrrd_image(path, array=arr)


def _inspect_json(out: Path, argv: list[str], stdout: str = "") -> None:
    info = json.loads(stdout, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert all(math.isfinite(v) for v in info["spacing_mm"] + info["origin_lps_mm"] + info["direction"])


def _probe_json(out: Path, argv: list[str], stdout: str = "") -> None:
    res = json.loads(
        stdout.strip().splitlines()[-1], parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c))
    )
    assert -1.0 <= res["erasure"] <= 2.0 and math.isfinite(res["transfer"]), res


def _samples_keep_padding(out: Path, argv: list[str], stdout: str = "") -> None:
    from CTInvariancesLib.io import read_volume
    from CTInvariancesLib.io.streaming import read_sequence

    _sample_out(out, argv)
    src = read_volume(argv[1])
    mask = src.padding_mask()
    assert mask is not None and mask.sum() > 100, "the input has padding"
    samples = read_sequence(out / "samples.seq.nrrd")  # [item, k, j, i]
    assert np.array_equal(samples[:, mask], np.broadcast_to(src.array[mask], samples[:, mask].shape))
    assert not np.array_equal(samples[0][~mask], src.array[~mask]), "the image itself was not sampled"


def _padded_series(folder: Path) -> Path:
    """CT_small's pixels outside a circle set to its PixelPaddingValue (-2000 stored, -3024 HU)."""
    dicom_series(folder, n=2)
    for f in sorted(folder.iterdir()):
        ds = pydicom.dcmread(f)
        arr = ds.pixel_array.copy()
        yy, xx = np.mgrid[: arr.shape[0], : arr.shape[1]]
        arr[(yy - 64) ** 2 + (xx - 64) ** 2 > 60**2] = int(ds.PixelPaddingValue)
        ds.PixelData = arr.astype(arr.dtype).tobytes()
        ds.save_as(f)
    return folder


def _success_cases() -> list[Case]:
    head = DATA / "ct" / "head-ge-28"
    return [
        Case(
            "ok-denoise-creates-parent-folders",
            _fix("denoise"),
            "ok",
            out="new/sub/out.nrrd",
            check=_image_out,
        ),
        Case(
            "ok-denoise-slices-with-step",
            _fix("denoise", "--slices", "0:3:2", inp="dicom"),
            "ok",
            check=_image_out,
        ),
        Case(
            "ok-probe-json",
            _fix("probe", "--at", "0,-6,32", "--consistency", "2", "--json", denoiser="cnn10"),
            "ok",
            out="",
            check=_probe_json,
        ),
        Case(
            "ok-sample-keeps-padding",
            lambda d: _cmd(
                "sample",
                _padded_series(d / "pad"),
                "--input-convention",
                "hu",
                denoiser="custom_denoisers:refuses_padding",
            ),
            "ok",
            out="run",
            check=_samples_keep_padding,
        ),
        Case("ok-denoise-nrrd", _fix("denoise"), "ok", check=_image_out),
        Case(
            "ok-denoise-2d-nrrd",
            _with(
                "denoise",
                lambda d: nrrd_image(d / "s.nrrd", shape=(1, 32, 32)),
                denoiser="custom_denoisers:smoother",
            ),
            "ok",
            check=_image_out,
        ),
        Case(
            "ok-denoise-dicom-series-to-nii",
            _fix("denoise", inp="dicom"),
            "ok",
            out="out.nii.gz",
            check=_image_out,
        ),
        Case(
            "ok-denoise-flipped-directions",
            _with(
                "denoise",
                lambda d: nrrd_image(d / "f.nrrd", header={"space directions": np.diag([-0.8, 0.8, -2.0])}),
                denoiser="cnn10",
            ),
            "ok",
            check=_image_out,
        ),
        Case(
            "ok-simulate-dicom", _fix("simulate-low-dose", inp="dicom"), "ok", out="low.mha", check=_image_out
        ),
        Case(
            "ok-simulate-overwrite",
            lambda d: _cmd("simulate-low-dose", nrrd_image(d / "in.nrrd"), "--overwrite"),
            "ok",
            check=_image_out,
        ),
        Case("ok-sample-dicom", _fix("sample", inp="dicom"), "ok", out="run", check=_sample_out),
        Case(
            "ok-sample-slices",
            _fix("sample", "--slices", "1:3", inp="dicom"),
            "ok",
            out="run",
            check=_sample_out,
        ),
        Case(
            "ok-run-dicom",
            _fix("run", denoiser="custom_denoisers:smoother", inp="dicom"),
            "ok",
            out="run",
            check=_run_out,
        ),
        Case(
            "ok-series-beside-its-dicomdir",
            lambda d: ["inspect", str(_with_dicomdir(dicom_series(d / "cd"))), "--json"],
            "ok",
            out="",
            check=_inspect_json,
        ),
        Case(
            "ok-export-with-subfolders",
            lambda d: [
                "inspect",
                str(dicom_series(d / "export" / "patient" / "study" / "series").parents[2]),
                "--json",
            ],
            "ok",
            out="",
            check=_inspect_json,
        ),
        Case(
            "ok-inspect-json",
            lambda d: ["inspect", str(dicom_series(d / "s")), "--json"],
            "ok",
            out="",
            check=_inspect_json,
        ),
        Case(
            "ok-padding-denoise",
            lambda d: _cmd(
                "denoise",
                head,
                "--slices",
                "10:11",
                "--input-convention",
                "hu",
                denoiser="custom_denoisers:refuses_padding",
            ),
            "ok",
            check=_padding_kept,
            needs_data=True,
        ),
        Case(
            "ok-padding-in-an-image-file",
            lambda d: _cmd(
                "denoise",
                _padded_nrrd(d / "pad.nrrd"),
                "--input-convention",
                "hu",
                denoiser="custom_denoisers:refuses_padding",
            ),
            "ok",
            check=_padding_kept,
        ),
        Case(
            "ok-padding-simulate",
            lambda d: _cmd("simulate-low-dose", head, "--slices", "10:11"),
            "ok",
            check=_padding_kept,
            needs_data=True,
        ),
        Case(
            "ok-tilt-keep-irregular",
            lambda d: _cmd("denoise", head, "--tilt", "keep", "--slices", "0:3", denoiser="cnn10"),
            "ok",
            check=_image_out,
            needs_data=True,
        ),
    ]


def _signal_cases() -> list[Case]:
    import signal

    def slow_sample(d: Path) -> list[str]:
        return _cmd("sample", dicom_series(d / "series", n=40), denoiser="custom_denoisers:slow_identity")

    def slow_denoise(d: Path) -> list[str]:
        return _cmd("denoise", dicom_series(d / "series", n=40), denoiser="custom_denoisers:slow_identity")

    return [
        Case(
            "signal-sigterm-sample",
            slow_sample,
            "interrupted",
            "interrupted",
            out="run",
            signal=signal.SIGTERM,
        ),
        Case(
            "signal-sigint-sample", slow_sample, "interrupted", "interrupted", out="run", signal=signal.SIGINT
        ),
        Case("signal-sigterm-denoise", slow_denoise, "interrupted", "interrupted", signal=signal.SIGTERM),
        Case(
            "signal-sigint-simulate",
            lambda d: _cmd("simulate-low-dose", dicom_series(d / "series", n=40)),
            "interrupted",
            "interrupted",
            signal=signal.SIGINT,
        ),
    ]


def _sigkill_cases() -> list[Case]:
    """Killed outright (SIGKILL, the out-of-memory killer): nothing can clean up, so the next run of
    the same command must clear what was left and succeed."""
    import signal

    def slow(command: str):
        def build(d: Path) -> list[str]:
            den = "custom_denoisers:slow_identity" if command != "simulate-low-dose" else None
            # denoise reports progress per batch (4 slices by default): with one batch for all four,
            # its only progress line came as it finished, and the kill raced the written output
            extra = ("--batch-size", "1") if command == "denoise" else ()
            return _cmd(command, dicom_series(d / "series", n=4), *extra, denoiser=den)

        return build

    runs = (("sample", "run", _sample_out), ("run", "run", _run_out), ("denoise", "out.nrrd", _image_out))
    return [
        Case(f"signal-sigkill-then-rerun-{c}", slow(c), "ok", out=out, signal=signal.SIGKILL, check=check)
        for c, out, check in runs
    ]


def all_cases() -> list[Case]:
    return (
        _option_cases()
        + _input_cases()
        + _denoiser_cases()
        + _more_error_cases()
        + _output_cases()
        + _success_cases()
        + _signal_cases()
        + _sigkill_cases()
    )


# ---------------------------------------------------------------- small builders


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _atlas_probe(d: Path) -> list[str]:
    """`probe --mask` with a label image of 120 structures (as an organ segmentation gives)."""
    ct = nrrd_image(d / "ct.nrrd", shape=(2, 64, 64))
    labels = np.zeros((2, 64, 64), np.int16)
    labels[:, 2:62, 2:62] = np.arange(1, 121).repeat(30)[: 60 * 60].reshape(60, 60)
    atlas = nrrd_image(d / "atlas.nrrd", array=labels, dtype=np.int16)
    return ["probe", str(ct), "--denoiser", "cnn10", "--mask", str(atlas), "--device", "cpu"]


def _mkdirs(folder: Path) -> Path:
    folder.mkdir(parents=True)
    return folder


def _with_dicomdir(folder: Path) -> Path:
    """A CD's index file (DICOMDIR) beside the series' files."""
    from pydicom.data import get_testdata_file

    shutil.copy(get_testdata_file("DICOMDIR"), folder / "DICOMDIR")
    return folder


def _textdir(folder: Path) -> Path:
    _write(folder / "readme.txt", b"not a scan\n")
    _write(folder / "notes.md", b"# notes\n")
    return folder


def _nhdr_outside(d: Path) -> Path:
    """A detached NRRD header whose gzip data file lies one folder up."""
    import gzip

    (d / "hdr").mkdir(parents=True, exist_ok=True)
    (d / "outside.raw.gz").write_bytes(gzip.compress(np.zeros(128, np.float32).tobytes()))
    path = d / "hdr" / "vol.nhdr"
    path.write_text(
        "NRRD0004\ntype: float\ndimension: 3\nsizes: 8 8 2\nencoding: gzip\n"
        "endian: little\ndata file: ../outside.raw.gz\n\n"
    )
    return path


def _vector_image(path: Path) -> Path:
    import SimpleITK as sitk

    img = sitk.GetImageFromArray(np.zeros((4, 16, 16, 3), np.float32), isVector=True)
    sitk.WriteImage(img, str(path))
    return path


def _emptied(folder: Path, name: str) -> Path:
    (folder / name).write_bytes(b"")
    return folder


def _garbled(folder: Path, name: str) -> Path:
    """A member whose header is cut short and followed by noise: a broken copy or download."""
    data = (folder / name).read_bytes()
    (folder / name).write_bytes(data[:700] + os.urandom(300))
    return folder


def _resized(folder: Path, name: str) -> Path:
    ds = pydicom.dcmread(folder / name)
    arr = ds.pixel_array[:64, :64].copy()
    ds.Rows, ds.Columns = 64, 64
    ds.PixelData = arr.tobytes()
    ds.save_as(folder / name)
    return folder


def _multiframe(path: Path) -> Path:
    ds = pydicom.dcmread(ct_small())
    ds.NumberOfFrames = 2
    ds.PixelData = ds.PixelData * 2
    ds.save_as(path)
    return path


def _pydicom_copy(d: Path, name: str) -> Path:
    from pydicom.data import get_testdata_file

    return Path(shutil.copy(get_testdata_file(name), d / name))


def _colour(path: Path) -> Path:
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("SC_rgb_rle.dcm"))
    ds.Modality = "CT"
    ds.save_as(path)
    return path


def _two_series(folder: Path) -> Path:
    dicom_series(folder, n=2, series="1.2.3.1")
    for k in range(2):
        dicom_slice(folder / f"b{k}.dcm", z=k * 2.5, series="1.2.3.2")
    return folder


class _Evil:
    def __reduce__(self):
        return (os.system, (f"touch {EVIL_MARKER}",))


EVIL_MARKER = "/tmp/ctinvariances-adversarial-unpickled"


def _malicious_pickle(d: Path, name: str = "evil.pt") -> Path:
    path = d / name
    path.write_bytes(pickle.dumps({"model_state_dict": _Evil()}))
    return path


def _whole_model(d: Path) -> Path:
    """torch.save(model): a whole pickled network (its class is code), not weights."""
    import torch

    from CTInvariancesLib.denoisers import build_denoiser

    torch.save(build_denoiser("cnn10"), d / "whole.pt")
    return d / "whole.pt"


def _zipfile(path: Path) -> Path:
    import zipfile

    with zipfile.ZipFile(path, "w") as z:
        z.writestr("data.txt", "not a model")
    return path


# ---------------------------------------------------------------- running a case


def _snapshot(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def _external_inputs(argv: list[str], root: Path) -> dict[str, tuple]:
    """Size and modification time of the files of inputs outside ``root`` (the shared data)."""
    out = {}
    for a in argv:
        p = Path(a)
        if a.startswith("-") or not p.exists() or root in p.resolve().parents:
            continue
        for f in [p] if p.is_file() else sorted(p.rglob("*")):
            if f.is_file():
                st = f.stat()
                out[str(f)] = (st.st_size, st.st_mtime_ns)
    return out


def _in_process(argv: list[str]) -> tuple[int | None, str, str, BaseException | None]:
    from CTInvariancesLib.cli.main import main

    err, out = io.StringIO(), io.StringIO()
    rc, exc = None, None
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            rc = main(argv)
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 2
        except BaseException as e:  # noqa: BLE001 - what escapes is the finding
            exc = e
    return rc, out.getvalue(), err.getvalue(), exc


def _default_sigint() -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _child(argv: list[str], sig: int, timeout_s: float) -> tuple[int | None, str, str, BaseException | None]:
    """The command in its own process, sent ``sig`` once it reports its first progress line."""
    env = dict(os.environ, CTINVARIANCES_PROGRESS="lines", PYTHONPATH=os.pathsep.join([str(HERE), *sys.path]))
    proc = subprocess.Popen(
        [sys.executable, "-m", "CTInvariancesLib.cli.main", *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        # a suite started in the background (nohup ... &) ignores SIGINT, and a child would inherit
        # that: give it the default disposition, as a terminal's command has
        preexec_fn=_default_sigint if os.name == "posix" else None,
    )
    lines = []
    t0 = time.monotonic()
    for line in proc.stderr:
        lines.append(line)
        started = line.startswith("progress: ") and not line.startswith("progress: 0/")
        if started or time.monotonic() - t0 > timeout_s:
            break
    proc.send_signal(sig)
    try:
        out, rest = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, rest = proc.communicate()
    err = "".join(lines) + rest
    return proc.returncode, out, err, None


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.startswith("error:")]


def run_case(case: Case, tmp: Path) -> Outcome:
    """Run ``case`` in the empty folder ``tmp`` and classify what happened."""
    inputs = tmp / "in"
    inputs.mkdir(parents=True)
    argv = case.build(inputs)
    out_path = tmp / "out" / case.out if case.out else None
    if out_path is not None:
        (tmp / "out").mkdir()
        argv = [a.replace(OUT, str(out_path)) for a in argv]
    before_in, before_all = _snapshot(inputs), _snapshot(tmp)
    external = _external_inputs(argv, tmp)
    Path(EVIL_MARKER).unlink(missing_ok=True)
    if case.signal is not None:
        rc, stdout, stderr, exc = _child(argv, case.signal, case.timeout_s)
        if case.expect == "ok":  # killed outright (no clean-up can run): the same command again
            before_all = _snapshot(tmp)  # the leftovers are the earlier run's; the rerun must clear them
            rc, stdout, stderr, exc = _in_process(argv)
            before_all = {k: v for k, v in before_all.items() if ".partial" not in k}
    else:
        rc, stdout, stderr, exc = _in_process(argv)
    problems: list[str] = []
    if _snapshot(inputs) != {k: v for k, v in _snapshot(inputs).items() if k in before_in} or any(
        _snapshot(inputs).get(k) != v for k, v in before_in.items()
    ):
        problems.append("input_modified")
    if _external_inputs(argv, tmp) != external:
        problems.append("input_modified")
    if Path(EVIL_MARKER).exists():
        problems.append("unpickled a malicious file")
    if exc is not None or "Traceback (most recent call last)" in stderr:
        detail = f"{type(exc).__name__}: {exc}" if exc is not None else stderr.strip().splitlines()[-1]
        return Outcome("traceback", detail, stderr, problems)
    errs = error_lines(stderr)
    after = _snapshot(tmp)
    new = sorted(set(after) - set(before_all))
    if rc == 0:
        if case.expect != "ok":
            return Outcome(
                "wrong_success", f"exit 0, expected an error naming {case.names!r}", stderr, problems
            )
        leftovers = [n for n in after if ".partial" in n or "/.tmp" in n or n.startswith("out/.")]
        if leftovers:
            problems.append("leftover: " + ", ".join(leftovers))
        try:
            if case.check is not None:
                case.check(out_path, argv, stdout)
        except (AssertionError, ValueError, OSError) as e:
            return Outcome("bad_output", str(e)[:300], stderr, problems)
        return Outcome("ok" if not problems else problems[0].split(":")[0], "", stderr, problems)
    # a failure: one error line naming the file or option, nothing written, no folder left
    leftovers = [n for n in new if n not in ("out/",)]
    if out_path is not None and (tmp / "out").exists() and any((tmp / "out").iterdir()):
        leftovers.append("out/ not empty: " + ", ".join(p.name for p in (tmp / "out").iterdir()))
    if leftovers:
        problems.append("leftover: " + ", ".join(leftovers))
    expected_rc = 130 if case.expect == "interrupted" else 2
    if case.expect == "ok":
        return Outcome("false_refusal", errs[0] if errs else stderr[-300:], stderr, problems)
    if (
        len(errs) != 1
        or rc != expected_rc
        or not all(w.lower() in errs[0].lower() for w in (case.names, case.says))
    ):
        why = f"exit {rc}; " + (" | ".join(errs) if errs else "no error: line: " + stderr[-200:])
        return Outcome("unclear_error", why, stderr, problems)
    if problems:
        return Outcome(problems[0].split(":")[0], "; ".join(problems), stderr, problems)
    return Outcome("clean_error", errs[0], stderr, problems)
