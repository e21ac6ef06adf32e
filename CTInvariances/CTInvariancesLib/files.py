"""File helpers shared by every layer: outputs are written whole or not at all."""

from __future__ import annotations

import os
from pathlib import Path


def default_file_mode() -> int:
    """rw for everyone the umask allows (mkstemp's temporary files are 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def nearest_existing(path: Path) -> Path:
    """``path`` itself or its closest ancestor that exists."""
    return next(p for p in [path, *path.parents] if p.exists())


def check_can_create(folder: Path) -> None:
    """Before any work: ``folder`` (which may not exist yet) can be created and written into, i.e. its
    nearest existing ancestor is a folder we may write to."""
    from .errors import InputError

    place = nearest_existing(folder)
    if not place.is_dir() or not os.access(place, os.W_OK | os.X_OK):
        raise InputError("cannot write here (not a writable folder)", place)
