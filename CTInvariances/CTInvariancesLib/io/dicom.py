"""DICOM CT input: validation with pydicom, pixels and geometry with SimpleITK.

Every problem is reported as an :class:`InputError` naming the file (or folder) and the problem.
"""

from __future__ import annotations

import math
import struct
import warnings as pywarnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from ..errors import InputError
from .volume import CTVolume

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
NON_IMAGE_MODALITIES = {
    "SEG": "a Segmentation",
    "RTSTRUCT": "an RT Structure Set",
    "RTPLAN": "an RT Plan",
    "RTDOSE": "an RT Dose grid",
    "RTRECORD": "an RT treatment record",
    "SR": "a Structured Report",
    "PR": "a Presentation State",
    "KO": "a Key Object Selection",
    "REG": "a Registration",
    "DOC": "an encapsulated document",
}
TILT_MODES = ("resample", "keep", "refuse")
_TILT_TOLERANCE_DEG = 0.1
_SPACING_TOLERANCE = 0.01  # relative deviation that counts as inconsistent spacing


@dataclass
class _Slice:
    path: Path
    ds: pydicom.Dataset


def is_dicom_file(path: Path) -> bool:
    """True when the file carries the DICOM Part 10 marker 'DICM' after its preamble."""
    try:
        with open(path, "rb") as f:
            head = f.read(132)
    except OSError:
        return False
    if len(head) == 132 and head[128:132] == b"DICM":
        return True
    # preamble-less (old-style) files start with a group 0002 or 0008 element, little endian
    if head[:2] not in (b"\x02\x00", b"\x08\x00"):
        return False
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception:
        return False
    return "SOPClassUID" in ds or "Modality" in ds


def _read_header(path: Path) -> pydicom.Dataset:
    try:
        with pywarnings.catch_warnings():
            pywarnings.simplefilter("ignore")
            try:
                return pydicom.dcmread(path, defer_size="2 MB")
            except InvalidDicomError:
                # preamble-less (old-style) DICOM: accept only when it parses to real attributes
                ds = pydicom.dcmread(path, defer_size="2 MB", force=True)
                if "SOPClassUID" not in ds and "Modality" not in ds:
                    raise
                return ds
    except InvalidDicomError:
        raise InputError("not a DICOM file", path) from None
    except (EOFError, OSError, ValueError, KeyError, struct.error) as exc:
        raise InputError(f"truncated or corrupt DICOM file ({_short(exc)})", path) from None


def _short(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:160]


def _sop_class_name(ds: pydicom.Dataset) -> str:
    uid = ds.get("SOPClassUID")
    if not uid:
        return "unknown SOP class"
    try:
        return UID(str(uid)).name
    except Exception:
        return str(uid)


def validate_ct_image(ds: pydicom.Dataset, path: Path) -> None:
    """Raise an InputError when ``ds`` is not a single-frame CT image with geometry and pixels."""
    modality = str(ds.get("Modality", "")).upper()
    if modality in NON_IMAGE_MODALITIES:
        raise InputError(
            f"is {NON_IMAGE_MODALITIES[modality]} object ({_sop_class_name(ds)}, modality "
            f"{modality}), not an image: give the CT series it refers to",
            path,
        )
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputError(
            f"has no pixel data ({_sop_class_name(ds)}, modality {modality or 'missing'}): not an image",
            path,
        )
    sop = str(ds.get("SOPClassUID", ""))
    if modality and modality != "CT":
        raise InputError(f"modality is {modality}, not CT: CTInvariances works on CT images", path)
    if not modality and sop and not sop.startswith(CT_IMAGE_STORAGE):
        raise InputError(f"is {_sop_class_name(ds)} without a Modality, not a CT image", path)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise InputError(
            f"is a multi-frame DICOM ({frames} frames, {_sop_class_name(ds)}): multi-frame/enhanced "
            "CT is not supported; export the series as single-frame CT Image Storage",
            path,
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InputError(
            f"is a colour image ({ds.get('PhotometricInterpretation', '?')}, "
            f"{ds.SamplesPerPixel} samples per pixel), not CT attenuation values",
            path,
        )
    if "ImagePositionPatient" not in ds or "ImageOrientationPatient" not in ds:
        raise InputError(
            "is a 2-D-only image: it has no ImagePositionPatient/ImageOrientationPatient, so its "
            "position in the patient is unknown (a screenshot or secondary capture?)",
            path,
        )
    if "PixelSpacing" not in ds:
        raise InputError("has no PixelSpacing: pixel size unknown", path)
    _check_geometry_tags(ds, path)
    _check_pixel_length(ds, path)


def _check_geometry_tags(ds: pydicom.Dataset, path: Path) -> None:
    """Position, orientation and pixel spacing as DICOM defines them: finite, two orthonormal
    direction cosines, positive spacing (to the rounding scanners write)."""

    def numbers(name: str, n: int) -> np.ndarray:
        try:
            values = np.array([float(v) for v in ds.get(name)], dtype=float)
        except (TypeError, ValueError):
            values = np.array([])
        if values.size != n or not np.isfinite(values).all():
            raise InputError(f"{name} {ds.get(name)!r} is not {n} finite numbers", path)
        return values

    numbers("ImagePositionPatient", 3)
    iop = numbers("ImageOrientationPatient", 6)
    row, col = iop[:3], iop[3:]
    if abs(np.linalg.norm(row) - 1) > 0.01 or abs(np.linalg.norm(col) - 1) > 0.01 or abs(row @ col) > 0.01:
        raise InputError(
            f"ImageOrientationPatient {list(iop)} is not two orthonormal direction cosines "
            f"(lengths {np.linalg.norm(row):.3f} and {np.linalg.norm(col):.3f}, dot product {row @ col:.3f})",
            path,
        )
    spacing = numbers("PixelSpacing", 2)
    if (spacing <= 0).any():
        raise InputError(f"PixelSpacing {list(spacing)} is not positive", path)


def _check_pixel_length(ds: pydicom.Dataset, path: Path) -> None:
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and UID(str(ts)).is_compressed:
        return  # decoded (and checked) by the pixel reader
    try:
        rows, cols, bits = int(ds.Rows), int(ds.Columns), int(ds.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise InputError("lacks Rows/Columns/BitsAllocated: image size unknown", path) from None
    expected = rows * cols * bits // 8
    try:
        actual = len(ds.PixelData)
    except Exception as exc:
        raise InputError(f"truncated or corrupt pixel data ({_short(exc)})", path) from None
    if actual >= 2 * expected:  # e.g. BitsAllocated 8 on 16-bit data: the image would be garbage
        raise InputError(
            f"pixel data holds {actual} bytes, but {rows}x{cols} pixels at BitsAllocated {bits} need "
            f"{expected}: the header does not describe the pixels",
            path,
        )
    if actual < expected:
        raise InputError(
            f"is truncated: pixel data holds {actual} bytes, {rows}x{cols} pixels at {bits} bits "
            f"need {expected}",
            path,
        )


def _group_series(files: list[Path]) -> tuple[dict[str, list[_Slice]], list[Path]]:
    """DICOM image files by SeriesInstanceUID (DICOMDIR index files left out), and the files that
    look like broken members (empty, or a .dcm/.ima that is not DICOM)."""
    series: dict[str, list[_Slice]] = {}
    suspicious = []
    for path in files:
        if path.name.upper() == "DICOMDIR":
            continue
        if not is_dicom_file(path):
            # an empty or unreadable member of a series would silently change its slice spacing
            if path.stat().st_size == 0 or path.suffix.lower() in (".dcm", ".ima"):
                suspicious.append(path)
            continue
        ds = _read_header(path)
        sop_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "") or "")
        if sop_class == MEDIA_DIRECTORY_SOP_CLASS:
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        series.setdefault(uid, []).append(_Slice(path, ds))
    return series, suspicious


MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"  # a DICOMDIR: an index of a CD or export, no image
MAX_FILES_BELOW = 20000  # a folder tree searched for series (a CD or an export) holds at most this many


def _visible(path: Path, root: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(root).parts)


def scan_folder(folder: Path) -> dict[str, list[_Slice]]:
    """Group the DICOM files of ``folder`` by SeriesInstanceUID. When the folder itself holds none
    (a CD or an export: DICOMDIR and subfolders), its subfolders are searched."""
    if not folder.exists():
        raise InputError("no such file or folder", folder)
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    files = sorted(p for p in entries if p.is_file())
    if not entries:
        raise InputError("folder is empty", folder)
    series, suspicious = _group_series(files)
    if not series and any(p.is_dir() for p in entries):
        below = []
        for p in sorted(folder.rglob("*")):
            if p.is_file() and _visible(p, folder):
                below.append(p)
                if len(below) > MAX_FILES_BELOW:
                    raise InputError(
                        f"holds no DICOM files itself and more than {MAX_FILES_BELOW} files below it: "
                        "give the folder of one series",
                        folder,
                    )
        series, suspicious = _group_series(below)
        files = files or below
    if not series:
        what = f"{len(files)} other files, e.g. {files[0].name}" if files else "only empty subfolders"
        raise InputError(f"no DICOM files in this folder ({what})", folder)
    if suspicious:
        bad = suspicious[0]
        what = "is empty (0 bytes)" if bad.stat().st_size == 0 else "is not a readable DICOM file"
        raise InputError(
            f"{what} but sits in a DICOM series folder: a missing slice would change the slice spacing "
            f"unnoticed; remove or replace it"
            + (f" ({len(suspicious)} such files)" if len(suspicious) > 1 else ""),
            bad,
        )
    return series


def describe_series(series: dict[str, list[_Slice]]) -> list[str]:
    out = []
    for uid, slices in series.items():
        ds = slices[0].ds
        desc = str(ds.get("SeriesDescription", "") or "")
        names = ", ".join(s.path.name for s in slices[:3]) + (", ..." if len(slices) > 3 else "")
        out.append(
            f"{uid or '(no SeriesInstanceUID)'}: {len(slices)} files, modality "
            f"{ds.get('Modality', '?')}"
            + (f", '{desc}'" if desc else "")
            # files without a series UID are usually broken members of the other series: name them
            + ("" if uid else f" ({names})")
        )
    return out


def read_dicom_folder(folder: str | Path, series_uid: str | None = None, tilt: str = "resample") -> CTVolume:
    """Read one CT series from a folder; ``series_uid`` picks one when the folder holds several."""
    folder = Path(folder)
    if tilt not in TILT_MODES:
        raise InputError(f"tilt must be one of {TILT_MODES}, got {tilt!r}")
    series = scan_folder(folder)
    if series_uid is not None:
        if series_uid not in series:
            raise InputError(
                f"no series {series_uid} here; the folder holds: " + "; ".join(describe_series(series)),
                folder,
            )
        slices = series[series_uid]
    elif len(series) > 1:
        raise InputError(
            f"holds {len(series)} series, pick one with --series UID: " + "; ".join(describe_series(series)),
            folder,
        )
    else:
        slices = next(iter(series.values()))
    for s in slices:
        validate_ct_image(s.ds, s.path)
    return _assemble(slices, folder, tilt)


def read_dicom_file(path: str | Path) -> CTVolume:
    """Read a single-frame DICOM CT file as a one-slice volume."""
    path = Path(path)
    ds = _read_header(path)
    validate_ct_image(ds, path)
    return _assemble([_Slice(path, ds)], path, "keep")


def _check_same(s: _Slice, first: _Slice) -> None:
    """Per-slice consistency of a series: pixel spacing and bit depth as the first slice's."""
    ps, ps0 = [float(v) for v in s.ds.PixelSpacing], [float(v) for v in first.ds.PixelSpacing]
    if any(abs(a - b) > 1e-3 * max(abs(b), 1e-6) for a, b in zip(ps, ps0)):
        raise InputError(
            f"PixelSpacing {ps} differs from {ps0} of {first.path.name}: slices of one volume must share it",
            s.path,
        )
    for tag in ("BitsAllocated", "BitsStored", "PixelRepresentation"):
        a, b = s.ds.get(tag), first.ds.get(tag)
        if a is not None and b is not None and int(a) != int(b):
            raise InputError(f"{tag} {int(a)} differs from {int(b)} of {first.path.name}", s.path)


def _check_rescale(s: _Slice) -> None:
    slope = s.ds.get("RescaleSlope")
    intercept = s.ds.get("RescaleIntercept")
    for name, v in (("RescaleSlope", slope), ("RescaleIntercept", intercept)):
        if v is not None and v != "" and not math.isfinite(float(v)):
            raise InputError(f"{name} is {v}: not a finite number", s.path)
    if slope is not None and slope != "" and float(slope) == 0.0:
        raise InputError("RescaleSlope is 0: every pixel would read as the same value", s.path)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _assemble(slices: list[_Slice], source: Path, tilt: str) -> CTVolume:
    warnings: list[str] = []
    iop0 = np.array([float(v) for v in slices[0].ds.ImageOrientationPatient])
    row_dir, col_dir = _unit(iop0[:3]), _unit(iop0[3:])
    normal = np.cross(row_dir, col_dir)
    for s in slices[1:]:
        iop = np.array([float(v) for v in s.ds.ImageOrientationPatient])
        if np.max(np.abs(iop - iop0)) > 1e-3:
            raise InputError(
                f"slice orientation differs from {slices[0].path.name} ({list(iop)} vs "
                f"{list(iop0)}): not one stack",
                s.path,
            )
        if (int(s.ds.Rows), int(s.ds.Columns)) != (int(slices[0].ds.Rows), int(slices[0].ds.Columns)):
            raise InputError(
                f"image size {s.ds.Rows}x{s.ds.Columns} differs from "
                f"{slices[0].ds.Rows}x{slices[0].ds.Columns} of {slices[0].path.name}",
                s.path,
            )
        _check_same(s, slices[0])
    for s in slices:
        _check_rescale(s)
    positions = np.array([[float(v) for v in s.ds.ImagePositionPatient] for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    along = positions @ normal
    for a, b, sa, sb in zip(along[:-1], along[1:], slices[:-1], slices[1:]):
        if abs(b - a) < 1e-4:
            raise InputError(
                f"two slices at the same position ({a:.2f} mm): {sa.path.name} and {sb.path.name} "
                "(duplicate files or two series mixed?)",
                source,
            )

    array = _read_pixels([s.path for s in slices], source)
    array = _apply_rescale_policy(array, slices, source)

    ds0 = slices[0].ds
    ps = [float(v) for v in ds0.PixelSpacing]  # (row spacing, column spacing)
    spacing_i, spacing_j = ps[1], ps[0]
    origin = positions[0]
    tags = ct_tags(ds0)
    tags["slice_positions_mm"] = [round(float(p), 4) for p in along]
    padding_hu = _padding_hu(ds0)
    padding = None
    if padding_hu is not None:
        tags["padding_hu"] = padding_hu[:2]
        lo, hi, tol = padding_hu
        padding = (array >= lo - tol) & (array <= hi + tol)
    direction_k = normal
    spacing_k = float(ds0.get("SliceThickness", 1.0) or 1.0) if len(slices) == 1 else 1.0
    tilt_resampled = False

    if len(slices) > 1:
        steps = np.diff(along)
        spacing_k = float(np.median(steps))
        bad = np.abs(steps - spacing_k) > _SPACING_TOLERANCE * spacing_k
        if np.any(bad):
            gaps = [
                f"{steps[i]:.2f} mm between {along[i]:.2f} and {along[i + 1]:.2f}"
                for i in np.flatnonzero(bad)
            ]
            missing = int(np.sum(np.round(steps[bad] / spacing_k) - 1).clip(0))
            warnings.append(
                f"inconsistent slice spacing (median {spacing_k:.2f} mm): "
                + "; ".join(gaps)
                + (f" (about {missing} missing slices)" if missing else "")
                + "; images are written on a regular grid of the median spacing (approximate past a "
                "gap); findings, probes and --at points use the real slice positions"
            )
        stack = _unit(positions[-1] - positions[0])
        tilt_deg = math.degrees(math.acos(min(1.0, abs(float(stack @ normal)))))
        tag_tilt = ds0.get("GantryDetectorTilt")
        if tilt_deg > _TILT_TOLERANCE_DEG:
            tags["gantry_tilt_deg"] = round(tilt_deg, 2)
            what = f"gantry tilt of {tilt_deg:.1f} degrees" + (
                f" (GantryDetectorTilt {float(tag_tilt):+.1f})" if tag_tilt not in (None, "") else ""
            )
            if tilt == "refuse":
                raise InputError(
                    f"{what}: the slices form a sheared volume; read it with tilt='resample' "
                    "(--tilt resample) to resample onto an orthogonal grid",
                    source,
                )
            if tilt == "resample":
                array, max_shift = _deshear(array, positions, row_dir, col_dir, spacing_i, spacing_j)
                tilt_resampled = True
                if padding is not None:  # a pixel touched by padding or shifted in from outside is padding
                    shifted, _ = _deshear(
                        padding.astype(np.float32), positions, row_dir, col_dir, spacing_i, spacing_j, 1.0
                    )
                    padding = shifted > 1e-3
                spacing_k = float(np.median(np.diff(along)))
                warnings.append(
                    f"{what}: each slice was shifted in-plane (up to {max_shift:.1f} mm, linear "
                    "interpolation) onto an orthogonal grid; use --tilt keep for the acquired "
                    "slices untouched (slice-wise work), --tilt refuse to stop"
                )
            else:  # keep: sheared geometry; the k axis follows the table, exact for the acquired slices
                direction_k = stack
                spacing_k = float(np.linalg.norm(positions[-1] - positions[0]) / (len(slices) - 1))
                placed = positions[0] + np.outer(np.arange(len(slices)), stack * spacing_k)
                off = float(np.max(np.linalg.norm(positions - placed, axis=1)))
                if off > max(0.5, 0.1 * spacing_k):
                    # slice-wise work (the pixels of each slice) is exact; the volume's geometry is not
                    warnings.append(
                        f"{what} and irregular slice spacing: kept as acquired; images written on the "
                        f"regular sheared grid place slices up to {off:.1f} mm from their real positions "
                        "(findings, probes and --at points use the real ones)"
                    )
                warnings.append(
                    f"{what}: slices kept as acquired; the volume geometry is sheared (non-orthogonal k axis)"
                )
    if len(slices) > 1:
        # where the regular grid misplaces slices (gaps, irregular steps), keep the real positions:
        # findings, probes and `--at` points are located on them
        # (resampled tilted slices share slice 0's in-plane origin; others sit where the files say)
        real = positions[0] + np.outer(along - along[0], normal) if tilt_resampled else positions
        grid = positions[0] + np.outer(np.arange(len(slices)) * spacing_k, direction_k)
        if float(np.max(np.linalg.norm(real - grid, axis=1))) > max(0.5, 0.1 * spacing_k):
            tags["slice_origins_lps"] = np.round(real, 4).tolist()
    direction = np.stack([row_dir, col_dir, direction_k], axis=1)
    return CTVolume(
        array=array,
        spacing=(spacing_i, spacing_j, spacing_k),
        origin=tuple(origin),
        direction=tuple(direction.ravel()),
        tags=tags,
        source=str(source),
        warnings=warnings,
        padding=padding,
    )


def _deshear(array, positions, row_dir, col_dir, spacing_i, spacing_j, cval: float = -1024.0):
    """Shift every slice in-plane so that all share the in-plane origin of the first slice."""
    from scipy import ndimage

    out = np.empty_like(array)
    max_shift = 0.0
    for k in range(array.shape[0]):
        delta = positions[k] - positions[0]
        di, dj = float(delta @ row_dir), float(delta @ col_dir)
        max_shift = max(max_shift, math.hypot(di, dj))
        # Resampled pixel (j, i) lies at in-plane coordinates (j - dj/sj, i - di/si) of slice k.
        out[k] = ndimage.shift(
            array[k], (dj / spacing_j, di / spacing_i), order=1, mode="constant", cval=cval
        )
    return out, max_shift


def _padding_hu(ds: pydicom.Dataset) -> list[float] | None:
    """PixelPaddingValue (and PixelPaddingRangeLimit) as an HU range [lo, hi, tolerance]: the stored
    values that mark pixels outside the reconstructed field of view."""
    ppv = ds.get("PixelPaddingValue")
    if ppv is None or ppv == "" or isinstance(ppv, bytes):
        return None
    limit = ds.get("PixelPaddingRangeLimit")
    slope = float(ds.get("RescaleSlope", 1) or 1)
    intercept = float(ds.get("RescaleIntercept", 0) or 0)
    try:
        has_limit = limit not in (None, "") and not isinstance(limit, bytes)
        stored = [float(ppv)] + ([float(limit)] if has_limit else [])
    except (TypeError, ValueError):
        return None
    hu = [v * slope + intercept for v in stored]
    if not all(math.isfinite(v) for v in hu):
        return None
    return [min(hu), max(hu), 0.5 * abs(slope)]


def _read_pixels(paths: list[Path], source: Path) -> np.ndarray:
    """Pixels in stored order, rescaled by SimpleITK where the tags say so, as float32."""
    try:
        if len(paths) == 1:
            image = sitk.ReadImage(str(paths[0]), sitk.sitkFloat32)
        else:
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames([str(p) for p in paths])
            reader.SetOutputPixelType(sitk.sitkFloat32)
            image = reader.Execute()
    except RuntimeError:
        for p in paths:  # find the file that breaks the series
            try:
                sitk.ReadImage(str(p), sitk.sitkFloat32)
            except RuntimeError as exc:
                raise InputError(
                    f"pixel data cannot be decoded (truncated or corrupt): {_short(exc)[-120:]}", p
                ) from None
        raise InputError("SimpleITK could not read this series", source) from None
    arr = sitk.GetArrayFromImage(image).astype(np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    return arr


def _apply_rescale_policy(array: np.ndarray, slices: list[_Slice], source: Path) -> np.ndarray:
    missing = [s for s in slices if "RescaleSlope" not in s.ds or "RescaleIntercept" not in s.ds]
    if not missing:
        return array
    lo, hi = float(array.min()), float(array.max())
    if lo <= -500.0 and lo >= -3100.0 and hi <= 4000.0:
        return array  # slope 1, intercept 0: values already span air..bone in HU
    raise InputError(
        f"RescaleSlope/RescaleIntercept missing and the stored values ({lo:.0f} to {hi:.0f}) do not "
        "look like HU (no air near -1000): cannot convert to HU safely",
        missing[0].path,
    )


def ct_tags(ds: pydicom.Dataset) -> dict:
    """CT acquisition tags present in ``ds`` (missing ones are left out)."""

    def get(name, conv=str):
        v = ds.get(name)
        if v is None or v == "":
            return None
        try:
            if isinstance(v, pydicom.multival.MultiValue) and conv is str:
                return "\\".join(str(x) for x in v)
            return conv(v)
        except (TypeError, ValueError):
            return None

    tags = {
        "modality": get("Modality"),
        "manufacturer": get("Manufacturer"),
        "model": get("ManufacturerModelName"),
        "kernel": get("ConvolutionKernel"),
        "kvp": get("KVP", float),
        "tube_current_ma": get("XRayTubeCurrent", float),
        "exposure_mas": get("Exposure", float),
        "slice_thickness_mm": get("SliceThickness", float),
        "series_uid": get("SeriesInstanceUID"),
        "series_description": get("SeriesDescription"),
        "study_uid": get("StudyInstanceUID"),
    }
    return {k: v for k, v in tags.items() if v is not None}
