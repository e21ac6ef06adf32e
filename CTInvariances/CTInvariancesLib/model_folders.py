"""Where models live, without importing torch (the Slicer module lists them at start-up).

- bundled: ``Resources/Models`` of the installed module ($CTINVARIANCES_MODELS overrides), read-only;
- user: models a user imports or trains ($CTINVARIANCES_USER_MODELS; Slicer sets it to its user
  data folder; elsewhere the platform's per-user data folder), never inside the installed package.
Denoisers are ``denoisers/<name>.safetensors`` (with a ``.json`` card) or a published
``denoisers/<name>.pt`` in either folder.
"""

from __future__ import annotations

import os
from pathlib import Path

BUNDLED_DENOISERS = ("cnn10", "redcnn", "wganvgg", "dugan")


def user_models_dir() -> Path:
    """Where models a user imports or trains live: $CTINVARIANCES_USER_MODELS (Slicer sets it to its
    user data folder), else the platform's per-user data folder. Never the installed package, which
    may be read-only."""
    env = os.environ.get("CTINVARIANCES_USER_MODELS")
    if env:
        return Path(env)
    import sys

    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "CTInvariances" / "models"


def models_dir() -> Path:
    """Folder of bundled models: $CTINVARIANCES_MODELS or the module's Resources/Models."""
    env = os.environ.get("CTINVARIANCES_MODELS")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "Resources" / "Models"


def denoiser_entries() -> list[dict]:
    """The denoisers a user can pick by name: the bundled four, then those in the user folder
    (name: the file's stem; ``user/<stem>`` where it would hide a bundled one)."""
    out = []
    bundled = models_dir() / "denoisers"
    for name in BUNDLED_DENOISERS:
        path = bundled / f"{name}.safetensors"
        if path.exists():
            out.append({"name": name, "path": str(path), "where": "bundled"})
    user = user_models_dir() / "denoisers"
    if user.is_dir():
        for path in sorted(p for p in user.iterdir() if p.suffix in (".safetensors", ".pt")):
            name = path.stem if path.stem not in BUNDLED_DENOISERS else f"user/{path.stem}"
            if not any(e["name"] == name for e in out):
                out.append({"name": name, "path": str(path), "where": "user"})
    return out


def user_denoiser(name: str) -> Path | None:
    """The user-folder file of a denoiser picked by name (``stem`` or ``user/stem``)."""
    for e in denoiser_entries():
        if e["where"] == "user" and e["name"] == name:
            return Path(e["path"])
    return None


def check_model_name(name: str) -> str:
    """A name a model can be installed and picked by (a file stem without surprises)."""
    import re

    from .errors import InputError

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name):
        raise InputError(f"model name {name!r}: use letters, digits, '_', '-' and '.' (at most 64)")
    return name


def install_denoiser(
    src: str | Path, name: str | None = None, overwrite: bool = False, folder: str | Path | None = None
) -> Path:
    """Copy a denoiser file (``.safetensors`` with its ``.json`` card, or a ``.pt``) into the user's
    denoisers folder as ``<name>``, where `models list` and the Slicer panel offer it. Check that it
    loads before calling this; the copy is atomic and an existing model is kept unless ``overwrite``."""
    import shutil
    import tempfile

    from .errors import InputError
    from .files import default_file_mode

    src = Path(src)
    if src.suffix not in (".safetensors", ".pt"):
        raise InputError("install takes a .safetensors (with its .json card) or a .pt denoiser", src)
    name = check_model_name(name or src.stem)
    dest_dir = Path(folder) if folder is not None else user_models_dir() / "denoisers"
    files = [(src, dest_dir / f"{name}{src.suffix}")]
    if src.suffix == ".safetensors":
        files.append((src.with_suffix(".json"), dest_dir / f"{name}.json"))
    for _, dest in files:
        if dest.exists() and not overwrite:
            raise InputError(
                f"a user denoiser '{name}' exists; choose another --name or give --overwrite", dest
            )
    dest_dir.mkdir(parents=True, exist_ok=True)
    done = []
    try:
        for source, dest in files:
            fd, tmp = tempfile.mkstemp(dir=dest_dir, prefix=f".{dest.name}.", suffix=".partial")
            os.close(fd)
            done.append(Path(tmp))
            shutil.copyfile(source, tmp)
            os.chmod(tmp, default_file_mode())  # mkstemp's files are private
        for (_, dest), tmp in zip(files, done):
            os.replace(tmp, dest)
    finally:
        for tmp in done:
            tmp.unlink(missing_ok=True)
    return files[0][1]
