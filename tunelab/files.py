"""Reading and writing tunelab's files. Reads fail in one line naming the file and the problem; writes are atomic
(temp file in the same directory, fsync, rename), so a failure or Ctrl-C never leaves a truncated file."""

from __future__ import annotations

import contextlib
import json
import os
import re
import stat
import tempfile
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = [
    "MAX_LINE",
    "MAX_READ_BYTES",
    "WRITTEN",
    "atomic_write",
    "one_line",
    "read_json",
    "read_text",
    "shown",
    "writable",
]

MAX_READ_BYTES = 64 * 2**20
MAX_LINE = 399  # characters of a message line the CLI prints (an `error: ` line stays below 400)
_LONG_WORD = 120  # a path or value longer than this is shown by its head and tail
_REPR_ESCAPE = re.compile(r"\\(x[0-9a-f]{2}|u[0-9a-f]{4}|U[0-9a-f]{8})")
WRITTEN: list[
    Path
] = []  # every file atomic_write completed in this process, in order (the CLI names them on Ctrl-C)


def writable(path: str | Path) -> Path:
    """The file `path` names (symlinks followed), checked to be writable: a regular file or none yet (never a
    directory, FIFO or device, which a rename would replace), in a directory that exists."""
    try:
        target = Path(path).resolve()
        if target.is_dir():
            raise TunelabError(f"{path}: is a directory, not a file")
        if target.exists() and not target.is_file():
            raise TunelabError(f"{path}: is not a regular file (a FIFO, socket or device); write to a file")
        if not target.parent.is_dir():
            raise TunelabError(f"{path}: directory {target.parent} does not exist")
    except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long
        raise TunelabError(f"{path}: cannot resolve: {getattr(exc, 'strerror', None) or exc}") from None
    return target


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write `data` (str as UTF-8) to `path` atomically, keeping an existing file's mode; returns `path`.

    A failure is a one-line `TunelabError` and leaves an existing file byte-identical and no temp file behind."""
    target = writable(path)
    payload = data.encode("utf-8", "backslashreplace") if isinstance(data, str) else bytes(data)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name[:100]}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise TunelabError(f"{path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as file:
            os.fchmod(file.fileno(), _mode(target))
            file.write(payload)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise TunelabError(f"{path}: cannot write: {exc.strerror or exc}") from None
        raise
    _sync_directory(target.parent)
    WRITTEN.append(Path(path))
    return Path(path)


def read_text(path: str | Path, what: str, limit: int = MAX_READ_BYTES) -> str:
    """The UTF-8 text of `path`, which should be `what` (e.g. "a calibration CSV"); problems are one line."""
    try:
        mode = os.stat(path).st_mode
        if stat.S_ISDIR(mode):
            raise TunelabError(f"{path}: is a directory, not {what}")
        if not stat.S_ISREG(mode):
            raise TunelabError(f"{path}: is not a regular file (expected {what})")
        with open(path, "rb") as file:
            raw = file.read(limit + 1)
    except FileNotFoundError:
        raise TunelabError(f"{path}: file not found (expected {what})") from None
    except OSError as exc:
        raise TunelabError(f"{path}: cannot read: {exc.strerror or type(exc).__name__}") from None
    if len(raw) > limit:
        raise TunelabError(f"{path}: is larger than {limit} bytes, too large for {what}")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TunelabError(
            f"{path}: is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start}); expected {what}"
        ) from None


def read_json(path: str | Path, what: str) -> object:
    """The parsed JSON of `path`, which should be `what`; unreadable or malformed JSON is one line."""
    text = read_text(path, what)
    if not text.strip():
        raise TunelabError(f"{path}: is empty (expected {what})")
    try:
        return json.loads(text)
    except RecursionError:
        raise TunelabError(f"{path}: is nested too deeply to be {what}") from None
    except json.JSONDecodeError as exc:
        raise TunelabError(
            f"{path}: is not JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); expected {what}"
        ) from None
    except ValueError as exc:  # e.g. an integer with more digits than Python converts
        raise TunelabError(
            f"{path}: is not JSON ({str(exc).splitlines()[0][:80]}); expected {what}"
        ) from None


def shown(value: object, limit: int = 40) -> str:
    """A value found in a file or on the command line, for an error message: short, printable, JSON-named types."""
    if isinstance(value, str):
        text = repr("".join(c if c.isprintable() else "?" for c in value[: limit + 1]))
    elif value is None or isinstance(value, bool):
        text = json.dumps(value)
    elif isinstance(value, int) and abs(value) >= 10**18:
        return "a very large integer"
    elif isinstance(value, int | float):
        text = repr(value)
    else:
        return {dict: "an object", list: "a list"}.get(type(value), f"a {type(value).__name__}")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def one_line(message: object, limit: int = MAX_LINE) -> str:
    """`message` as one printable line of at most `limit` characters: whitespace runs become one space, control
    characters and undecodable bytes (a non-UTF-8 file name's surrogates) become `?`, as do the escapes `repr()`
    writes for them (`\\x1b`, `\\udcff`), and a very long word (a path or a value) keeps its head and tail around
    `...`."""
    text = "".join(c if c.isprintable() else "?" for c in " ".join(str(message).split()))
    text = _REPR_ESCAPE.sub("?", text)
    words = [w if len(w) <= _LONG_WORD else f"{w[:60]}...{w[-40:]}" for w in text.split(" ")]
    text = " ".join(words)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _mode(target: Path) -> int:
    """An existing file's permission bits, else those a new file gets (0o666 less the umask)."""
    try:
        return stat.S_IMODE(target.stat().st_mode)
    except FileNotFoundError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


def _sync_directory(directory: Path) -> None:
    """Make the rename durable; filesystems that cannot fsync a directory are fine without it."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
