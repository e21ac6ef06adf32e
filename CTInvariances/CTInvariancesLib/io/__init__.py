"""CT input and output: DICOM, NRRD, NIfTI, MetaImage; HU arrays with ITK/LPS geometry."""

from .readers import read_volume, write_volume
from .volume import CTVolume, parse_slices

__all__ = ["CTVolume", "parse_slices", "read_volume", "write_volume"]
