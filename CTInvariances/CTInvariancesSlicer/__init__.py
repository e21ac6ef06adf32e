"""The bridge between CTInvariances run folders and Slicer's MRML scene.

It imports slicer (the core library ``CTInvariancesLib`` never does) and works with slicer-core
alone, without Qt: the module's logic, the tests and the Python console use it.
"""

from .results import RUN_ATTRIBUTE, load_results, volume_to_file

__all__ = ["RUN_ATTRIBUTE", "load_results", "volume_to_file"]
