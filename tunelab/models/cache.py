"""A disk cache of converted checkpoints (GGUF dequantised, Meta converted), stored in HF format as safetensors.

Layout: `$TUNELAB_CACHE_DIR` (default `~/.cache/tunelab`) / `models` / `<name>-<key>` / {config.json,
model.safetensors, tokenizer files, tunelab_cache.json}. The key is a hash of the source's identity: its kind,
then for every source file its absolute path, size and modification time (ns), plus the transformers version
(whose GGUF dequantiser and tokenizer converters produce the entry) and this module's format version. Editing or
replacing a source file, or upgrading transformers, therefore makes a new entry; the stale one for the same source
is removed when the new one is written.

Entries are written into a temporary directory beside the final one and renamed into place, so an interrupted run
leaves at worst a `.tmp-*` directory, never a partial entry. The manifest (`tunelab_cache.json`, written last)
records the size and SHA-256 of every file; a lookup re-hashes them (about 0.5 s per GB) and rebuilds an entry
that does not match, with a `CacheWarning`, instead of using it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

from tunelab.errors import TunelabError, TunelabWarning

__all__ = ["CACHE_ENV", "CacheWarning", "cache_root", "entry_key", "lookup", "store"]

CACHE_ENV = "TUNELAB_CACHE_DIR"
FORMAT_VERSION = 1
MANIFEST = "tunelab_cache.json"
_STALE_TEMP_S = 24 * 3600


class CacheWarning(TunelabWarning):
    """A cache entry was unusable (corrupt, truncated, from another format version) and is being rebuilt."""


def cache_root() -> Path:
    """$TUNELAB_CACHE_DIR, else ~/.cache/tunelab."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tunelab").expanduser()


def _models_dir() -> Path:
    return cache_root() / "models"


def _identity(kind: str, files: Iterable[Path]) -> dict:
    import transformers

    listed = []
    for path in sorted(Path(f).absolute() for f in files):
        stat = path.stat()
        listed.append([str(path), stat.st_size, stat.st_mtime_ns])
    return {"format": FORMAT_VERSION, "kind": kind, "transformers": transformers.__version__, "files": listed}


def entry_key(name: str, kind: str, files: Iterable[Path]) -> tuple[str, dict]:
    """(directory name, identity) of the entry for a source made of `files`."""
    identity = _identity(kind, files)
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[:80] or "model"
    return f"{slug}-{digest}", identity


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _manifest_files(entry: Path) -> dict[str, list] | str:
    """The manifest's {file name: [size, sha256]}, or why it cannot be read."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"unreadable manifest: {e}"
    if not isinstance(manifest, dict):
        return "the manifest is not a JSON object"
    if manifest.get("format") != FORMAT_VERSION:
        return f"format {manifest.get('format')!r}, expected {FORMAT_VERSION}"
    files = manifest.get("files")
    if not isinstance(files, dict) or not all(_is_record(name, value) for name, value in files.items()):
        return "the manifest's files are not {name: [size, sha256]}"
    return files


def _is_record(name: str, value: object) -> bool:
    """A manifest record: a file name in the entry itself with [size, sha256]."""
    return (
        name not in ("", ".", "..")
        and Path(name).name == name
        and isinstance(value, list)
        and len(value) == 2
        and type(value[0]) is int
        and isinstance(value[1], str)
    )


def _problem(entry: Path) -> str | None:
    """Why an entry cannot be used, or None if every file is present with the recorded size and hash."""
    files = _manifest_files(entry)
    if isinstance(files, str):
        return files
    if "config.json" not in files or not any(name.endswith(".safetensors") for name in files):
        return "manifest lists no config.json or no safetensors"
    for name, (size, sha) in files.items():
        path = entry / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, expected {size}"
        try:
            if _sha256(path) != sha:
                return f"{name} does not match its recorded SHA-256"
        except OSError as e:
            return f"{name} is unreadable ({e.strerror or e})"
    return None


def lookup(key: str) -> Path | None:
    """The verified entry for `key`, or None if there is none (or it is unusable: warned, and it will be rebuilt)."""
    entry = _models_dir() / key
    if not entry.exists():
        return None
    problem = _problem(entry)
    if problem is None:
        return entry
    warnings.warn(f"cache entry {entry} is unusable ({problem}); rebuilding it", CacheWarning, stacklevel=3)
    return None


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def _tidy(models: Path, key: str, identity: dict) -> None:
    """Remove stale temporary directories and older entries of the same source (same kind and paths)."""
    now = time.time()
    paths = [f[0] for f in identity["files"]]
    for other in models.iterdir():
        if other.name.startswith((".tmp-", ".trash-")):
            if now - other.stat().st_mtime > _STALE_TEMP_S:
                _remove_quietly(other)
            continue
        if other.name == key or not other.is_dir():
            continue
        try:
            source = json.loads((other / MANIFEST).read_bytes())["source"]
            same = source["kind"] == identity["kind"] and [f[0] for f in source["files"]] == paths
        except (OSError, ValueError, LookupError, TypeError):
            continue  # not an entry this module wrote: left alone
        if same:
            _remove_quietly(other)


def _missing_directories(path: Path) -> list[Path]:
    """`path` and those of its parents that do not exist yet, deepest first."""
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    return missing


def store(key: str, identity: dict, write: Callable[[Path], None]) -> Path:
    """Build an entry with `write(directory)` and move it into place atomically; returns the entry directory."""
    models = _models_dir()
    made = _missing_directories(models)
    try:
        models.mkdir(parents=True, exist_ok=True)
        temp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=models))
    except OSError as e:
        raise TunelabError(
            f"{models}: cannot write the model cache ({e.strerror or e}); set {CACHE_ENV}"
        ) from None
    final = models / key
    try:
        write(temp)
        files = {}
        for path in sorted(temp.iterdir()):
            if not path.is_file():
                raise RuntimeError(f"cache entries hold plain files only, got {path.name}")
            _fsync(path)
            files[path.name] = [path.stat().st_size, _sha256(path)]
        manifest = {"format": FORMAT_VERSION, "source": identity, "files": files, "created": time.time()}
        (temp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _fsync(temp / MANIFEST)
        if final.exists():  # an unusable entry (lookup warned), or one a concurrent run just finished
            if _problem(final) is None:
                _remove_quietly(temp)
                return final
            trash = Path(tempfile.mkdtemp(prefix=f".trash-{key}-", dir=models))
            os.replace(final, trash / "entry")
            _remove_quietly(trash)
        try:
            os.rename(temp, final)
        except OSError:  # another run renamed its entry into place first
            if _problem(final) is not None:
                raise
            _remove_quietly(temp)
            return final
    except BaseException:
        _remove_quietly(temp)
        for directory in made:  # a failed first conversion leaves the cache as it was
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    _tidy(models, key, identity)
    return final
