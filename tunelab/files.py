"""Writing files so that a failure never leaves a truncated one: temp file in the same directory, fsync, rename."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = ["atomic_write"]


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` to `path` atomically; a missing directory or unwritable path is a one-line error."""
    path = Path(path)
    if path.is_dir():
        raise TunelabError(f"{path}: is a directory, not a file")
    if not path.parent.is_dir():
        raise TunelabError(f"{path}: directory {path.parent} does not exist")
    payload = data.encode() if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise TunelabError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        os.fchmod(fd, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise TunelabError(f"{path}: cannot write: {exc.strerror or exc}") from None
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
