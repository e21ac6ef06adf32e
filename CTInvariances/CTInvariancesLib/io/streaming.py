"""NRRD files written slice by slice (memory independent of the number of slices), atomically.

Used for sampling outputs: a scalar volume (``denoised.nrrd``, ``std_map.nrrd``) or a Slicer volume
sequence (``samples.seq.nrrd``: sizes I J K N, kinds ``domain domain domain list``, list axis last,
as Slicer writes it). Data go to ``<name>.partial-<pid>`` and are renamed on ``close()``; ``abort()``
(or an exception inside ``with``) removes them, so a failed run leaves no half-written file.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import default_file_mode, partial_name
from .volume import CTVolume


def _vec(v) -> str:
    return "(" + ",".join(repr(float(x)) for x in v) + ")"


class StreamingNrrdWriter:
    def __init__(
        self,
        path: str | Path,
        geometry: CTVolume,
        n_items: int | None = None,
        index_name: str = "sample",
        dtype=np.float32,
        extra: dict[str, str] | None = None,
    ) -> None:
        self.path = Path(path)
        self.partial = self.path.with_name(partial_name(self.path.name))
        k, j, i = geometry.shape
        self.shape = (k, j, i) if n_items is None else (n_items, k, j, i)
        dmat = geometry.direction_matrix
        dirs = [_vec(dmat[:, a] * geometry.spacing[a]) for a in range(3)]
        sizes = [i, j, k] + ([] if n_items is None else [n_items])
        lines = [
            "NRRD0004",
            "# Complete NRRD file format specification at http://teem.sourceforge.net/nrrd/format.html",
            f"type: {'float' if np.dtype(dtype) == np.float32 else np.dtype(dtype).name}",
            f"dimension: {len(sizes)}",
            "space: left-posterior-superior",
            "sizes: " + " ".join(map(str, sizes)),
            "space directions: " + " ".join(dirs + ([] if n_items is None else ["none"])),
            "kinds: domain domain domain" + ("" if n_items is None else " list"),
            "endian: little",
            "encoding: raw",
            "space origin: " + _vec(geometry.origin),
        ]
        if n_items is not None:
            lines += [
                f'labels: "" "" "" "{index_name}"',
                "axis 3 index type:=numeric",
                "axis 3 index values:=" + " ".join(str(n) for n in range(n_items)),
                "DataNodeClassName:=vtkMRMLScalarVolumeNode",
            ]
        for key, value in (extra or {}).items():
            lines.append(f"{key}:={value}")
        header = ("\n".join(lines) + "\n\n").encode("ascii")
        try:
            self.partial.parent.mkdir(parents=True, exist_ok=True)
            with open(self.partial, "wb") as f:
                f.write(header)
                f.truncate(len(header) + int(np.prod(self.shape)) * np.dtype(dtype).itemsize)
            self.data = np.memmap(
                self.partial,
                dtype=np.dtype(dtype).newbyteorder("<"),
                mode="r+",
                offset=len(header),
                shape=self.shape,
            )
        except OSError as exc:
            self.abort()
            raise InputError(f"could not write the output ({exc.strerror or exc})", self.path) from None

    def write_slice(self, k: int, values: np.ndarray) -> None:
        """Slice k: [J, I] for a volume, [N, J, I] for a sequence."""
        if len(self.shape) == 3:
            self.data[k] = values
        else:
            self.data[:, k] = values

    def close(self) -> Path:
        try:
            self.data.flush()
            del self.data
            os.chmod(self.partial, default_file_mode())
            os.replace(self.partial, self.path)
        except OSError as exc:  # name the output the user asked for, not our temporary file
            self.abort()
            raise InputError(f"could not write the output ({exc.strerror or exc})", self.path) from None
        return self.path

    def abort(self) -> None:
        if hasattr(self, "data"):
            del self.data
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> StreamingNrrdWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def read_sequence(path: str | Path) -> np.ndarray:
    """The items of a ``.seq.nrrd`` written by :class:`StreamingNrrdWriter`, as [N, K, J, I] float32."""
    import nrrd

    data, header = nrrd.read(str(path))
    if data.ndim != 4 or header.get("kinds", [None] * 4)[-1] != "list":
        raise ValueError(f"{path}: not a sequence (expected 4 axes with the list axis last)")
    return np.ascontiguousarray(np.transpose(data, (3, 2, 1, 0)), dtype=np.float32)
