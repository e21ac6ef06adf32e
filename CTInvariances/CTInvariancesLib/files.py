"""File helpers shared by every layer: outputs are written whole or not at all."""

from __future__ import annotations

import hashlib
import os
import re
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


def available_memory_bytes() -> int | None:
    """Memory this process may still use (MemAvailable on Linux; None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit_bytes(max_memory_gb: float | None = None) -> float | None:
    """The memory a job may use: ``max_memory_gb`` (in GiB, 2^30 bytes) when given, else what is
    available now (None where unknown)."""
    return max_memory_gb * 2**30 if max_memory_gb is not None else available_memory_bytes()


def format_bytes(n: float) -> str:
    """A size for messages, in GiB (2^30 bytes), or MiB below a tenth of one."""
    return f"{n / 2**30:.1f} GiB" if n >= 0.1 * 2**30 else f"{n / 2**20:.1f} MiB"


def check_resources(
    out: Path,
    disk_bytes: float,
    memory_bytes: float,
    max_memory_gb: float | None = None,
    advice: str = "use fewer samples (--samples) or a smaller --batch-size",
) -> None:
    """Before any work: refuse, with the numbers, a job whose output does not fit on the disk of
    ``out`` or whose working memory exceeds what is available (or ``max_memory_gb``)."""
    import shutil

    from .errors import InputError

    free = shutil.disk_usage(nearest_existing(out)).free
    if disk_bytes > 0.95 * free:
        raise InputError(
            f"the output needs about {format_bytes(disk_bytes)} but only {format_bytes(free)} are free "
            "there; "
            "use fewer samples or slices (--samples, --slices) or another --out",
            out,
        )
    check_memory(memory_bytes, max_memory_gb, advice, path=out)


def check_memory(
    memory_bytes: float,
    max_memory_gb: float | None,
    advice: str,
    what: str = "this job",
    path: str | Path | None = None,
) -> None:
    """Refuse, with the numbers, ``what`` needing ``memory_bytes`` of working memory when that
    exceeds what is available (or ``max_memory_gb``)."""
    from .errors import InputError

    limit = memory_limit_bytes(max_memory_gb)
    if limit is not None and memory_bytes > limit:
        raise InputError(
            f"{what} needs about {format_bytes(memory_bytes)} of memory, "
            + (
                f"above --max-memory {max_memory_gb:g} GiB"
                if max_memory_gb is not None
                else f"but only {format_bytes(limit)} are available"
            )
            + f"; {advice}",
            path,
        )


def sha256_of(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def input_sha256(path: str | Path) -> str | None:
    """What a run record says the input was: the file's SHA-256; for a header with a detached data
    file (.mhd, .nhdr) the hash of both; for a folder (a DICOM series) the hash of every file in it,
    by sorted relative path and content. None when the input is gone."""
    path = Path(path)
    if path.is_file():
        files = [path]
        if path.suffix.lower() in (".mhd", ".nhdr"):
            text = path.read_text(errors="replace")
            m = re.search(r"^\s*(?:ElementDataFile\s*=|data file:)\s*(\S+)", text, re.M | re.I)
            if m and (path.parent / m.group(1)).is_file():
                files.append(path.parent / m.group(1))
        if len(files) == 1:
            return sha256_of(path)
    elif path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        return None
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(path.parent if path.is_file() else path).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_of(f)))
    return h.hexdigest()


_PARTIAL = re.compile(r"\.partial-(\d+)")


def partial_name(name: str) -> str:
    """The name a file or folder has while it is being written: it carries this process's id, so a
    later run can tell a leftover of a process that was killed outright from work in progress."""
    return f"{name}.partial-{os.getpid()}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # POSIX only: signal 0 checks existence
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def remove_stale_partials(folder: str | Path) -> list[Path]:
    """Remove what runs killed outright (SIGKILL, the out-of-memory killer: no clean-up ran) left
    in ``folder``: entries named ``*.partial-<pid>`` of processes that no longer exist. Returns them.
    POSIX only (elsewhere nothing is removed)."""
    import shutil

    folder = Path(folder)
    if os.name != "posix" or not folder.is_dir():
        return []
    removed = []
    for p in folder.iterdir():
        m = _PARTIAL.search(p.name)
        if m and not _alive(int(m.group(1))):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
            removed.append(p)
    return removed
