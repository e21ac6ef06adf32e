"""The ``ctinvariances`` command line.

Errors print one line ``error: FILE: problem`` on stderr and exit with status 2; ``--debug`` shows
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..defaults import CONSISTENCY_METHOD, CONSISTENCY_STEPS
from ..errors import CTInvariancesError
from . import options as opt

EXIT_USAGE = 2


def _add_volume_args(p: argparse.ArgumentParser, device: bool = True) -> None:
    p.add_argument("--slices", metavar="A:B", help="slice indices to use, Python style (e.g. 10:20)")
    p.add_argument("--series", metavar="UID", help="SeriesInstanceUID, when a folder holds several")
    p.add_argument(
        "--tilt",
        choices=("resample", "keep", "refuse"),
        default="resample",
        help="gantry-tilted series: resample onto an orthogonal grid (default), keep the acquired "
        "slices (sheared geometry) or refuse",
    )
    if device:
        p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")


class _Parser(argparse.ArgumentParser):
    """Usage errors as the one line every other error is: ``error: ...`` on stderr, status 2."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="ctinvariances",
        description="What a low-dose CT denoiser ignores: I/O, low-dose simulation, denoisers.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="describe a CT input (DICOM folder/file, NRRD, NIfTI, MHA/MHD)")
    p.add_argument("path")
    p.add_argument("--json", action="store_true", help="print JSON")
    _add_volume_args(p, device=False)

    p = sub.add_parser("simulate-low-dose", help="simulate a reduced-dose scan of a full-dose input")
    p.add_argument("input")
    p.add_argument(
        "--dose", type=opt.dose_fraction, default=0.25, help="dose fraction a in (0, 1) (default 0.25)"
    )
    p.add_argument("--seed", type=opt.seed, default=0)
    p.add_argument("--out", required=True, help="output image (.nrrd, .nii.gz, .mha)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument(
        "--i0",
        type=opt.positive_float,
        help="full-dose photons per ray (default: estimated from the image noise)",
    )
    p.add_argument(
        "--electronic-noise",
        type=opt.non_negative_float,
        default=10**0.5,
        help="electronic noise std (quanta)",
    )
    p.add_argument("--filter", default="hann", choices=("ramp", "shepp-logan", "cosine", "hann"))
    p.add_argument("--views", type=opt.int_in(16, 20000), default=576, help="projection views per rotation")
    _add_max_memory(p)
    _add_volume_args(p)

    p = sub.add_parser("denoise", help="denoise a CT input slice by slice")
    p.add_argument("input")
    p.add_argument(
        "--denoiser", required=True, help="cnn10|redcnn|wganvgg|dugan, a weight file, or module:callable"
    )
    p.add_argument("--out", required=True, help="output image (.nrrd, .nii.gz, .mha)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--batch-size", type=opt.int_in(1, 4096), default=4)
    _add_denoiser_args(p)
    _add_volume_args(p)

    p = sub.add_parser("evaluate", help="PSNR/SSIM of a denoiser on the held-out slices")
    p.add_argument("--denoiser", required=True)
    p.add_argument("--dose", type=opt.dose_fraction, default=0.25)
    p.add_argument("--window", default="soft-tissue", help="soft-tissue (W400/L40), lung, or C,W")
    p.add_argument("--json", metavar="FILE", help="also write the results here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --json file")
    p.add_argument("--update-card", action="store_true", help="store the results in the model card")
    p.add_argument("--device", default="auto")
    _add_denoiser_args(p)

    p = sub.add_parser("sample", help="draw invariance samples: inputs the denoiser maps to the same output")
    p.add_argument("input")
    p.add_argument(
        "--denoiser", required=True, help="cnn10|redcnn|wganvgg|dugan, a weight file, or module:callable"
    )
    p.add_argument(
        "--samples",
        type=opt.int_in(1, 4096),
        default=16,
        help="samples per slice K (default 16, at most 4096)",
    )
    p.add_argument("--seed", type=opt.seed, default=0)
    p.add_argument(
        "--temperature",
        type=opt.float_in(0.0, 10.0, lo_open=True),
        default=1.0,
        help="scale of v ~ N(0, T^2 I) (default 1)",
    )
    p.add_argument("--out", required=True, help="output folder (created; must not hold earlier results)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace earlier results in --out (kept if this run fails)"
    )
    p.add_argument(
        "--cvae",
        help="cVAE run folder or .safetensors; 'tiled' for the bundled tiled engine "
        "(default: the bundled spatial-latent engine)",
    )
    p.add_argument("--cinn", help="cINN .safetensors or folder (default: beside the cVAE)")
    p.add_argument(
        "--sampler",
        choices=("cinn", "prior", "noise"),
        help="cinn: the learned engine (default when a cINN exists for the denoiser); prior: z "
        "from the cVAE prior (what the decoder alone varies); noise: f(x) + fresh noise at x's "
        "level, no trained model needed (default otherwise)",
    )
    p.add_argument("--prior", action="store_true", help="same as --sampler prior")
    p.add_argument(
        "--consistency",
        type=opt.int_in(0, 10000),
        default=CONSISTENCY_STEPS,
        metavar="STEPS",
        help="consistency steps that make f(x~) = f(x) (default %(default)s; 0: the raw samples, "
        "as in the paper)",
    )
    p.add_argument(
        "--consistency-method",
        choices=("ncg", "gd", "cg"),
        default=CONSISTENCY_METHOD,
        help="ncg: six gradient steps, then nonlinear conjugate gradients (default); gd: gradient "
        "descent with momentum only; cg: Gauss-Newton with linear conjugate gradients",
    )
    _add_max_memory(p)
    p.add_argument(
        "--keep-raw",
        action="store_true",
        help="also write the raw samples (samples_raw.seq.nrrd) beside the consistent ones",
    )
    p.add_argument(
        "--batch-size",
        type=opt.int_in(1, 4096),
        default=64,
        help="tiles (tiled engine) or samples (spatial engine) per batch (halved on out-of-memory)",
    )
    p.add_argument("--overlap", type=opt.non_negative_int, help="tile overlap in pixels (default: patch / 8)")
    p.add_argument("--no-skip-air", action="store_true", help="also sample tiles that hold only air")
    p.add_argument(
        "--tile-latents",
        choices=("shared", "independent"),
        default="shared",
        help="shared: sample k uses one v in every tile (default); independent: a v per tile",
    )
    p.add_argument("--no-check", action="store_true", help="skip denoising the samples (fidelity check)")
    _add_denoiser_args(p)
    _add_volume_args(p)

    p = sub.add_parser("run", help="the main job: sample, analyse (methods A, B, C) and report, per denoiser")
    p.add_argument("input")
    p.add_argument(
        "--denoiser",
        required=True,
        metavar="NAME[,NAME...]",
        help="bundled names (cnn10,redcnn,wganvgg,dugan), weight files or module:callable, comma-separated",
    )
    p.add_argument("--samples", type=opt.int_in(2, 1024), default=16, help="samples per slice (default 16)")
    p.add_argument("--out", required=True, help="run folder (created; written at the end)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing run folder (when this run succeeds)"
    )
    p.add_argument(
        "--probe",
        action="append",
        metavar="D_MM,C_HU",
        help="method C: erasure map of probes of this diameter and contrast (repeatable)",
    )
    _add_max_memory(p)
    p.add_argument(
        "--dicom-seg",
        action="store_true",
        help="also write alterations.seg.dcm, a DICOM SEG referencing the input series (DICOM input; "
        "needs highdicom)",
    )
    p.add_argument(
        "--simulate-dose",
        type=opt.dose_fraction,
        metavar="FRACTION",
        help="the input is full dose: simulate this dose fraction first (e.g. 0.25)",
    )
    p.add_argument(
        "--alpha",
        type=opt.float_in(0.0, 1.0, lo_open=True, hi_open=True),
        default=0.05,
        help="family-wise error rate of method A (default 0.05)",
    )
    p.add_argument("--seed", type=opt.seed, default=0)
    p.add_argument("--temperature", type=opt.positive_float, default=1.0)
    p.add_argument("--consistency", type=opt.int_in(0, 10000), default=CONSISTENCY_STEPS, metavar="STEPS")
    p.add_argument(
        "--sampler",
        choices=("cinn", "prior", "noise"),
        help="default: cinn where a cINN exists for the denoiser, else noise",
    )
    p.add_argument("--cvae", help="cVAE (default: the bundled spatial-latent engine; 'tiled': the tiled one)")
    p.add_argument("--batch-size", type=opt.int_in(1, 4096), default=64)
    _add_denoiser_args(p)
    _add_volume_args(p)

    p = sub.add_parser(
        "probe",
        help="method C at one point or for segmented structures: would a structure of this size and "
        "contrast survive the denoiser?",
    )
    p.add_argument("input")
    p.add_argument("--denoiser", required=True)
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--at", metavar="X,Y,Z", help="point in patient coordinates (LPS, mm): a disc there")
    where.add_argument(
        "--mask",
        metavar="LABELS",
        help="label image on the input's grid (e.g. a segmentation exported as a labelmap): each label "
        "value is one structure, inserted with --contrast in every slice it covers",
    )
    p.add_argument("--label", type=opt.int_in(1, 2**31 - 1), help="probe only this label value of --mask")
    p.add_argument("--diameter", type=opt.positive_float, default=5.0, help="mm (default 5)")
    p.add_argument("--contrast", type=opt.float_in(-3000.0, 3000.0), default=20.0, help="HU (default 20)")
    p.add_argument("--consistency", type=opt.int_in(1, 10000), default=CONSISTENCY_STEPS, metavar="STEPS")
    p.add_argument("--json", action="store_true")
    _add_denoiser_args(p)
    _add_volume_args(p)

    p = sub.add_parser("models", help="manage model files")
    msub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    m = msub.add_parser(
        "import-published",
        help="convert the published ldct-invariances <name>-vae.pt / <name>-cinn.pt "
        "(hash-checked) to safetensors; copy published denoisers <name>.pt to the user's denoisers",
    )
    m.add_argument("--dir", required=True, help="folder holding the downloaded .pt files")
    m.add_argument("--overwrite", action="store_true", help="replace models imported before")
    m.add_argument(
        "--out", help="destination (default: the user models folder: published/<name>/ and denoisers/)"
    )
    m = msub.add_parser("list", help="list the bundled and imported models with their hashes")
    m = msub.add_parser(
        "install", help="add a denoiser file to the user models folder (then listed, and in the Slicer panel)"
    )
    m.add_argument("file", help="a .safetensors (with its .json card) or a .pt denoiser")
    m.add_argument("--name", help="the name to pick it by (default: the file's stem)")
    m.add_argument("--arch", help="architecture of a .pt file whose name does not say it")
    m.add_argument("--overwrite", action="store_true", help="replace a user denoiser of that name")

    p = sub.add_parser("train", help="train a model")
    tsub = p.add_subparsers(dest="what", required=True, metavar="WHAT")
    t = tsub.add_parser("denoiser", help="train cnn10, redcnn, wganvgg or dugan on simulated pairs")
    t.add_argument("--arch", required=True, choices=("cnn10", "redcnn", "wganvgg", "dugan"))
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, final weights)")
    t.add_argument(
        "--install", metavar="NAME", help="also add the trained weights to the user models folder as NAME"
    )
    t.add_argument("--width", type=opt.int_in(1, 1024), help="channel width (default: the published one)")
    t.add_argument("--steps", type=opt.positive_int, default=2000)
    t.add_argument("--batch-size", type=opt.positive_int, default=16)
    t.add_argument("--patch", type=opt.int_in(16, 1024), default=64)
    t.add_argument("--lr", type=opt.positive_float, default=1e-3)
    t.add_argument("--dose", type=opt.dose_fraction, default=0.25)
    t.add_argument("--realisations", type=opt.int_in(1, 100), default=3, help="noise realisations per slice")
    t.add_argument("--seed", type=opt.seed, default=0)
    t.add_argument("--adv-weight", type=opt.non_negative_float, default=1e-3)
    t.add_argument(
        "--relative-from",
        type=opt.float_in(0.0, 1.0),
        default=0.6,
        help="fraction of the steps after which the pixel loss is the noise-normalised MSE",
    )
    t.add_argument(
        "--init",
        metavar="WEIGHTS",
        help="fine-tune: start from these weights (.safetensors with card, or a published .pt)",
    )
    t.add_argument("--device", default="auto")

    t = tsub.add_parser("cvae", help="train the conditional VAE (also under torchrun for several processes)")
    t.add_argument("--out", required=True, help="run folder (checkpoints, log, cvae.safetensors)")
    t.add_argument(
        "--data",
        nargs="*",
        default=[],
        metavar="CT",
        help="full-dose CT inputs to simulate low dose from (default: the shared data's training slices)",
    )
    t.add_argument(
        "--denoiser",
        action="append",
        metavar="NAME|FILE",
        help="condition on this denoiser's output; repeat for several (default: the four bundled)",
    )
    t.add_argument(
        "--size",
        choices=("spatial", "compact", "paper"),
        default="spatial",
        help="spatial: latent map, whole slices (default); compact / paper: tiled, global latent",
    )
    t.add_argument("--steps", type=opt.positive_int, default=6000)
    t.add_argument(
        "--time-limit",
        type=opt.positive_float,
        metavar="MINUTES",
        help="train for at most this long: the step count is scaled down to fit",
    )
    t.add_argument("--batch-size", type=opt.positive_int, help="per process (default: the size's recipe, 16)")
    t.add_argument(
        "--lr", type=opt.positive_float, help="default: the size's recipe (spatial 4e-4, else 1e-4)"
    )
    t.add_argument(
        "--adv-weight", type=opt.non_negative_float, help="default: the size's recipe (spatial 0, else 1)"
    )
    t.add_argument(
        "--adv-start", type=opt.non_negative_int, default=500, help="steps before the adversarial term starts"
    )
    t.add_argument(
        "--init", metavar="CVAE", help="fine-tune: start from this trained cVAE (same --size; a fresh critic)"
    )
    t.add_argument(
        "--l1-weight", type=opt.positive_float, default=0.0011852, help="weight of the summed L1 (paper)"
    )
    t.add_argument(
        "--kl-weight",
        type=opt.non_negative_float,
        help="weight of the summed KL (paper and tiled sizes: 0.57504; spatial: 1e-5)",
    )
    t.add_argument("--dose", type=opt.dose_fraction, default=0.25)
    t.add_argument("--realisations", type=opt.int_in(1, 100), default=2)
    t.add_argument("--seed", type=opt.seed, default=0)
    _add_max_memory(t)
    t.add_argument("--checkpoint-every", type=opt.positive_int, default=200)
    t.add_argument(
        "--stop-at",
        type=opt.positive_int,
        metavar="STEP",
        help="stop after this step with a checkpoint (a later run with other settings continues)",
    )
    t.add_argument("--device", default="auto")

    t = tsub.add_parser("cinn", help="train a cINN for one denoiser on a trained cVAE (torchrun works too)")
    t.add_argument(
        "--denoiser", required=True, help="cnn10|redcnn|wganvgg|dugan, a weight file, or module:callable"
    )
    t.add_argument("--cvae", required=True, help="cVAE run folder or .safetensors file")
    t.add_argument("--out", required=True)
    t.add_argument("--data", nargs="*", default=[], metavar="CT")
    t.add_argument(
        "--steps",
        type=opt.non_negative_int,
        default=4000,
        help="0 with --init: only fit the output calibration of the given cINN",
    )
    t.add_argument(
        "--time-limit",
        type=opt.positive_float,
        metavar="MINUTES",
        help="train for at most this long: the step count is scaled down to fit",
    )
    t.add_argument("--batch-size", type=opt.positive_int, default=64, help="per process")
    t.add_argument(
        "--calibration-crops",
        type=opt.non_negative_int,
        default=1024,
        help="training crops for the final fit of a spatial cINN's output calibration (0: none)",
    )
    t.add_argument(
        "--calibration-fit",
        choices=("all", "mean"),
        default="all",
        help="that fit sets shift and scale (all) or the shift only, keeping the trained scale (mean)",
    )
    t.add_argument(
        "--patch", type=opt.int_in(16, 1024), help="crop size (spatial engines; default: the cVAE's)"
    )
    t.add_argument("--init", metavar="CINN", help="fine-tune: start from this trained cINN's weights")
    t.add_argument(
        "--invariance-weight",
        type=opt.non_negative_float,
        default=0.0,
        help="spatial engines: add this weight x the power of f(x~) - f(x) of decoded samples x~ over "
        "that of x~ - f(x) to the NLL (samples that vary what f ignores; 0: maximum likelihood only)",
    )
    t.add_argument(
        "--invariance-batch",
        type=opt.positive_int,
        default=8,
        help="decoded samples per step for --invariance-weight",
    )
    t.add_argument(
        "--power-weight",
        type=opt.non_negative_float,
        default=10.0,
        help="with --invariance-weight: this weight x log(power of x~ - f(x) / power of x - f(x))^2, "
        "inside and outside the body, keeps the samples as loud as x",
    )
    t.add_argument(
        "--spectrum-weight",
        type=opt.non_negative_float,
        default=0.0,
        help="with --invariance-weight: this weight x the spread over radial frequency bands of "
        "log(band power of x~ - f(x) / that of x - f(x)) keeps x's noise spectrum (texture)",
    )
    t.add_argument(
        "--moment-weight",
        type=opt.non_negative_float,
        default=0.0,
        help="this weight x the sum over latent channels of mean(v)^2 + log(std(v))^2 on the batch: "
        "holds v's moments at N(0, 1) where another term pulls the flow off its maximum likelihood",
    )
    t.add_argument("--lr", type=opt.positive_float, default=2e-4)
    t.add_argument("--dose", type=opt.dose_fraction, default=0.25)
    t.add_argument("--realisations", type=opt.int_in(1, 100), default=2)
    t.add_argument("--seed", type=opt.seed, default=0)
    _add_max_memory(t)
    t.add_argument("--checkpoint-every", type=opt.positive_int, default=200)
    t.add_argument("--device", default="auto")
    t.add_argument("--arch", help="architecture of a .pt denoiser file whose name does not say it")
    t.add_argument("--input-convention", choices=("normalized", "hu"))
    return parser


def _add_max_memory(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--max-memory",
        type=opt.positive_float,
        metavar="GIB",
        help="refuse a job whose estimated working memory exceeds this many GiB (2^30 bytes; "
        "default: what is available)",
    )


def _add_denoiser_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--arch", help="architecture of a .pt file whose name does not say it")
    p.add_argument(
        "--input-convention",
        choices=("normalized", "hu"),
        help="what a custom network takes: ldct-benchmark normalised units or HU",
    )
    p.add_argument("--sha256", help="expected SHA-256 of the weight file")


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CTInvariancesError(f"--device {name}: no CUDA GPU is available (torch {torch.__version__})")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise CTInvariancesError(f"--device {name!r}: use auto, cpu, cuda or cuda:N")
    return name


class _ProgressLines:
    """Machine-readable progress on stderr (``progress: DONE/TOTAL DESC``), one line per step: what
    the Slicer module parses when it runs the CLI in a child process."""

    disable = False

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.n = total, desc, 0
        self._emit()

    def _emit(self) -> None:
        print(f"progress: {self.n}/{self.total} {self.desc}", file=sys.stderr, flush=True)

    def update(self, n: int = 1) -> None:
        self.n += n
        self._emit()

    def write(self, message: str) -> None:
        print(message, flush=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        return None


def _progress(total: int, desc: str):
    if os.environ.get("CTINVARIANCES_PROGRESS") == "lines":
        return _ProgressLines(total, desc)
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, disable=not sys.stderr.isatty(), dynamic_ncols=True)


def _read(args):
    from ..io import parse_slices, read_volume

    vol = read_volume(
        args.input if hasattr(args, "input") else args.path, series_uid=args.series, tilt=args.tilt
    )
    if args.slices:
        vol = vol.select_slices(parse_slices(args.slices))
    for w in vol.warnings:
        print(f"warning: {vol.source}: {w}", file=sys.stderr)
    return vol


def _check_out(out: str, inp: str, overwrite: bool = False, folder: bool = False) -> Path:
    """The output path, checked before any work: not the input, a writable place, a known image
    suffix (files), and not an existing file unless ``overwrite`` (folders: see sample_volume)."""
    from ..files import check_can_create
    from ..io.readers import WRITE_SUFFIXES, _suffix

    o = Path(out)
    if o.resolve() == Path(inp).resolve() or Path(inp).resolve() in o.resolve().parents:
        raise CTInvariancesError("refusing to write onto or inside the input", out)
    if folder:
        from ..invariance.pipeline import check_output_folder

        check_output_folder(o, overwrite)
        return o
    if _suffix(o) not in WRITE_SUFFIXES:
        raise CTInvariancesError(
            f"cannot write '{_suffix(o) or o.name}': use one of {', '.join(WRITE_SUFFIXES)}", out
        )
    if o.is_dir():
        raise CTInvariancesError("is a folder; give an image file name", out)
    if o.exists() and not overwrite:
        raise CTInvariancesError("exists; choose another name or give --overwrite", out)
    check_can_create(o.parent)
    return o


def cmd_inspect(args) -> int:
    import numpy as np

    args.input = args.path
    vol = _read(args)
    k, j, i = vol.shape
    info = {
        "shape": [k, j, i],
        "spacing_mm": [vol.spacing[2], vol.spacing[1], vol.spacing[0]],
        "modality": vol.tags.get("modality"),
        "hu_min": float(np.min(vol.array)),
        "hu_max": float(np.max(vol.array)),
        "series_uid": vol.tags.get("series_uid"),
        "origin_lps_mm": list(vol.origin),
        "direction": list(vol.direction),
        "tags": {key: v for key, v in vol.tags.items() if key not in ("modality", "series_uid")},
        "warnings": vol.warnings,
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{vol.source}")
    print(f"  shape [k, j, i]   {k} x {j} x {i}")
    print(
        f"  spacing [k, j, i] {info['spacing_mm'][0]:.4g} x {info['spacing_mm'][1]:.4g} x "
        f"{info['spacing_mm'][2]:.4g} mm"
    )
    print(f"  HU range          {info['hu_min']:.0f} .. {info['hu_max']:.0f}")
    for key in (
        "modality",
        "manufacturer",
        "model",
        "kernel",
        "kvp",
        "tube_current_ma",
        "slice_thickness_mm",
        "gantry_tilt_deg",
        "series_uid",
    ):
        if vol.tags.get(key) is not None:
            print(f"  {key:<17} {vol.tags[key]}")
    return 0


def cmd_simulate(args) -> int:
    import numpy as np

    from ..io import write_volume
    from ..lowdose import FanBeamGeometry, LowDoseSettings, LowDoseSimulator

    if not 0.0 < args.dose < 1.0:
        raise CTInvariancesError(f"--dose {args.dose}: the dose fraction must be in (0, 1)")
    out = _check_out(args.out, args.input, args.overwrite)
    vol = _read(args)
    device = resolve_device(args.device)
    settings = LowDoseSettings(
        dose_fraction=args.dose,
        i0=args.i0,
        electronic_noise=args.electronic_noise,
        geometry=FanBeamGeometry(filter=args.filter, n_views=args.views),
    )
    batch = _simulation_batch(out, vol, args.views, args.max_memory)
    sim = LowDoseSimulator(settings, device=device, fbp_batch=batch)
    with _progress(vol.shape[0], "simulate") as bar:
        low, i0s = _simulate_volume(vol, sim, args.seed, bar.update)
    write_volume(low, out)
    print(f"wrote {out} ({vol.shape[0]} slices, dose {args.dose:g}, I0 {np.median(i0s):.4g} photons/ray)")
    return 0


def _load_denoiser(args, device):
    from ..denoisers import load_denoiser

    return load_denoiser(
        args.denoiser,
        device=device,
        arch=args.arch,
        input_convention=args.input_convention,
        sha256=args.sha256,
    )


def cmd_denoise(args) -> int:
    from ..io import write_volume
    from ..io.volume import restore_padding, without_padding

    out = _check_out(args.out, args.input, args.overwrite)
    vol = _read(args)
    device = resolve_device(args.device)
    den = _load_denoiser(args, device)
    t0 = time.perf_counter()
    with _progress(vol.shape[0], f"denoise {den.name}") as bar:
        padding = vol.padding_mask()
        result = den.denoise_slices(
            without_padding(vol.array, padding), batch_size=args.batch_size, progress=bar.update
        )
        restore_padding(result, vol.array, padding)
    write_volume(vol.with_array(result), out)
    print(f"wrote {out} ({vol.shape[0]} slices, {den.name}, {time.perf_counter() - t0:.1f} s on {device})")
    return 0


def cmd_evaluate(args) -> int:
    from ..evaluation import evaluate_denoiser
    from ..metrics import parse_window

    try:
        window = parse_window(args.window)
    except ValueError as exc:
        raise CTInvariancesError(str(exc)) from None
    from ..datasets import SOURCES, make_pairs
    from ..evaluation import HOLDOUT_SEED
    from ..files import check_can_create

    if args.json:  # before the work: a folder that cannot take the file is known now
        if Path(args.json).is_dir():
            raise CTInvariancesError("--json: is a folder; give a file name", args.json)
        if Path(args.json).exists() and not args.overwrite:
            raise CTInvariancesError("--json: exists; choose another name or give --overwrite", args.json)
        check_can_create(Path(args.json).parent)
    den = _load_denoiser(args, resolve_device(args.device))
    with _progress(sum(len(s.holdout) for s in SOURCES), "held-out pairs") as bar:
        pairs = make_pairs("holdout", args.dose, realisations=1, seed=HOLDOUT_SEED, progress=bar.update)
    res = evaluate_denoiser(den, dose_fraction=args.dose, window=window, pairs=pairs)
    print(
        f"{den.name}: {res['n_slices']} held-out slices, dose {args.dose:g}, window {res['window']}, "
        "in the patient body (whole slice in brackets)"
    )
    print(f"  {'':<10} {'PSNR dB':>16} {'SSIM':>15} {'RMSE HU':>8}")
    for key in ("low_dose", "denoised"):
        r = res[key]
        print(
            f"  {key:<10} {r['psnr_db']:7.2f} ({r['psnr_db_whole_slice']:6.2f}) "
            f"{r['ssim']:6.3f} ({r['ssim_whole_slice']:5.3f}) {r['rmse_hu']:8.2f}"
        )
    print(
        f"  {'gain':<10} {res['psnr_gain_db']:+7.2f} ({res['psnr_gain_db_whole_slice']:+6.2f}) "
        f"{res['ssim_gain']:+6.3f} ({res['ssim_gain_whole_slice']:+5.3f})"
    )
    if args.json:
        from ..invariance.pipeline import finite_json

        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(finite_json(res), indent=2, allow_nan=False) + "\n")
    if args.update_card:
        _update_card(den, res)
    return 0


def _update_card(den, res) -> None:
    from ..weights import set_card_metric

    src = Path(den.source)
    card_path = src.with_suffix(".json")
    if src.suffix != ".safetensors" or not card_path.exists():
        raise CTInvariancesError("--update-card needs a .safetensors denoiser with a card", den.source)
    set_card_metric(
        card_path,
        f"holdout_dose_{res['dose_fraction']:g}",
        {k: v for k, v in res.items() if k not in ("denoiser", "slices")},
    )


def cmd_train(args) -> int:
    if args.what == "cvae":
        return _train_cvae(args)
    if args.what == "cinn":
        return _train_cinn(args)
    from ..training.denoisers import DenoiserTrainer, DenoiserTrainingConfig

    cfg = DenoiserTrainingConfig(
        arch=args.arch,
        out=args.out,
        width=args.width,
        steps=args.steps,
        batch_size=args.batch_size,
        patch=args.patch,
        lr=args.lr,
        dose_fraction=args.dose,
        realisations=args.realisations,
        seed=args.seed,
        adv_weight=args.adv_weight,
        relative_from=args.relative_from,
        init=args.init,
    )
    if args.install:
        _check_install_name(args.install)
    path = DenoiserTrainer(cfg, device=resolve_device(args.device)).run(progress=sys.stderr.isatty())
    print(f"wrote {path}")
    if args.install:
        _install(path, args.install)
    return 0


def _check_install_name(name: str) -> None:
    """Before any work: the name is usable and free."""
    from ..model_folders import check_model_name, user_models_dir

    existing = list((user_models_dir() / "denoisers").glob(f"{check_model_name(name)}.*"))
    if existing:
        raise CTInvariancesError(f"a user denoiser '{name}' exists; choose another name", existing[0])


def _install(path, name: str | None, overwrite: bool = False, arch: str | None = None) -> None:
    from ..denoisers import load_denoiser
    from ..model_folders import BUNDLED_DENOISERS, install_denoiser

    if Path(path).suffix not in (".safetensors", ".pt"):
        raise CTInvariancesError("install takes a .safetensors (with its .json card) or a .pt denoiser", path)
    load_denoiser(str(path), arch=arch)  # it loads (hash, card, weights) before it is offered
    dest = install_denoiser(path, name, overwrite)
    pick = f"user/{dest.stem}" if dest.stem in BUNDLED_DENOISERS else dest.stem
    print(f"installed {dest}; pick it with --denoiser {pick} (also in the Slicer panel)")


def _train_cvae(args) -> int:
    from ..denoisers import DENOISER_NAMES
    from ..training.invariance import CVAETrainer, CVAETrainingConfig, recipe_value

    def recipe(name: str):
        return recipe_value(args.size, name, getattr(args, name))

    cfg = CVAETrainingConfig(
        out=args.out,
        size=args.size,
        denoisers=tuple(args.denoiser or DENOISER_NAMES),
        data=tuple(args.data),
        steps=args.steps,
        batch_size=recipe("batch_size"),
        lr=recipe("lr"),
        adv_weight=recipe("adv_weight"),
        adv_start=args.adv_start,
        l1_weight=args.l1_weight,
        kl_weight=recipe("kl_weight"),
        dose_fraction=args.dose,
        realisations=args.realisations,
        max_memory_gb=args.max_memory,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        time_limit_s=_minutes(args.time_limit),
        init=args.init,
    )
    return _run_trainer(CVAETrainer, cfg, args.device, stop_at=args.stop_at)


def _run_trainer(trainer_cls, cfg, device: str, stop_at: int | None = None) -> int:
    """One process, or one rank under torchrun; rank 0 exports and reports."""
    from ..training import distributed

    ctx = distributed.setup(device)
    try:
        path = trainer_cls(cfg, ctx).run(progress=sys.stderr.isatty(), stop_at=stop_at)
    finally:
        distributed.teardown(ctx)
    if path:
        print(f"wrote {path}")
    return 0


def _train_cinn(args) -> int:
    from ..training.invariance import CINNTrainer, CINNTrainingConfig

    cfg = CINNTrainingConfig(
        out=args.out,
        denoiser=args.denoiser,
        cvae=args.cvae,
        denoiser_arch=args.arch,
        denoiser_input_convention=args.input_convention,
        data=tuple(args.data),
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        dose_fraction=args.dose,
        realisations=args.realisations,
        max_memory_gb=args.max_memory,
        seed=args.seed,
        checkpoint_every=args.checkpoint_every,
        device=args.device,
        time_limit_s=_minutes(args.time_limit),
        patch=args.patch,
        init=args.init,
        calibration_crops=args.calibration_crops,
        calibration_fit=args.calibration_fit,
        invariance_weight=args.invariance_weight,
        invariance_batch=args.invariance_batch,
        power_weight=args.power_weight,
        spectrum_weight=args.spectrum_weight,
        moment_weight=args.moment_weight,
    )
    if args.steps == 0 and not args.init:
        raise CTInvariancesError("--steps 0 needs --init (a trained cINN whose calibration is fitted)")
    return _run_trainer(CINNTrainer, cfg, args.device)


def _minutes(value: float | None) -> float | None:
    if value is None:
        return None
    if not value > 0:
        raise CTInvariancesError(f"--time-limit {value}: must be a positive number of minutes")
    return 60.0 * value


def cmd_sample(args) -> int:
    from ..invariance.pipeline import sample_volume

    if args.consistency < 0:
        raise CTInvariancesError(f"--consistency {args.consistency}: must be 0 or more")
    if args.samples < 1:
        raise CTInvariancesError(f"--samples {args.samples}: need at least 1")
    if args.temperature <= 0:
        raise CTInvariancesError(f"--temperature {args.temperature}: must be positive")
    out = _check_out(args.out, args.input, args.overwrite, folder=True)
    vol = _read(args)
    device = resolve_device(args.device)
    den = _load_denoiser(args, device)
    _check_job_size(out, vol, args.samples, args.samples * (2 if args.keep_raw else 1) + 3, args.max_memory)
    sampler = _make_sampler(args, den, device)
    kind = sampler.kind
    params = {k: v for k, v in vars(args).items() if k not in ("func",)}
    with _progress(vol.shape[0], f"sample {den.name} ({kind})") as bar:
        metrics = sample_volume(
            vol,
            sampler,
            out,
            n_samples=args.samples,
            seed=args.seed,
            temperature=args.temperature,
            batch_size=args.batch_size,
            check=not args.no_check,
            consistency_steps=args.consistency,
            consistency_method=args.consistency_method,
            keep_raw=args.keep_raw,
            progress=bar.update,
            parameters=params,
            overwrite=args.overwrite,
        )
    msg = (
        f"wrote {out}/ ({vol.shape[0]} slices x {args.samples} samples, {kind} sampler, "
        f"{args.consistency} consistency steps, {metrics['seconds']:.1f} s on {device})"
    )
    div = metrics.get("diversity")
    if div:
        msg += (
            f"\n  samples vary by {div['std_map_median_hu']:.1f} HU (median std in the body; "
            f"median pairwise RMSE {div['pairwise_rmse_median_hu']:.1f} HU)"
        )
    for key, label in (("fidelity_raw", "raw"), ("fidelity", "final")):
        fid = metrics.get(key)
        if fid:
            msg += (
                f"\n  {label}: samples differ from x by {fid['median_rmse_input_hu']:.1f} HU, f(samples) "
                f"from f(x) by {fid['median_rmse_output_hu']:.2f} HU (ratio {fid['median_ratio']:.3f})"
            )
    if "fresh_noise_ratio" in metrics:
        msg += f"\n  fresh-noise reference ratio {metrics['fresh_noise_ratio']['median']:.3f}"
    print(msg)
    return 0


def _check_job_size(out: Path, vol, n_samples: int, n_outputs: int, max_memory_gb=None) -> None:
    """Disk: n_outputs float32 volumes per sample set (samples + maps) per denoiser; memory: one
    slice's samples in several working copies (raw, consistent, gradients, f of each)."""
    import numpy as np

    from ..files import check_resources

    voxels = float(np.prod(vol.shape))
    slice_px = float(vol.shape[1] * vol.shape[2])
    check_resources(
        out,
        disk_bytes=4 * voxels * n_outputs,
        memory_bytes=4 * slice_px * n_samples * 8 + 4 * voxels,
        max_memory_gb=max_memory_gb,
    )


def _simulation_batch(out: Path, vol, n_views: int, max_memory_gb=None) -> int:
    """How many slices to simulate together (FBP batch): the most, up to FBP_BATCH, whose working
    memory (the input and output volumes plus ``simulation_memory_bytes``) fits what is available
    or ``max_memory_gb``; fewer only costs time. Refuses before any work when not even one slice
    fits, or when the output does not fit on the disk."""
    import numpy as np

    from ..files import check_resources, memory_limit_bytes
    from ..lowdose import FBP_BATCH, fitting_fbp_batch, simulation_memory_bytes

    voxels = float(np.prod(vol.shape))
    shape = (vol.shape[1], vol.shape[2])

    def need(batch: int) -> float:
        return 8 * voxels + simulation_memory_bytes(shape, n_views, batch)

    limit = memory_limit_bytes(max_memory_gb)
    full = min(FBP_BATCH, vol.shape[0])
    batch = fitting_fbp_batch(shape, n_views, vol.shape[0], limit, other_bytes=8 * voxels)
    if batch < full and need(batch) <= limit:
        print(
            f"note: simulating {batch} slice{'s' if batch > 1 else ''} at a time (instead of {full}) "
            f"to stay within {limit / 2**30:.2f} GiB of memory; slower, same images",
            file=sys.stderr,
        )
    check_resources(
        out,
        disk_bytes=4 * voxels,
        memory_bytes=need(batch),
        max_memory_gb=max_memory_gb,
        advice="simulate fewer slices at a time (--slices) or use fewer --views",
    )
    return batch


def _make_sampler(args, den, device):
    """The sampler the options ask for; by default the learned engine when a cINN exists for this
    denoiser, else the training-free noise sampler."""
    from ..invariance.sampler import InvarianceSampler, NoiseSampler

    kw = {}
    if hasattr(args, "no_skip_air"):
        kw = {"skip_air": not args.no_skip_air, "tile_latents": args.tile_latents}
        if args.overlap is not None:
            kw["overlap"] = args.overlap
    kind = "prior" if getattr(args, "prior", False) else args.sampler
    if kind is None:
        kind = "cinn" if _has_cinn(den, args) else "noise"
    if kind == "noise":
        return NoiseSampler(den, device=device)
    return InvarianceSampler.load(
        den, cvae=args.cvae, cinn=getattr(args, "cinn", None), device=device, use_cinn=kind == "cinn", **kw
    )


def cmd_probe(args) -> int:
    """Method C at one point: would a structure of this size and contrast survive the denoiser?"""
    import numpy as np

    from ..analysis import structure_probe

    if args.mask is not None:
        return _probe_mask(args)
    at = [float(v) for v in args.at.split(",")] if args.at else []
    if len(at) != 3 or not all(np.isfinite(at)):
        raise CTInvariancesError(f"--at {args.at!r}: give X,Y,Z in mm (patient coordinates, LPS)")
    vol = _read(args)
    device = resolve_device(args.device)
    den = _load_denoiser(args, device)
    k, j, i = vol.physical_to_index(at)  # on the real slice positions where the series has them
    kk = int(round(k))
    if not 0 <= kk < vol.shape[0]:
        raise CTInvariancesError(
            f"--at {args.at}: the point lies outside the image (slice {k:.1f})", vol.source
        )
    spacing = (vol.spacing[1], vol.spacing[0])
    try:
        from ..io.volume import without_padding

        res = structure_probe(
            den,
            without_padding(vol.array[kk], vol.padding_mask(kk)),
            spacing,
            [(j * spacing[0], i * spacing[1])],
            args.diameter,
            args.contrast,
            steps=args.consistency,
        )
    except ValueError as exc:
        raise CTInvariancesError(str(exc), vol.source) from None
    out = {
        "slice": int(vol.source_slice_indices[kk]),
        "diameter_mm": args.diameter,
        "contrast_hu": args.contrast,
        "erasure": float(res.erasure[0]),
        "transfer": float(res.transfer[0]),
        "denoiser": den.name,
    }
    if args.json:
        print(json.dumps(out))
    else:
        verdict = "erased by" if out["erasure"] > 0.5 else "kept by"
        print(
            f"a {args.diameter:g} mm, {args.contrast:+g} HU structure here is {verdict} {den.name}: "
            f"{100 * out['erasure']:.0f} % of its contrast is invisible to it; f keeps "
            f"{100 * out['transfer']:.0f} % of the contrast"
        )
    return 0


MAX_PROBE_PROBLEMS = 200  # (structure, slice) pairs one `probe --mask` call may solve


def _read_labels(args, vol):
    """The --mask label image, on exactly the input's grid; {label value: bool mask [K, J, I]}."""
    import numpy as np

    from ..io import parse_slices, read_volume

    labels = read_volume(args.mask)
    if args.slices:
        labels = labels.select_slices(parse_slices(args.slices))
    same = labels.shape == vol.shape and all(
        np.allclose(getattr(labels, a), getattr(vol, a), atol=1e-3)
        for a in ("spacing", "origin", "direction")
    )
    if not same:
        raise CTInvariancesError(
            f"the label image's grid ({labels.shape}, spacing {tuple(round(v, 3) for v in labels.spacing)}) "
            f"differs from the input's ({vol.shape}, spacing {tuple(round(v, 3) for v in vol.spacing)}): "
            "export the segments on the input's geometry",
            args.mask,
        )
    values = np.rint(labels.array).astype(np.int64)
    wanted = [args.label] if args.label is not None else sorted(int(v) for v in np.unique(values) if v > 0)
    masks = {v: values == v for v in wanted}
    empty = [v for v, m in masks.items() if not m.any()]
    if not masks or empty:
        what = f"label {empty[0]} is not in it" if empty else "it holds no structure (all 0)"
        raise CTInvariancesError(f"nothing to probe: {what}", args.mask)
    problems = sum(int(m.any(axis=(1, 2)).sum()) for m in masks.values())
    if problems > MAX_PROBE_PROBLEMS:  # each is a consistency problem: an organ atlas would run for hours
        raise CTInvariancesError(
            f"{len(masks)} structures over {problems} slices: more than {MAX_PROBE_PROBLEMS} probes; "
            "pick one with --label or fewer slices with --slices",
            args.mask,
        )
    return masks


def _probe_mask(args) -> int:
    """Method C for user-segmented structures: each label inserted with --contrast, slice by slice."""
    import numpy as np

    from ..analysis import structure_probe
    from ..io.volume import without_padding

    vol = _read(args)
    masks = _read_labels(args, vol)
    device = resolve_device(args.device)
    den = _load_denoiser(args, device)
    spacing = (vol.spacing[1], vol.spacing[0])
    px_mm2 = spacing[0] * spacing[1]
    structures = []
    for value, mask in masks.items():
        rows = []
        for k in np.flatnonzero(mask.any(axis=(1, 2))):
            try:
                res = structure_probe(
                    den,
                    without_padding(vol.array[k], vol.padding_mask(k)),
                    spacing,
                    [],
                    0.0,
                    args.contrast,
                    steps=args.consistency,
                    mask=mask[k],
                )
            except ValueError as exc:
                raise CTInvariancesError(f"label {value}, slice {k}: {exc}", args.mask) from None
            area = float(mask[k].sum() * px_mm2)
            rows.append(
                {
                    "slice": int(vol.source_slice_indices[k]),
                    "area_mm2": round(area, 2),
                    "erasure": float(res.erasure[0]),
                    "transfer": float(res.transfer[0]),
                }
            )
        w = np.array([r["area_mm2"] for r in rows])
        structures.append(
            {
                "label": value,
                "slices": rows,
                "volume_mm3": round(float(w.sum() * vol.spacing[2]), 1),
                # area-weighted over the slices it covers
                "erasure": float(np.average([r["erasure"] for r in rows], weights=w)),
                "transfer": float(np.average([r["transfer"] for r in rows], weights=w)),
            }
        )
    out = {"contrast_hu": args.contrast, "denoiser": den.name, "structures": structures}
    if args.json:
        print(json.dumps(out))
        return 0
    for st in structures:
        verdict = "erased by" if st["erasure"] > 0.5 else "kept by"
        print(
            f"label {st['label']} ({len(st['slices'])} slices, {st['volume_mm3']:g} mm3) at "
            f"{args.contrast:+g} HU is {verdict} {den.name}: {100 * st['erasure']:.0f} % of its contrast "
            f"is invisible to it; f keeps {100 * st['transfer']:.0f} %"
        )
    return 0


def _simulate_volume(vol, sim, seed: int, progress=None):
    """``vol`` (full dose) through the simulator ``sim``, each slice seeded by its index in the input
    (so --slices picks the same noise); returns the low-dose volume and the I0 per slice. Slices go
    through in batches of ``sim.fbp_batch`` that share FBP's ray geometry (``simulate_slices``)."""
    import numpy as np

    from ..io.volume import restore_padding, without_padding
    from ..lowdose import slice_seed

    pixel_mm = (vol.spacing[1], vol.spacing[0])
    out = np.empty_like(vol.array)
    i0s = []
    for start in range(0, vol.shape[0], sim.fbp_batch):
        ks = range(start, min(start + sim.fbp_batch, vol.shape[0]))
        paddings = [vol.padding_mask(k) for k in ks]
        stack = np.stack([without_padding(vol.array[k], p) for k, p in zip(ks, paddings)])
        seeds = [[slice_seed(seed, vol.source_slice_indices[k])] for k in ks]
        try:
            low, batch_i0 = sim.simulate_slices(stack, pixel_mm, seeds)
        except ValueError as exc:
            raise CTInvariancesError(str(exc), vol.source) from None
        for k, p, low_k, i0 in zip(ks, paddings, low[:, 0], batch_i0):
            out[k] = restore_padding(low_k, vol.array[k], p)
            i0s.append(float(i0))
        if progress:
            progress(len(ks))
    return vol.with_array(out), i0s


def cmd_run(args) -> int:
    from ..job import JobSettings, comparison_table, run_job

    if args.alpha <= 0 or args.alpha >= 1:
        raise CTInvariancesError(f"--alpha {args.alpha}: must be within (0, 1)")
    probes = [opt.probe(p) for p in args.probe or []]
    names = [n.strip() for n in args.denoiser.split(",") if n.strip()]
    if not names:
        raise CTInvariancesError("--denoiser: give at least one name (e.g. cnn10,redcnn)")
    out = Path(args.out)
    if out.resolve() == Path(args.input).resolve() or Path(args.input).resolve() in out.resolve().parents:
        raise CTInvariancesError("refusing to write onto or inside the input", args.out)
    from ..job import check_job_folder

    check_job_folder(out, args.overwrite)
    if args.dicom_seg:
        import importlib.util

        if importlib.util.find_spec("highdicom") is None:
            raise CTInvariancesError("--dicom-seg needs the highdicom package (pip install highdicom)")
    vol = _read(args)
    if args.dicom_seg:
        from ..dicom_seg import source_datasets

        source_datasets(vol)  # before any work: the input must be a DICOM series on its own grid
    device = resolve_device(args.device)
    if args.simulate_dose is not None:
        from ..lowdose import LowDoseSettings, LowDoseSimulator

        settings = LowDoseSettings(dose_fraction=args.simulate_dose)
        batch = _simulation_batch(out, vol, settings.geometry.n_views, args.max_memory)
        sim = LowDoseSimulator(settings, device=device, fbp_batch=batch)
        vol, _ = _simulate_volume(vol, sim, args.seed)
    _check_job_size(out, vol, args.samples, len(names) * (args.samples + 4 + len(probes)), args.max_memory)
    dens = [_load_denoiser(argparse.Namespace(**{**vars(args), "denoiser": n}), device) for n in names]
    settings = JobSettings(
        n_samples=args.samples,
        seed=args.seed,
        temperature=args.temperature,
        batch_size=args.batch_size,
        consistency_steps=args.consistency,
        alpha=args.alpha,
        probes=probes,
        device=device,
        dicom_seg=args.dicom_seg,
    )
    params = {k: v for k, v in vars(args).items() if k not in ("func",)}
    with _progress(vol.shape[0] * len(dens), "run") as bar:
        summary = run_job(
            vol,
            dens,
            out,
            lambda d: _make_sampler(args, d, device),
            settings,
            progress=bar.update,
            overwrite=args.overwrite,
            parameters=params,
            log=lambda m: bar.write(m) if not bar.disable else print(m),
        )
    print(
        f"wrote {out}/ ({vol.shape[0]} slices x {args.samples} samples, {len(dens)} denoiser(s), "
        f"{summary['seconds']:.0f} s on {device})"
    )
    print(comparison_table(summary))
    return 0


def _has_cinn(den, args) -> bool:
    """Whether a cINN for this denoiser is at hand (given, or beside the cVAE)."""
    from ..invariance.models import resolve_cinn_path, resolve_cvae_path

    # the user asked for the learned engine: a missing cINN is then an error
    if getattr(args, "cinn", None) or args.cvae:
        return True
    try:
        return Path(resolve_cinn_path(None, den.name, resolve_cvae_path(args.cvae))).exists()
    except CTInvariancesError:
        return False


def cmd_models(args) -> int:
    from ..invariance.models import bundled_dir, import_published
    from ..weights import models_dir, user_models_dir

    if args.what == "import-published":
        for path in import_published(args.dir, args.out, overwrite=args.overwrite):
            print(f"wrote {path}")
        return 0
    if args.what == "install":
        _install(args.file, args.name, args.overwrite, args.arch)
        return 0
    from ..model_folders import denoiser_entries

    print("denoisers (use with --denoiser NAME):")
    for e in denoiser_entries():
        print(f"  {e['name']:<20} {e['where']:<8} {e['path']}")
    for root, where in ((models_dir(), "bundled"), (user_models_dir(), "user")):
        print(f"{where} models folder: {root}")
        for path in sorted(root.rglob("*.safetensors")) if root.is_dir() else []:
            card_path = path.with_suffix(".json")
            card = json.loads(card_path.read_text()) if card_path.exists() else {}
            rel = path.relative_to(root)
            print(f"  {str(rel):<45} {card.get('kind', 'denoiser'):<9} {card.get('sha256', '?')[:16]}")
    _ = bundled_dir
    return 0


COMMANDS = {
    "inspect": cmd_inspect,
    "sample": cmd_sample,
    "run": cmd_run,
    "probe": cmd_probe,
    "models": cmd_models,
    "simulate-low-dose": cmd_simulate,
    "denoise": cmd_denoise,
    "evaluate": cmd_evaluate,
    "train": cmd_train,
}


def _interrupt_on_sigterm():
    """SIGTERM (a batch system's stop, `kill`) unwinds like Ctrl-C, so partial files are removed.
    Returns the previous handler (None when not in the main thread)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, handler)


def _quiet_libraries() -> None:
    """Library warnings are not for the user of a command line (pydicom's on real scanner files,
    numpy's floating-point notes, torch's): what matters is checked and said by this tool itself
    (non-finite images and outputs are errors, geometry problems are our own warnings)."""
    import warnings

    import numpy as np

    for module in ("pydicom", "torch", "SimpleITK", "scipy", "skimage", "nrrd", "numpy"):
        warnings.filterwarnings("ignore", module=module)
    np.seterr(all="ignore")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.debug:
        _quiet_libraries()
    previous = _interrupt_on_sigterm()
    try:
        return COMMANDS[args.command](args) or 0
    except KeyboardInterrupt:
        print("error: interrupted; no output was written", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `ctinvariances models list | head`: the reader has gone, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except CTInvariancesError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError, RuntimeError) as exc:
        if args.debug:
            raise
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: {where}{msg[:300]} (run with --debug for details)", file=sys.stderr)
        return EXIT_USAGE
    except MemoryError:
        if args.debug:
            raise
        print(
            "error: ran out of memory; no output was written (use fewer --samples or --slices, "
            "a smaller --batch-size, or another machine)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - a user gets one line, never a traceback
        if args.debug:
            raise
        msg = " ".join(str(exc).split())[:300]
        print(
            f"error: unexpected {type(exc).__name__}: {msg}; no output was written (run with --debug "
            "for the traceback and please report it)",
            file=sys.stderr,
        )
        return EXIT_USAGE
    finally:
        if previous is not None:
            import signal

            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
