"""DICOM SEG of the alterations (method B) for PACS, referencing the input series (highdicom).

Only for DICOM input whose pixel grid is the acquired one (no gantry-tilt resampling): each frame
of the SEG refers to the source image it was computed on.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from . import __version__
from .errors import CTInvariancesError, InputError

KIND_NAMES = ("appeared", "disappeared", "changed class")


def source_datasets(volume) -> list:
    """The input's DICOM headers in the volume's slice order (as read, then --slices)."""
    import pydicom

    from .io.dicom import is_dicom_file

    src = Path(volume.source)
    if volume.tags.get("gantry_tilt_deg"):
        raise InputError("--dicom-seg: a resampled tilted series has no source image per slice", src)
    files = [src] if src.is_file() else sorted(p for p in src.iterdir() if p.is_file() and is_dicom_file(p))
    if not files or not all(is_dicom_file(f) for f in files):
        raise InputError("--dicom-seg needs DICOM input", src)
    dss = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    uid = volume.tags.get("series_uid")
    if uid:
        dss = [d for d in dss if str(d.get("SeriesInstanceUID", "")) == uid]
    iop = np.array([float(v) for v in dss[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    dss.sort(key=lambda d: float(np.dot([float(v) for v in d.ImagePositionPatient], normal)))
    picked = [dss[i] for i in volume.source_slice_indices]
    if len(picked) != volume.shape[0]:
        raise CTInvariancesError("--dicom-seg: the series does not match the volume read from it", src)
    return picked


def write_dicom_seg(path: Path, volume, labels: np.ndarray) -> None:
    """``labels`` [K, J, I]: 0 none, 1 + index into KIND_NAMES."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    sources = source_datasets(volume)
    algo = hd.AlgorithmIdentificationSequence(
        name="CTInvariances", version=__version__, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = [
        hd.seg.SegmentDescription(
            segment_number=i + 1,
            segment_label=f"alteration: {k}",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algo,
        )
        for i, k in enumerate(KIND_NAMES)
    ]
    with warnings.catch_warnings():  # highdicom's advice on the source's patient-name format
        warnings.simplefilter("ignore", UserWarning)
        seg = hd.seg.Segmentation(
            source_images=sources,
            pixel_array=np.asarray(labels, np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=901,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="CTInvariances",
            manufacturer_model_name="CTInvariances",
            software_versions=__version__,
            device_serial_number="0",
            series_description="CTInvariances alterations (method B)",
        )
        seg.save_as(str(path))
