"""Sampling a CT volume slice by slice into a run folder (what the CLI and Slicer call).

Writes ``samples.seq.nrrd`` (K samples, HU; after the consistency step unless it is 0),
``denoised.nrrd`` (f(x)), ``std_map.nrrd`` (pixel-wise std over samples, HU), ``metrics.json`` and
``run.json``; with ``keep_raw`` also ``samples_raw.seq.nrrd`` (the sampler's raw draws). Slices
stream to disk, so memory does not grow with the number of slices. Files appear only when the run
completes; a failed or cancelled run leaves nothing behind.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import Cancelled
from ..files import check_can_create, input_sha256, partial_name, remove_stale_partials
from ..io.streaming import StreamingNrrdWriter
from ..io.volume import CTVolume, restore_padding, without_padding
from ..lowdose import estimate_noise_hu
from ..metrics import body_mask
from .consistency import DEFAULT_METHOD, DEFAULT_STEPS, consistency_project
from .sampler import std_map

OUTPUT_FILES = (
    "samples.seq.nrrd",
    "samples_raw.seq.nrrd",
    "denoised.nrrd",
    "std_map.nrrd",
    "metrics.json",
    "run.json",
)
__all__ = ["Cancelled", "sample_volume", "slice_check", "diversity"]


def _rmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.sqrt(np.mean((a[mask].astype(np.float64) - b[mask]) ** 2))) if mask.any() else 0.0


def slice_check(
    denoiser, x: np.ndarray, fx: np.ndarray, samples: np.ndarray, mask: np.ndarray, batch_size: int = 4
) -> dict:
    """Check the samples: f(x~) against f(x) inside ``mask``, as RMSE ratios per sample.

    Also returns f(x~) (key ``denoised``, not JSON) for further use by the caller.
    """
    f_samples = denoiser.denoise_slices(samples, batch_size=batch_size)
    moved = [_rmse(s, x, mask) for s in samples]
    kept = [_rmse(fs, fx, mask) for fs in f_samples]
    ratios = [k / m if m > 0 else 0.0 for k, m in zip(kept, moved)]
    return {"rmse_input_hu": moved, "rmse_output_hu": kept, "ratio": ratios, "denoised": f_samples}


def diversity(samples: np.ndarray, mask: np.ndarray) -> dict:
    """How much the samples vary: median of the std map and median pairwise RMSE, inside ``mask``."""
    k = len(samples)
    pairs = [_rmse(samples[i], samples[j], mask) for i in range(k) for j in range(i + 1, k)]
    return {
        "std_map_median_hu": float(np.median(std_map(samples)[mask])) if mask.any() and k > 1 else 0.0,
        "pairwise_rmse_median_hu": float(np.median(pairs)) if pairs else 0.0,
    }


def fresh_noise_ratio(samples: np.ndarray, f_samples: np.ndarray, mask: np.ndarray) -> list[float]:
    """RMSE(f(x1), f(x2)) / RMSE(x1, x2) over disjoint pairs of noise-sampler draws f(x) + n_k: what
    the denoiser does to new noise, the reference an invariance sample must beat."""
    out = []
    for i in range(0, len(samples) - 1, 2):
        moved = _rmse(samples[i], samples[i + 1], mask)
        if moved > 0:
            out.append(_rmse(f_samples[i], f_samples[i + 1], mask) / moved)
    return out


def sample_volume(
    volume: CTVolume,
    sampler,
    out_dir: str | Path,
    n_samples: int = 16,
    seed: int = 0,
    temperature: float = 1.0,
    batch_size: int = 64,
    check: bool = True,
    consistency_steps: int = DEFAULT_STEPS,
    consistency_method: str = DEFAULT_METHOD,
    consistency_batch: int | None = None,
    keep_raw: bool = False,
    progress: Callable[[int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    parameters: dict | None = None,
    overwrite: bool = False,
    slice_hook: Callable[[int, np.ndarray, np.ndarray, np.ndarray, dict], None] | None = None,
) -> dict:
    """Sample every slice of ``volume``; returns the metrics dict (also written to metrics.json).

    ``slice_hook(k, x, samples, f(x), entry)`` is called per slice while its samples are in memory
    (the main job's analysis); it may add keys to the slice's metrics ``entry``.

    ``sampler``: an :class:`InvarianceSampler` (cINN or prior) or a :class:`NoiseSampler`.
    A folder holding earlier results is refused unless ``overwrite``; then they are replaced when
    this run succeeds (and kept when it fails). A folder this run created is removed if it fails.
    """
    out = Path(out_dir)
    check_output_folder(out, overwrite)
    remove_stale_partials(out)  # what an earlier run killed outright (no clean-up ran) left behind
    # the outermost folder this run creates: removed again if the run fails
    created = next((p for p in reversed([out, *out.parents]) if not p.exists()), None)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    writers = {
        "samples": StreamingNrrdWriter(out / "samples.seq.nrrd", volume, n_items=n_samples),
        "denoised": StreamingNrrdWriter(out / "denoised.nrrd", volume),
        "std": StreamingNrrdWriter(out / "std_map.nrrd", volume),
    }
    if keep_raw and consistency_steps > 0:
        writers["raw"] = StreamingNrrdWriter(out / "samples_raw.seq.nrrd", volume, n_items=n_samples)
    pixel_mm = (float(volume.spacing[1]), float(volume.spacing[0]))  # (row, column) mm
    per_slice = []
    timing = {"sampling_s": 0.0, "consistency_s": 0.0}
    try:
        for k in range(volume.shape[0]):
            if should_stop and should_stop():
                raise Cancelled()
            padding = volume.padding_mask(k)
            x = without_padding(volume.array[k], padding)  # the padding is air while working
            t = time.perf_counter()
            res = sampler.sample(
                x,
                n_samples,
                temperature=temperature,
                seed=seed,
                batch_size=batch_size,
                slice_index=int(volume.source_slice_indices[k]),
                pixel_mm=pixel_mm,
            )
            timing["sampling_s"] += time.perf_counter() - t
            raw = res.samples
            samples = raw
            t = time.perf_counter()
            if consistency_steps > 0:
                cons = consistency_project(
                    sampler.denoiser,
                    x,
                    raw,
                    consistency_steps,
                    consistency_method,
                    denoised_hu=res.denoised,
                    batch_size=consistency_batch,
                    should_stop=should_stop,
                )
                samples = cons.samples
            timing["consistency_s"] += time.perf_counter() - t
            smap = std_map(samples)
            x_in = volume.array[k]  # written outputs keep the input's padding: not noised, not denoised
            writers["samples"].write_slice(k, restore_padding(samples.copy(), x_in, padding))
            writers["denoised"].write_slice(k, restore_padding(res.denoised.copy(), x_in, padding))
            writers["std"].write_slice(k, np.where(padding, 0.0, smap) if padding is not None else smap)
            if "raw" in writers:
                writers["raw"].write_slice(k, restore_padding(raw.copy(), x_in, padding))
            body = body_mask(x) & res.sampled_mask
            entry = {
                "slice": int(volume.source_slice_indices[k]),
                "sampled_fraction": float(res.sampled_mask.mean()),
                "std_map_median_hu_body": float(np.median(smap[body])) if body.any() else 0.0,
                "input_noise_hu_highpass": estimate_noise_hu(x),
                "diversity": diversity(samples, body),
            }
            if consistency_steps > 0:
                entry["diversity_raw"] = diversity(raw, body)
            if check:
                chk = slice_check(sampler.denoiser, x, res.denoised, samples, body)
                f_samples = chk.pop("denoised")
                entry.update(chk)
                if consistency_steps > 0:
                    raw_chk = slice_check(sampler.denoiser, x, res.denoised, raw, body)
                    f_samples = raw_chk.pop("denoised")
                    entry["raw"] = raw_chk
                if getattr(sampler, "kind", "") == "noise":
                    entry["fresh_noise_ratio"] = fresh_noise_ratio(raw, f_samples, body)
            if slice_hook is not None:
                slice_hook(k, x, samples, res.denoised, entry)
            per_slice.append(entry)
            if progress:
                progress(1)
        metrics = _summarise(per_slice, check, consistency_steps > 0)
        metrics["seconds"] = round(time.perf_counter() - t0, 2)
        metrics["timing"] = {k: round(v, 2) for k, v in timing.items()}
        consistency = {"steps": consistency_steps, "method": consistency_method}
        run = _run_record(volume, sampler, n_samples, seed, temperature, batch_size, parameters, consistency)
        for w in writers.values():
            w.close()
        written = {w.path.name for w in writers.values()} | {"metrics.json", "run.json"}
        for name in OUTPUT_FILES:  # an overwritten run's files that this run does not make
            if name not in written:
                (out / name).unlink(missing_ok=True)
        _write_json_atomic(out / "run.json", run)
        _write_json_atomic(out / "metrics.json", metrics)
    except BaseException:
        for w in writers.values():
            w.abort()
        if created is not None:
            shutil.rmtree(created, ignore_errors=True)
        raise
    return metrics


def check_output_folder(out: Path, overwrite: bool = False) -> None:
    """Before any work: ``out`` may be new, an empty folder, or (with ``overwrite``) hold results."""
    from ..errors import InputError

    if out.exists() and not out.is_dir():
        raise InputError("exists and is not a folder", out)
    existing = [n for n in OUTPUT_FILES if (out / n).exists()]
    if existing and not overwrite:
        raise InputError(
            f"output folder already holds {', '.join(existing)}; choose a new folder or give --overwrite", out
        )
    check_can_create(out)


def _fidelity(rows: list[dict]) -> dict:
    ratios = np.concatenate([s["ratio"] for s in rows])
    moved = np.concatenate([s["rmse_input_hu"] for s in rows])
    kept = np.concatenate([s["rmse_output_hu"] for s in rows])
    return {
        "description": "inside the body: RMSE_HU(f(x~), f(x)) / RMSE_HU(x~, x) over all samples",
        "median_ratio": float(np.median(ratios)),
        "max_ratio": float(np.max(ratios)),
        "median_rmse_input_hu": float(np.median(moved)),
        "median_rmse_output_hu": float(np.median(kept)),
    }


def _summarise(per_slice: list[dict], check: bool, consistent: bool) -> dict:
    summary: dict = {"n_slices": len(per_slice)}
    if per_slice:
        for key in ("diversity", "diversity_raw"):
            if key in per_slice[0]:
                summary[key] = {
                    k: float(np.median([s[key][k] for s in per_slice])) for k in per_slice[0][key]
                }
    if check and per_slice:
        summary["fidelity"] = _fidelity(per_slice)
        if consistent:
            summary["fidelity_raw"] = _fidelity([s["raw"] for s in per_slice])
        fresh = [r for s in per_slice for r in s.get("fresh_noise_ratio", [])]
        if fresh:
            summary["fresh_noise_ratio"] = {
                "description": "RMSE(f(x1), f(x2)) / RMSE(x1, x2) for pairs of fresh-noise draws "
                "f(x) + n: what the denoiser does to new noise",
                "median": float(np.median(fresh)),
            }
    summary["per_slice"] = per_slice
    return summary


def _run_record(volume, sampler, n_samples, seed, temperature, batch_size, parameters, consistency) -> dict:
    cards = sampler.cards or {}
    tiled = hasattr(sampler, "patch")
    learned = hasattr(sampler, "cvae")
    return {
        "ctinvariances_version": __version__,
        "torch_version": torch.__version__,
        "numpy_version": np.__version__,
        "python": platform.python_version(),
        "device": str(sampler.device),
        "input": {
            "source": volume.source,
            "sha256": input_sha256(volume.source) if volume.source else None,
            "shape_kji": list(volume.shape),
            "slices": volume.source_slice_indices,
        },
        "denoiser": sampler.denoiser.describe(),
        "sampler": sampler.kind,
        "consistency": consistency,
        "cvae": {k: (cards.get("cvae") or {}).get(k) for k in ("file", "sha256", "size")}
        if learned
        else None,
        "cinn": None
        if not learned or sampler.cinn is None
        else {k: (cards.get("cinn") or {}).get(k) for k in ("file", "sha256")},
        "n_samples": n_samples,
        "seed": seed,
        "temperature": temperature,
        "batch_size": batch_size,
        "tile": {
            "size": sampler.patch,
            "overlap": sampler.overlap,
            "skip_air": sampler.skip_air,
            "latents": sampler.tile_latents,
        }
        if tiled
        else None,
        "parameters": parameters or {},
    }


def finite_json(obj):
    """``obj`` with every NaN or infinite float replaced by None: what is written is valid JSON."""
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_json(v) for v in obj]
    if isinstance(obj, np.generic):
        return finite_json(obj.item())
    return obj


def _write_json_atomic(path: Path, obj: dict) -> None:
    tmp = path.with_name(partial_name(path.name))
    tmp.write_text(json.dumps(finite_json(obj), indent=2, allow_nan=False) + "\n")
    os.replace(tmp, path)
