"""File helpers shared by every layer: outputs are written whole or not at all."""

from __future__ import annotations

import os


def default_file_mode() -> int:
    """rw for everyone the umask allows (mkstemp's temporary files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask
