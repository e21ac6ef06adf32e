"""Sampling a CT volume slice by slice into a run folder (what the CLI and Slicer call).

Writes ``samples.seq.nrrd`` (K samples, HU), ``denoised.nrrd`` (f(x)), ``std_map.nrrd`` (pixel-wise
std over samples, HU), ``metrics.json`` and ``run.json``. Slices stream to disk, so memory does not
grow with the number of slices. Files appear only when the run completes; a failed or cancelled run
leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..io.streaming import StreamingNrrdWriter
from ..io.volume import CTVolume
from ..lowdose import estimate_noise_hu
from ..metrics import body_mask
from .sampler import InvarianceSampler, std_map

OUTPUT_FILES = ("samples.seq.nrrd", "denoised.nrrd", "std_map.nrrd", "metrics.json", "run.json")


class Cancelled(Exception):
    """Raised inside ``sample_volume`` when ``should_stop()`` returns True."""


def _rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask].astype(np.float64) - b[mask]) ** 2))) if mask.any() else 0.0


def slice_check(
    sampler: InvarianceSampler, x: np.ndarray, fx: np.ndarray, samples: np.ndarray, mask: np.ndarray
) -> dict:
    """Check the samples: f(x~) against f(x) inside the body, as RMSE ratios per sample."""
    f_samples = sampler.denoiser.denoise_slices(samples, batch_size=4)
    moved = [_rmse(s, x, mask) for s in samples]
    kept = [_rmse(fs, fx, mask) for fs in f_samples]
    ratios = [k / m if m > 0 else 0.0 for k, m in zip(kept, moved)]
    return {"rmse_input_hu": moved, "rmse_output_hu": kept, "ratio": ratios}


def sample_volume(
    volume: CTVolume,
    sampler: InvarianceSampler,
    out_dir: str | Path,
    n_samples: int = 16,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
    check: bool = True,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    parameters: dict | None = None,
) -> dict:
    """Sample every slice of ``volume``; returns the metrics dict (also written to metrics.json)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = [n for n in OUTPUT_FILES if (out / n).exists()]
    if existing:
        from ..errors import InputError

        raise InputError(f"output folder already holds {', '.join(existing)}; choose a new folder", out)
    t0 = time.perf_counter()
    writers = [
        StreamingNrrdWriter(out / "samples.seq.nrrd", volume, n_items=n_samples),
        StreamingNrrdWriter(out / "denoised.nrrd", volume),
        StreamingNrrdWriter(out / "std_map.nrrd", volume),
    ]
    per_slice = []
    try:
        for k in range(volume.shape[0]):
            if should_stop and should_stop():
                raise Cancelled()
            x = volume.array[k]
            res = sampler.sample(x, n_samples, temperature=temperature, seed=seed, batch_size=batch_size,
                                 slice_index=int(volume.source_slice_indices[k]))
            writers[0].write_slice(k, res.samples)
            writers[1].write_slice(k, res.denoised)
            writers[2].write_slice(k, std_map(res.samples))
            body = body_mask(x) & res.sampled_mask
            entry = {
                "slice": int(volume.source_slice_indices[k]),
                "sampled_fraction": float(res.sampled_mask.mean()),
                "std_map_median_hu_body": float(np.median(std_map(res.samples)[body])) if body.any() else 0.0,
                "input_noise_hu_highpass": estimate_noise_hu(x),
            }
            if check:
                entry.update(slice_check(sampler, x, res.denoised, res.samples, body))
            per_slice.append(entry)
            if progress:
                progress(1)
        metrics = _summarise(per_slice, check)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        run = _run_record(volume, sampler, n_samples, seed, temperature, batch_size, parameters)
        _write_json_atomic(out / "metrics.json", metrics)
        _write_json_atomic(out / "run.json", run)
        for w in writers:
            w.close()
    except BaseException:
        for w in writers:
            w.abort()
        for name in ("metrics.json", "run.json"):
            (out / name).unlink(missing_ok=True)
        raise
    return metrics


def _summarise(per_slice: list[dict], check: bool) -> dict:
    summary: dict = {"n_slices": len(per_slice), "per_slice": per_slice}
    if check and per_slice:
        ratios = np.concatenate([s["ratio"] for s in per_slice])
        moved = np.concatenate([s["rmse_input_hu"] for s in per_slice])
        kept = np.concatenate([s["rmse_output_hu"] for s in per_slice])
        summary["fidelity"] = {
            "description": "inside the body: RMSE_HU(f(x~), f(x)) / RMSE_HU(x~, x) over all samples",
            "median_ratio": float(np.median(ratios)),
            "max_ratio": float(np.max(ratios)),
            "median_rmse_input_hu": float(np.median(moved)),
            "median_rmse_output_hu": float(np.median(kept)),
        }
    return summary


def _run_record(volume, sampler, n_samples, seed, temperature, batch_size, parameters) -> dict:
    cards = sampler.cards or {}
    return {
        "ctinvariances_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "device": str(sampler.device),
        "input": {
            "source": volume.source,
            "shape_kji": list(volume.shape),
            "slices": volume.source_slice_indices,
        },
        "denoiser": sampler.denoiser.describe(),
        "cvae": {k: (cards.get("cvae") or {}).get(k) for k in ("file", "sha256", "size")},
        "cinn": None
        if sampler.cinn is None
        else {k: (cards.get("cinn") or {}).get(k) for k in ("file", "sha256")},
        "n_samples": n_samples,
        "seed": seed,
        "temperature": temperature,
        "batch_size": batch_size,
        "tile": {"size": sampler.patch, "overlap": sampler.overlap, "skip_air": sampler.skip_air,
                 "latents": sampler.tile_latents},
        "parameters": parameters or {},
    }


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
