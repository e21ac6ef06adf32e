"""The in-memory CT volume: HU array [slice, row, column] plus ITK/LPS geometry and CT tags."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from ..errors import InputError

AIR_HU = -1000.0  # what padding (outside the scanned field of view) is replaced by while working


@dataclass
class CTVolume:
    """A CT volume in HU.

    ``array`` is float32, indexed [k, j, i] (slice, row, column). Geometry follows ITK in LPS:
    ``spacing`` and ``origin`` are in (i, j, k) order (mm), ``direction`` is the 3x3 matrix whose
    columns are the i, j, k axis directions, flattened row-major (as SimpleITK's GetDirection).
    """

    array: np.ndarray
    spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    direction: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    tags: dict = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)
    # voxels outside the reconstructed field of view (DICOM PixelPaddingValue), same shape as array
    padding: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        arr = np.asarray(self.array)
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InputError(f"expected a 2-D or 3-D image, got {arr.ndim} dimensions", self.source)
        self.array = np.ascontiguousarray(arr, dtype=np.float32)
        self.spacing = tuple(float(s) for s in self.spacing)
        self.origin = tuple(float(o) for o in self.origin)
        self.direction = tuple(float(d) for d in self.direction)
        if self.padding is not None:
            self.padding = np.asarray(self.padding, dtype=bool).reshape(self.array.shape)
            if not self.padding.any():
                self.padding = None

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)

    @property
    def direction_matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    @property
    def slice_origins(self) -> np.ndarray | None:
        """LPS position (mm) of pixel (0, 0) of each slice where the regular grid would misplace
        slices (irregularly spaced series: the positions the scanner recorded); None otherwise."""
        origins = self.tags.get("slice_origins_lps")
        return None if origins is None else np.asarray(origins, dtype=float).reshape(-1, 3)

    def index_to_physical(self, k: float, j: float, i: float) -> np.ndarray:
        """LPS position (mm) of voxel index (k, j, i): on the real slice positions where the volume
        keeps them (``slice_origins``), else on the regular grid."""
        origins = self.slice_origins
        d = self.direction_matrix
        if origins is None:
            ijk = np.array([i, j, k], dtype=float)
            return np.asarray(self.origin) + d @ (np.asarray(self.spacing) * ijk)
        k0 = int(np.clip(np.floor(k), 0, len(origins) - 2)) if len(origins) > 1 else 0
        t = float(k) - k0
        base = origins[k0] if len(origins) == 1 else (1 - t) * origins[k0] + t * origins[k0 + 1]
        return base + d[:, 0] * self.spacing[0] * i + d[:, 1] * self.spacing[1] * j

    def physical_to_index(self, point) -> np.ndarray:
        """Index (k, j, i), fractional, of the LPS point ``point`` (the inverse of
        ``index_to_physical``)."""
        p = np.asarray(point, dtype=float)
        d = self.direction_matrix
        origins = self.slice_origins
        if origins is None:
            i, j, k = np.linalg.solve(d @ np.diag(self.spacing), p - np.asarray(self.origin))
            return np.array([k, j, i])
        normal = np.cross(d[:, 0], d[:, 1])
        along = origins @ normal
        h = float(p @ normal)
        k = float(np.interp(h, along, np.arange(len(along)), left=np.nan, right=np.nan))
        if np.isnan(k):  # outside the stack: extrapolate by the end spacing
            end = 0 if h < along[0] else len(along) - 1
            step = (along[1] - along[0]) if end == 0 else (along[-1] - along[-2]) if len(along) > 1 else 1.0
            k = end + (h - along[end]) / (step or 1.0)
        rel = p - self.index_to_physical(k, 0, 0)
        i, j = float(rel @ d[:, 0]) / self.spacing[0], float(rel @ d[:, 1]) / self.spacing[1]
        return np.array([k, j, i])

    def select_slices(self, slices: slice) -> CTVolume:
        """A new volume holding the slices ``slices`` (Python slice over k), geometry updated."""
        n = self.shape[0]
        start, stop, step = slices.indices(n)
        if step <= 0:
            raise InputError(f"slice step must be positive, got {step}", self.source)
        idx = list(range(start, stop, step))
        if not idx:
            raise InputError(
                f"--slices {_fmt_slice(slices)} selects no slice of a volume with {n} slices",
                self.source,
            )
        spacing = list(self.spacing)
        spacing[2] *= step
        tags = dict(self.tags)
        parent = self.source_slice_indices
        tags["source_slice_indices"] = [parent[i] for i in idx]
        for key in ("slice_positions_mm", "slice_origins_lps"):
            if key in tags:
                tags[key] = [tags[key][i] for i in idx]
        return replace(
            self,
            array=self.array[idx].copy(),
            padding=None if self.padding is None else self.padding[idx],
            origin=tuple(self.index_to_physical(idx[0], 0, 0)),
            spacing=tuple(spacing),
            tags=tags,
            warnings=list(self.warnings),
        )

    def crop_in_plane(self, rows: slice, cols: slice) -> CTVolume:
        """A new volume holding rows ``rows`` and columns ``cols`` of every slice, geometry updated."""
        r0, r1, _ = rows.indices(self.shape[1])
        c0, c1, _ = cols.indices(self.shape[2])
        if r1 <= r0 or c1 <= c0:
            raise InputError("the in-plane crop is empty", self.source)
        tags = dict(self.tags)
        if self.slice_origins is not None:
            d = self.direction_matrix
            shift = d[:, 0] * self.spacing[0] * c0 + d[:, 1] * self.spacing[1] * r0
            tags["slice_origins_lps"] = (self.slice_origins + shift).round(4).tolist()
        return replace(
            self,
            array=self.array[:, r0:r1, c0:c1].copy(),
            padding=None if self.padding is None else self.padding[:, r0:r1, c0:c1],
            origin=tuple(self.index_to_physical(0, r0, c0)),
            tags=tags,
            warnings=list(self.warnings),
        )

    @property
    def source_slice_indices(self) -> list[int]:
        """Index of each slice in the volume as read (kept through ``select_slices``)."""
        return list(self.tags.get("source_slice_indices", range(self.shape[0])))

    def padding_mask(self, k: int | None = None) -> np.ndarray | None:
        """Voxels (of slice ``k``, or all) that DICOM's PixelPaddingValue marks as outside the scanned
        field of view; None when there are none."""
        if self.padding is None:
            return None
        mask = self.padding if k is None else self.padding[k]
        return mask if mask.any() else None

    def with_array(self, array: np.ndarray) -> CTVolume:
        """Same geometry and tags, new voxel values (same shape)."""
        if tuple(np.shape(array)) != self.shape and not (
            np.ndim(array) == 2 and (1,) + tuple(np.shape(array)) == self.shape
        ):
            raise ValueError(f"shape {np.shape(array)} does not match volume shape {self.shape}")
        return replace(self, array=array, tags=dict(self.tags), warnings=list(self.warnings))


def without_padding(x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``x`` with its padding voxels set to air, so that no network or simulator sees the padding
    value as attenuation (a padding of -1500 or -3024 HU is not a material)."""
    return x if mask is None else np.where(mask, np.float32(AIR_HU), x).astype(np.float32)


def restore_padding(out: np.ndarray, x: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """``out`` (one image or a stack of them) with the padding voxels given back the input's values:
    padding is neither noised nor denoised."""
    if mask is not None:
        out[..., mask] = x[mask]
    return out


def parse_slices(text: str | None) -> slice:
    """Parse ``a:b`` / ``a:b:c`` / ``a`` (Python-style slice indices) into a slice."""
    if text is None or text.strip() in ("", ":"):
        return slice(None)
    parts = text.strip().split(":")
    try:
        if len(parts) == 1:
            k = int(parts[0])
            return slice(k, k + 1 if k != -1 else None)
        if len(parts) > 3:
            raise ValueError
        nums = [int(p) if p.strip() else None for p in parts]
    except ValueError:
        raise InputError(f"--slices {text!r} is not of the form a:b (Python slice indices)") from None
    return slice(*nums)


def _fmt_slice(s: slice) -> str:
    a = "" if s.start is None else s.start
    b = "" if s.stop is None else s.stop
    return f"{a}:{b}" + ("" if s.step in (None, 1) else f":{s.step}")
