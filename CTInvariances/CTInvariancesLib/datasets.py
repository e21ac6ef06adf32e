"""Paired low-dose / full-dose CT slices simulated from the real CT in ../shared/data: what training,
evaluation and the engine's measurements read (a layer below all of them).

Held out (never trained on), as k indices of the volumes as read (sorted along the slice normal,
0-based): abdomen-siemens-20 k = 14..19 (slices 15-20) and head-ge-28 k = 20..27 (slices 21-28).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import CTInvariancesError
from .io import read_volume
from .lowdose import LowDoseSettings, LowDoseSimulator, slice_seed


@dataclass(frozen=True)
class DataSource:
    folder: str  # relative to the shared data folder
    train: tuple[int, ...]
    holdout: tuple[int, ...]
    tilt: str = "keep"  # slice-wise work: keep the acquired slices untouched


SOURCES = (
    DataSource("ct/abdomen-siemens-20", tuple(range(0, 14)), tuple(range(14, 20))),
    DataSource("ct/head-ge-28", tuple(range(0, 20)), tuple(range(20, 28))),
)


def shared_data_dir() -> Path:
    """$CTINVARIANCES_DATA, else ../shared/data beside the repository."""
    env = os.environ.get("CTINVARIANCES_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def require_shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "ct").is_dir():
        raise CTInvariancesError(
            "shared CT data not found (set CTINVARIANCES_DATA to the folder holding ct/ and phantom/)",
            root,
        )
    return root


def cache_dir() -> Path:
    env = os.environ.get("CTINVARIANCES_CACHE")
    base = Path(env) if env else Path.home() / ".cache" / "ctinvariances"
    base.mkdir(parents=True, exist_ok=True)
    return base


def source_volume(src: DataSource) -> tuple[np.ndarray, tuple[float, float, float]]:
    """The full-dose volume of a shared-data source (HU, [K, J, I]) and its spacing (x, y, z mm),
    decoded once and cached (the abdomen's JPEG 2000 DICOM takes seconds to decode). The cache key is
    the source's lines in the shared data's SHA256SUMS, so changed data is decoded again."""
    root = require_shared_data()
    sums = root / "SHA256SUMS"
    lines = sorted(
        ln for ln in (sums.read_text().splitlines() if sums.exists() else []) if f"/{src.folder}/" in ln
    )
    key = hashlib.sha256(json.dumps([src.folder, src.tilt, lines, "v1"]).encode()).hexdigest()[:16]
    path = cache_dir() / f"volume-{Path(src.folder).name}-{key}.npz"
    if lines and path.exists():
        with np.load(path) as z:
            return z["array"].astype(np.float32), tuple(float(v) for v in z["spacing"])
    vol = read_volume(root / src.folder, tilt=src.tilt)
    array = vol.array.astype(np.float32)
    if lines:
        rounded = np.round(array)
        stored = rounded.astype(np.int16) if np.array_equal(rounded, array) else array
        tmp = path.with_suffix(f".{os.getpid()}.partial.npz")
        np.savez_compressed(tmp, array=stored, spacing=np.array(vol.spacing, np.float64))
        os.replace(tmp, path)
    return array, tuple(float(v) for v in vol.spacing)


def slices_pixel_mm(slices: dict) -> list[tuple[float, float]]:
    """(row, column) pixel spacing of each slice of a slice set (``make_pairs`` or training data):
    its ``pixel_mm`` when it carries one, else its shared-data series named in ``names``."""
    if "pixel_mm" in slices:
        return [(float(p[0]), float(p[1])) for p in slices["pixel_mm"]]
    return [source_pixel_mm(str(n).split("[")[0]) for n in slices["names"]]


def source_pixel_mm(series: str) -> tuple[float, float]:
    """(row, column) pixel spacing of a shared-data series given by its folder name."""
    src = next(s for s in SOURCES if Path(s.folder).name == series)
    spacing = source_volume(src)[1]
    return (spacing[1], spacing[0])


def make_pairs(
    split: str = "train",
    dose_fraction: float = 0.25,
    realisations: int = 2,
    seed: int = 0,
    progress=None,
) -> dict[str, np.ndarray]:
    """Low-dose / full-dose slice pairs (HU) for ``split`` ("train" or "holdout"), cached on disk."""
    if split not in ("train", "holdout"):
        raise ValueError("split must be 'train' or 'holdout'")
    require_shared_data()
    key = json.dumps(
        [split, dose_fraction, realisations, seed, [s.__dict__ for s in SOURCES], "v2-bowtie"], sort_keys=True
    )
    path = cache_dir() / f"pairs-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"  # the projections are the slow part
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=dose_fraction), device=device)
    ld, fd, names, i0s = [], [], [], []
    for src in SOURCES:
        array, spacing = source_volume(src)
        pixel_mm = (spacing[1], spacing[0])
        ks = list(getattr(src, split))
        seeds = [[slice_seed(seed + 1000 * r, k) for r in range(realisations)] for k in ks]
        lows, src_i0 = sim.simulate_slices(array[ks], pixel_mm, seeds, progress)
        for k, low_k, i0 in zip(ks, lows, src_i0):
            for r in range(realisations):
                ld.append(low_k[r])
                fd.append(array[k])
                names.append(f"{Path(src.folder).name}[{k}]#{r}")
                i0s.append(float(i0))
    out = {
        "ld": np.stack(ld).astype(np.float32),
        "fd": np.stack(fd).astype(np.float32),
        "names": np.array(names),
        "i0": np.array(i0s),
    }
    tmp = path.with_suffix(f".{os.getpid()}.partial.npz")  # several ranks may write at once
    np.savez(tmp, **out)
    os.replace(tmp, path)
    return out


def slice_realisations(
    series: str, k: int, n: int, dose_fraction: float = 0.25, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, tuple[float, float]]:
    """``n`` independent low-dose realisations [n, H, W] of full-dose slice ``k`` of a shared-data
    series, the full-dose slice and the pixel spacing (row, col mm); cached on disk. Realisation r
    uses seed ``slice_seed(seed + 1000 * r, k)``, as ``make_pairs`` does."""
    src = next(s for s in SOURCES if Path(s.folder).name == series)
    key = json.dumps([series, k, n, dose_fraction, seed, "v2-bowtie"])
    path = cache_dir() / f"realisations-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"
    array, spacing = source_volume(src)
    pixel_mm = (spacing[1], spacing[0])
    if path.exists():
        with np.load(path) as z:
            return z["ld"], z["fd"], pixel_mm
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    full = array[k]
    sim = LowDoseSimulator(LowDoseSettings(dose_fraction=dose_fraction), device=device)
    ld = sim.simulate_slices(full[None], pixel_mm, [[slice_seed(seed + 1000 * r, k) for r in range(n)]])[0][0]
    tmp = path.with_suffix(f".{os.getpid()}.partial.npz")
    np.savez_compressed(tmp, ld=ld, fd=full.astype(np.float32))
    os.replace(tmp, path)
    return ld, full.astype(np.float32), pixel_mm
