"""Read any supported CT input (DICOM folder or file, NRRD, NIfTI, MHA/MHD) and write results."""

from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..errors import InputError
from ..files import default_file_mode, partial_name, remove_stale_partials
from .dicom import is_dicom_file, read_dicom_file, read_dicom_folder
from .volume import CTVolume

sitk.ProcessObject_SetGlobalWarningDisplay(False)  # our own warnings say it, once and clearly

IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".nii", ".nii.gz", ".mha", ".mhd")
WRITE_SUFFIXES = (".nrrd", ".nii", ".nii.gz", ".mha")
# what any CT holds in HU, generously: air (and padding values such as -3024) to dense metal with
# an extended CT scale; outside it the file holds something else (raw data, another unit)
HU_PLAUSIBLE = (-10000.0, 100000.0)
PADDING_BELOW_HU = -1500.0  # an image file's voxels this far below air are padding (see _read_itk_image)


def _suffix(path: Path) -> str:
    name = path.name.lower()
    for suf in sorted(IMAGE_SUFFIXES + (".dcm",), key=len, reverse=True):
        if name.endswith(suf):
            return suf
    return path.suffix.lower()


def read_volume(path: str | Path, series_uid: str | None = None, tilt: str = "resample") -> CTVolume:
    """Read a CT volume in HU from a DICOM folder, a DICOM file, NRRD, NIfTI or MetaImage.

    Raises :class:`InputError` naming the file and the problem for anything unusable.
    """
    path = Path(path)
    if not path.exists():
        raise InputError("no such file or folder", path)
    if path.is_dir():
        return _checked(read_dicom_folder(path, series_uid=series_uid, tilt=tilt), path)
    if series_uid is not None:  # a choice that would be silently ignored
        raise InputError(
            f"--series {series_uid} picks a series in a DICOM folder; this is a single file", path
        )
    if path.stat().st_size == 0:
        raise InputError("file is empty", path)
    suffix = _suffix(path)
    if suffix in IMAGE_SUFFIXES:
        return _checked(_read_itk_image(path, suffix), path)
    if suffix == ".dcm" or is_dicom_file(path):
        return _checked(read_dicom_file(path), path)
    raise InputError(
        "unsupported file type: give a DICOM folder or file, or a " + ", ".join(IMAGE_SUFFIXES) + " image",
        path,
    )


def _checked(volume: CTVolume, path: Path) -> CTVolume:
    """Refuse what no CT holds: non-finite voxels, and non-finite or non-positive spacing."""
    bad = int(np.size(volume.array) - np.count_nonzero(np.isfinite(volume.array)))
    if bad:
        raise InputError(f"{bad} voxels are NaN or infinite: not a usable CT image", path)
    spacing = np.asarray(volume.spacing, dtype=np.float64)
    if not (np.isfinite(spacing).all() and (spacing > 0).all()):
        raise InputError(f"voxel spacing {tuple(float(v) for v in spacing)} is not positive and finite", path)
    if not np.isfinite(np.asarray(volume.origin, dtype=np.float64)).all():
        raise InputError(f"image position {tuple(volume.origin)} is not finite", path)
    d = np.asarray(volume.direction_matrix, dtype=np.float64)
    # sheared (tilt kept) directions are allowed; a singular or non-finite one is not a geometry
    if not (np.isfinite(d).all() and abs(np.linalg.det(d)) > 1e-6):
        raise InputError("image orientation is degenerate (zero or non-finite direction vectors)", path)
    return volume


def _check_header(path: Path, suffix: str) -> None:
    if suffix in (".nrrd", ".nhdr"):
        with open(path, "rb") as f:
            magic = f.read(8)
        if not magic.startswith(b"NRRD000"):
            raise InputError(
                f"unreadable NRRD header: the file must start with 'NRRD000x', found {magic[:8]!r}",
                path,
            )
    _check_data_size(path, suffix)


def _check_inside(header: Path, ref: str, kind: str) -> None:
    """A header whose data file lies outside the header's folder is refused: a file sent to a user
    must not make the tool read something else on their machine."""
    folder = header.parent.resolve()
    target = (header.parent / ref).resolve()
    if Path(ref).is_absolute() or folder not in target.parents:
        raise InputError(
            f"{kind} data file '{ref}' lies outside the header's folder: refused (copy the data file "
            "next to the header and name it without a path)",
            header,
        )


_NRRD_BYTES = {
    1: ("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t", "char"),
    2: (
        "short",
        "short int",
        "signed short",
        "signed short int",
        "int16",
        "int16_t",
        "ushort",
        "unsigned short",
        "unsigned short int",
        "uint16",
        "uint16_t",
    ),
    4: ("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t", "float"),
    8: (
        "longlong",
        "long long",
        "long long int",
        "signed long long",
        "signed long long int",
        "int64",
        "int64_t",
        "ulonglong",
        "unsigned long long",
        "unsigned long long int",
        "uint64",
        "uint64_t",
        "double",
    ),
}
_MET_BYTES = {
    "MET_UCHAR": 1,
    "MET_CHAR": 1,
    "MET_SHORT": 2,
    "MET_USHORT": 2,
    "MET_INT": 4,
    "MET_UINT": 4,
    "MET_LONG": 4,
    "MET_ULONG": 4,
    "MET_FLOAT": 4,
    "MET_DOUBLE": 8,
    "MET_LONG_LONG": 8,
    "MET_ULONG_LONG": 8,
}


def _header_fields(path: Path, suffix: str) -> tuple[dict, int]:
    """Header fields (lower-case keys) and the byte offset where attached data starts."""
    fields: dict[str, str] = {}
    offset = 0
    with open(path, "rb") as f:
        for raw in f:
            offset += len(raw)
            line = raw.decode("latin-1").strip()
            if suffix in (".nrrd", ".nhdr"):
                if not line:
                    break
                key, sep, value = line.partition(":")
                if sep and not line.startswith("#"):
                    fields[key.strip().lower()] = value.lstrip("=").strip()
            else:
                key, sep, value = line.partition("=")
                if sep:
                    fields[key.strip().lower()] = value.strip()
                if key.strip().lower() == "elementdatafile" or offset > 65536:
                    break
    return fields, offset


def _check_data_size(path: Path, suffix: str) -> None:
    """Before ITK reads (and allocates): the image the header promises must fit in memory, and
    uncompressed data must be as long as the header says (ITK would fill the rest with zeros)."""
    from ..files import available_memory_bytes, format_bytes

    if suffix not in (".nrrd", ".nhdr", ".mha", ".mhd"):
        return
    fields, offset = _header_fields(path, suffix)
    nrrd = suffix in (".nrrd", ".nhdr")
    ref = (fields.get("data file") or fields.get("datafile")) if nrrd else fields.get("elementdatafile")
    if suffix == ".mhd" and ref is None:
        raise InputError("MetaImage header has no ElementDataFile line", path)
    detached = (
        ref is not None and ref.upper() != "LOCAL" and not ref.upper().startswith("LIST") and "%" not in ref
    )
    data = None
    if detached:  # whatever the encoding or the rest of the header: never read outside its folder
        kind = "NRRD" if nrrd else "MetaImage"
        _check_inside(path, ref.split()[0], kind)
        data = path.parent / ref.split()[0]
        if not data.is_file():
            raise InputError(f"{kind} data file '{ref.split()[0]}' is missing next to the header", path)
    try:
        if suffix in (".nrrd", ".nhdr"):
            dims = [int(v) for v in fields["sizes"].split()]
            kind = fields["type"].lower()
            size = next((n for n, names in _NRRD_BYTES.items() if kind in names), None)
            encoding = fields.get("encoding", "raw").lower()
            compressed = encoding not in ("raw",)
            skips = "byte skip" in fields or "line skip" in fields or "byteskip" in fields
        else:
            dims = [int(v) for v in fields["dimsize"].split()]
            size = _MET_BYTES.get(fields.get("elementtype", "").upper())
            size = size * int(fields.get("elementnumberofchannels", 1)) if size else None
            compressed = fields.get("compresseddata", "false").lower() == "true"
            skips = "headersize" in fields
    except (KeyError, ValueError):
        return  # ITK says what is wrong with the header
    if size is None or not dims or min(dims) < 1:
        return
    expected = float(np.prod(np.asarray(dims, dtype=np.float64))) * size
    limit = available_memory_bytes()
    if limit is not None and 2 * expected > limit:
        raise InputError(
            f"the header promises a {' x '.join(map(str, dims))} image ({format_bytes(expected)}), more than "
            f"this machine can hold ({format_bytes(limit)} available)",
            path,
        )
    if compressed or skips:
        return  # compressed streams are checked to their end in _check_complete
    if data is not None:
        available = data.stat().st_size
    elif ref is None or ref.upper() == "LOCAL":
        available = path.stat().st_size - offset
    else:
        return  # a list of files or a pattern: ITK reads them
    if available < expected:
        raise InputError(
            f"holds {available} bytes of image data where its header promises {int(expected)} "
            f"({' x '.join(map(str, dims))}): the file is truncated",
            path,
        )


def _check_complete(path: Path, suffix: str) -> None:
    """A truncated compressed file reads without complaint (ITK fills the missing voxels with 0):
    decompress the stream to its end first, which fails on a cut file."""
    import gzip
    import zlib

    try:
        if suffix == ".nii.gz" or path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
        elif suffix == ".nrrd":
            with open(path, "rb") as f:
                lines = []
                for line in f:  # the header ends at the first empty line
                    if not line.strip():
                        break
                    lines.append(line)
                header = b"".join(lines).decode("latin-1").lower()
                if re.search(r"^encoding:\s*(gz|gzip)\s*$", header, re.M):
                    d = zlib.decompressobj(wbits=47)  # gzip or zlib stream, decompressed in chunks
                    while chunk := f.read(1 << 22):
                        d.decompress(chunk)
                    if not d.eof:
                        raise EOFError("compressed stream ends early")
    except (EOFError, OSError, zlib.error) as exc:
        raise InputError(f"the compressed data is truncated or corrupt ({exc})", path) from None


def _read_itk_image(path: Path, suffix: str) -> CTVolume:
    _check_header(path, suffix)
    _check_complete(path, suffix)
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        kind = {".nrrd": "NRRD", ".nhdr": "NRRD", ".mha": "MetaImage", ".mhd": "MetaImage"}.get(
            suffix, "NIfTI"
        )
        detail = " ".join(str(exc).split())
        detail = detail[detail.rfind(":") + 1 :].strip()[:160] if ":" in detail else detail[:160]
        header = "header" if kind == "NRRD" else "file"
        raise InputError(f"unreadable {kind} {header} ({detail or 'ITK could not parse it'})", path) from None
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(
            f"has {image.GetNumberOfComponentsPerPixel()} components per voxel: a CT image has one",
            path,
        )
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise InputError(f"is a {dim}-D image: give a 2-D slice or a 3-D volume", path)
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if dim == 2:
        spacing = (*image.GetSpacing(), 1.0)
        origin = (*image.GetOrigin(), 0.0)
        d = image.GetDirection()
        direction = (d[0], d[1], 0.0, d[2], d[3], 0.0, 0.0, 0.0, 1.0)
    else:
        spacing, origin, direction = image.GetSpacing(), image.GetOrigin(), image.GetDirection()
    lo, hi = float(arr.min()), float(arr.max())
    # no CT number lies far below air: an image file marks outside the scanned field of view this
    # way (-2048, -3024), as DICOM does with PixelPaddingValue
    padding = arr <= PADDING_BELOW_HU if lo <= PADDING_BELOW_HU else None
    vol = CTVolume(arr, spacing, origin, direction, tags={}, source=str(path), padding=padding)
    if np.isfinite([lo, hi]).all() and (lo < HU_PLAUSIBLE[0] or hi > HU_PLAUSIBLE[1]):
        raise InputError(
            f"values range {lo:.4g} to {hi:.4g}: not CT numbers in HU (expected within "
            f"{HU_PLAUSIBLE[0]:.0f} to {HU_PLAUSIBLE[1]:.0f})",
            path,
        )
    if padding is not None:
        vol.tags["padding_hu"] = [lo, PADDING_BELOW_HU]
        vol.warnings.append(
            f"{int(vol.padding.sum())} voxels at or below {PADDING_BELOW_HU:.0f} HU (down to {lo:.0f}) are "
            "taken as padding outside the field of view: neither noised nor denoised, kept as they are"
        )
    if lo > -500.0 and hi > 800.0:
        vol.warnings.append(
            f"values range {lo:.0f} to {hi:.0f}: no air near -1000 HU; is this HU+1024 (or +1000) "
            "rather than HU? CTInvariances expects HU"
        )
    return vol


def write_volume(volume: CTVolume, path: str | Path) -> Path:
    """Write ``volume`` (float32 HU, geometry preserved) atomically; .nrrd, .nii(.gz) or .mha."""
    path = Path(path)
    suffix = _suffix(path)
    if suffix not in WRITE_SUFFIXES:
        raise InputError(f"cannot write '{suffix}': use one of {', '.join(WRITE_SUFFIXES)}", path)
    image = to_sitk(volume)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f"{partial_name('')}-", suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        sitk.WriteImage(image, tmp, useCompression=True)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except (RuntimeError, OSError) as exc:  # name the file the user asked for, not the temporary one
        Path(tmp).unlink(missing_ok=True)
        first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
        raise InputError(f"could not write the image ({first[:200]})", path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_sitk(volume: CTVolume) -> sitk.Image:
    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.array, dtype=np.float32))
    image.SetSpacing(volume.spacing)
    image.SetOrigin(volume.origin)
    image.SetDirection(volume.direction)
    return image
