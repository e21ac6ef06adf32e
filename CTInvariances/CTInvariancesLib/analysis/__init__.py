"""Analysis of invariance samples: which differences from x are anatomy, not noise.

- ``noise_referenced_test`` (method A): per-sample p-values against a noise reference of x;
- ``structure_alterations`` (method B): tissue-class changes as findings and a label map;
- ``structure_probe`` (method C): would a structure of a given size and contrast survive f?

Formulas, parameters and validation: docs/analysis.md. None of it imports slicer or qt.
"""

from .probes import ProbeResult, erasure_map, probe_grid, structure_probe
from .reference import NoiseReference, build_reference
from .significance import SignificanceResult, noise_referenced_test
from .structures import Finding, StructureResult, structure_alterations

__all__ = [
    "Finding",
    "NoiseReference",
    "ProbeResult",
    "SignificanceResult",
    "StructureResult",
    "build_reference",
    "erasure_map",
    "noise_referenced_test",
    "probe_grid",
    "structure_alterations",
    "structure_probe",
]
