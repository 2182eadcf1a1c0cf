"""Reference logits: the transformers model run once on each corpus window, summarised and cached on disk.

For every window of L tokens the reference model sees tokens[:L - 1] in one causal forward (tt-metal's
generate_reference_hf.py does the same, with no KV carry-over between windows) and we keep, for every position p
(row p predicts token p + 1), the top-k ids (k >= 5, default 32, column 0 = the argmax), their log-probabilities,
the logsumexp of the logits and the log-probability of the true next token. Only the decode rows
prefill_len..L - 2 are scored, but all L - 1 rows are kept so a window exports to a complete tt-metal .refpt.

Storage, under `reference_logits/` (or $TUNELAB_REFERENCE_DIR, or an explicit directory):

- `<key>.safetensors`: tokens int64 [N, L], topk_ids int64 [N, L-1, k], and when known topk_logprobs,
  logsumexp and target_logprobs float32 [N, L-1(, k)];
- `<key>.json`: what was computed from what (model, tokenizer, corpus, lengths, dtype, device, versions) and the
  SHA-256 and size of the tensor file, checked on every load: a modified or truncated file is a one-line error;
  so is metadata with a missing field, a wrong type or a value out of range, or one that disagrees with the tensor
  file: its shapes (window count and length, top-k) and the identity written into its header (model fingerprint,
  tokenizer, window shape, dtype, top-k; for files written before that header, the key they hash to);
- `index.json`: request -> key, so that a repeated build finds its reference without loading the model. An entry
  is checked against the reference it names (window shape, top-k, dtype, window count); an index that is not
  valid JSON of that shape is an error, never rewritten (deleting it loses nothing but the shortcut).

All files are written atomically (`tunelab.files.atomic_write`).

The key is a content hash of (model fingerprint, tokenizer, window token ids, lengths, dtype, k). The request is a
cheap identity of what was asked: the model source's resolved files with their sizes and mtimes, the corpus spec
with its files' content, the window spec, k, dtype and layer count. A request hit is verified against the tensor
file's stored hash; `tunelab eval` also checks the model it loads against the reference's fingerprint and tokenizer
(`check_fingerprint`). `get_reference` is the whole lookup-or-build, loading the model only on a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.eval.corpus import CorpusSpec, WindowSpec, _bos, make_windows, resolve_corpus
from tunelab.files import atomic_write

__all__ = [
    "DEFAULT_TOP_K",
    "FORMAT",
    "Reference",
    "ReferenceError",
    "ReferenceStore",
    "build_reference",
    "check_fingerprint",
    "check_options",
    "check_positions",
    "compute_reference",
    "default_reference_dir",
    "find_reference",
    "get_reference",
    "reference_key",
    "reference_request",
    "request_for",
    "request_id",
    "source_identity",
    "tokenizer_hash",
]

FORMAT = "tunelab-reference-1"
DEFAULT_TOP_K = 32
DTYPES = ("float32", "bfloat16", "float16")
_TENSORS = ("tokens", "topk_ids", "topk_logprobs", "logsumexp", "target_logprobs")


class ReferenceError(TunelabError):
    """A reference that is missing, corrupted or does not fit the model or the request."""


def default_reference_dir() -> Path:
    return Path(os.environ.get("TUNELAB_REFERENCE_DIR") or "reference_logits")


@dataclass
class Reference:
    """Reference top-k summaries of N windows of L tokens (torch tensors; see the module docstring)."""

    key: str
    meta: dict[str, Any]
    tokens: Any  # LongTensor [N, L]
    topk_ids: Any  # LongTensor [N, L-1, k]
    topk_logprobs: Any | None = None  # FloatTensor [N, L-1, k]; None for an imported .refpt (ids only)
    logsumexp: Any | None = None  # FloatTensor [N, L-1]
    target_logprobs: Any | None = None  # FloatTensor [N, L-1]

    @property
    def n_windows(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def window_len(self) -> int:
        return int(self.tokens.shape[1])

    @property
    def prefill_len(self) -> int:
        return int(self.meta["windows"]["prefill_len"])

    @property
    def n_decode(self) -> int:
        return self.window_len - 1 - self.prefill_len

    @property
    def top_k(self) -> int:
        return int(self.topk_ids.shape[-1])

    @property
    def has_logprobs(self) -> bool:
        return self.topk_logprobs is not None

    @property
    def decode_rows(self) -> slice:
        """Rows of the per-position tensors that tt-metal scores: the predictions after tokens prefill_len..L-2."""
        return slice(self.prefill_len, self.window_len - 1)

    def select(self, n_windows: int | None) -> Reference:
        """The first `n_windows` windows (all when None)."""
        if n_windows is None or n_windows == self.n_windows:
            return self
        if not 1 <= n_windows <= self.n_windows:
            raise ReferenceError(f"reference {self.key} has {self.n_windows} windows, not {n_windows}")

        def cut(t: Any) -> Any:
            return None if t is None else t[:n_windows]

        return replace(
            self,
            tokens=cut(self.tokens),
            topk_ids=cut(self.topk_ids),
            topk_logprobs=cut(self.topk_logprobs),
            logsumexp=cut(self.logsumexp),
            target_logprobs=cut(self.target_logprobs),
        )

    def describe(self) -> str:
        corpus = self.meta.get("corpus", {}).get("name", "?")
        return (
            f"{self.key} ({self.meta['model']['name']}, corpus {corpus}, {self.n_windows} x {self.window_len} "
            f"tokens, prefill {self.prefill_len}, top-{self.top_k}, {self.meta.get('dtype', '?')})"
        )


# ------------------------------------------------------------------------------------------------------------------
# identities and keys


def _hash(obj: Any, n: int = 16) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:n]


_PROBE = "Teacher-forced reference logits, 1024 tokens: prefill 512 + decode 511.\n\tdef f(x):  return x ** 2"


def tokenizer_hash(tokenizer: Any) -> str:
    """Content hash of a tokenizer: sorted vocabulary, special tokens and the encoding of a probe text."""
    vocab = sorted(tokenizer.get_vocab().items())
    specials = sorted(getattr(tokenizer, "all_special_tokens", []))
    return _hash([vocab, specials, tokenizer.encode(_PROBE)])


def reference_key(
    fingerprint: str,
    tokenizer_id: str,
    tokens: list[list[int]],
    windows: WindowSpec,
    dtype: str,
    top_k: int,
    origin: str = "transformers",
) -> str:
    """The content key of a reference: what it was computed from, not how it was asked for."""
    return _hash(
        {
            "format": FORMAT,
            "origin": origin,
            "model": fingerprint,
            "tokenizer": tokenizer_id,
            "tokens": hashlib.sha256(json.dumps(tokens).encode()).hexdigest(),
            "window_len": windows.window_len,
            "prefill_len": windows.prefill_len,
            "dtype": dtype,
            "top_k": top_k,
        },
        20,
    )


def source_identity(source: str | None) -> dict[str, Any]:
    """A cheap identity of a model source, without loading it: its resolved files' names, sizes and mtimes.

    A hub id is identified by its name alone (a changed hub model is caught by eval's fingerprint check).
    """
    from tunelab.models.sources import resolve_source

    src = resolve_source(source)
    identity: dict[str, Any] = {"kind": src.kind, "location": src.location}
    if src.kind == "hub":
        return identity
    path = Path(src.location)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.is_file())
    identity["files"] = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return identity


def reference_request(
    source_id: dict[str, Any],
    corpus: CorpusSpec,
    windows: WindowSpec,
    top_k: int = DEFAULT_TOP_K,
    dtype: str = "float32",
    n_layers: int | None = None,
) -> dict[str, Any]:
    """What a build was asked for, as data (its hash indexes the store)."""
    return {
        "format": FORMAT,
        "source": source_id,
        "corpus": corpus.identity(),
        "window_len": windows.window_len,
        "prefill_len": windows.prefill_len,
        "n_windows": windows.n_windows,
        "top_k": top_k,
        "dtype": dtype,
        "n_layers": n_layers,
    }


def request_id(request: dict[str, Any]) -> str:
    return _hash(request)


# ------------------------------------------------------------------------------------------------------------------
# the store


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _short(value: Any) -> str:
    """A value as it appears in a JSON file, cut to fit an error line."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 40 else text[:37] + "..."


def _first_line(error: Exception) -> str:
    text = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return text if len(text) <= 120 else text[:117] + "..."


def _corrupt(path: Path, problem: str) -> ReferenceError:
    return ReferenceError(f"{path}: corrupt or stale reference ({problem}); rebuild it with --force")


_KINDS = {str: "a string", int: "an integer", dict: "an object"}
# (field, type) of every metadata field a reference needs; the first seven are what its key hashes
_FIELDS = (
    ("origin", str),
    ("model.fingerprint", str),
    ("tokenizer.hash", str),
    ("windows.window_len", int),
    ("windows.prefill_len", int),
    ("dtype", str),
    ("top_k", int),
    ("format", str),
    ("key", str),
    ("model.name", str),
    ("corpus.name", str),
    ("windows.n_windows", int),
    ("tensors.sha256", str),
    ("tensors.bytes", int),
    ("tensors.shapes", dict),
)
_IDENTITY = tuple(name for name, _ in _FIELDS[:7])
ORIGINS = ("transformers", "refpt")


def _get(meta: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        meta = meta[part]
    return meta


def _field(meta: Any, dotted: str, kind: type, path: Path) -> Any:
    """meta's field `dotted` ("windows.prefill_len"), checked to be of type `kind`."""
    value = meta
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise _corrupt(path, f"no field {dotted}")
        value = value[part]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _corrupt(path, f"{dotted} is {_short(value)}, expected {_KINDS[kind]}")
    return value


def _check_meta(meta: Any, key: str, path: Path) -> None:
    """The fields, types and ranges of a reference's metadata (one-line errors naming the field)."""
    values = {name: _field(meta, name, kind, path) for name, kind in _FIELDS}
    expected = {"format": FORMAT, "key": key}
    for name, value in expected.items():
        if values[name] != value:
            raise _corrupt(path, f"{name} is {_short(values[name])}, expected {_short(value)}")
    if values["origin"] not in ORIGINS:
        raise _corrupt(path, f"origin is {_short(values['origin'])}, expected one of {', '.join(ORIGINS)}")
    if values["origin"] == "transformers" and values["dtype"] not in DTYPES:
        raise _corrupt(path, f"dtype is {_short(values['dtype'])}, expected one of {', '.join(DTYPES)}")
    if values["top_k"] < 5:
        raise _corrupt(path, f"top_k is {values['top_k']}, expected at least 5")
    try:
        WindowSpec(values["windows.window_len"], values["windows.prefill_len"], values["windows.n_windows"])
    except TunelabError as e:
        raise _corrupt(path, f"windows: {e}") from None


def _expected_tensors(meta: dict[str, Any]) -> dict[str, tuple[str, list[int]]]:
    """(safetensors dtype, shape) of each tensor a reference with this metadata may hold."""
    n, length, k = meta["windows"]["n_windows"], meta["windows"]["window_len"], meta["top_k"]
    rows = [n, length - 1]
    return {
        "tokens": ("I64", [n, length]),
        "topk_ids": ("I64", [*rows, k]),
        "topk_logprobs": ("F32", [*rows, k]),
        "logsumexp": ("F32", rows),
        "target_logprobs": ("F32", rows),
    }


def _identity(meta: dict[str, Any]) -> dict[str, Any]:
    """The metadata fields the key hashes (with the tokens), as stored in the tensor file's header."""
    return {name: _get(meta, name) for name in _IDENTITY}


class ReferenceStore:
    """A directory of references (`<key>.safetensors` + `<key>.json`) with a request index (`index.json`).

    The directory (created on the first save) must not be a file, nor lie under one.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_reference_dir()
        existing = next(p for p in (self.root.absolute(), *self.root.absolute().parents) if p.exists())
        if not existing.is_dir():
            raise ReferenceError(f"{self.root}: not a directory ({existing} is a file)")

    def tensor_path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def meta_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def exists(self, key: str) -> bool:
        return self.tensor_path(key).exists() and self.meta_path(key).exists()

    def keys(self) -> list[str]:
        """The key of every reference in the store, complete or not (a tensor or a metadata file)."""
        paths = [*self.root.glob("*.json"), *self.root.glob("*.safetensors")]
        return sorted({p.stem for p in paths if p.name != "index.json" and not p.name.startswith(".")})

    # index ------------------------------------------------------------------------------------------------------

    def index(self) -> dict[str, Any]:
        """request id -> {"key", "request"}; an unreadable or malformed index is an error (never rewritten)."""
        path = self.index_path
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise ReferenceError(f"{path}: cannot read the reference index ({e.strerror or e})") from None
        except ValueError as e:
            raise ReferenceError(f"{path}: not a reference index ({_first_line(e)}); {_INDEX_FIX}") from None
        if not isinstance(data, dict):
            raise ReferenceError(
                f"{path}: not a reference index (a JSON {type(data).__name__}); {_INDEX_FIX}"
            )
        for rid, entry in data.items():
            if not _valid_entry(entry):
                raise ReferenceError(
                    f"{path}: not a reference index (entry {_short(rid)} is not "
                    f'{{"key": KEY, "request": {{...}}}}); {_INDEX_FIX}'
                )
        return data

    def lookup(self, request: dict[str, Any]) -> str | None:
        """The key stored for a request if its files are still there, the reference verified (`verify`) and
        checked against the request."""
        rid = request_id(request)
        entry = self.index().get(rid)
        if entry is None or not self.exists(entry["key"]):
            return None
        key = entry["key"]
        if request_id(entry["request"]) != rid:
            raise ReferenceError(f"{self.index_path}: entry {rid} records another request; {_INDEX_FIX}")
        _check_request(self.verify(key), request, self.index_path)
        return key

    def remember(self, request: dict[str, Any], key: str) -> None:
        index = self.index()
        index[request_id(request)] = {"key": key, "request": request}
        self._write(self.index_path, json.dumps(index, indent=1, sort_keys=True))

    def _write(self, path: Path, data: str | bytes) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ReferenceError(
                f"{self.root}: cannot create the reference directory ({e.strerror or e})"
            ) from None
        atomic_write(path, data)

    # metadata and integrity -------------------------------------------------------------------------------------

    def meta(self, key: str) -> dict[str, Any]:
        """The metadata of a reference, its fields, types and ranges checked (one-line errors naming the field)."""
        path = self.meta_path(key)
        if not path.exists():
            if self.tensor_path(key).exists():
                raise ReferenceError(f"{path}: missing (the reference's metadata); rebuild it with --force")
            raise ReferenceError(f"no reference {key} in {self.root}")
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ReferenceError(
                f"{path}: unreadable metadata ({_first_line(e)}); rebuild it with --force"
            ) from None
        _check_meta(meta, key, path)
        return meta

    def verify(self, key: str) -> dict[str, Any]:
        """The metadata of a reference whose tensor file has the stored size and SHA-256 and the shapes, dtypes and
        identity (model, tokenizer, window shape, dtype, top-k) the metadata states (else a one-line error)."""
        meta = self.meta(key)
        path = self.tensor_path(key)
        if not path.exists():
            raise ReferenceError(f"{path}: missing; rebuild the reference with --force")
        size, expected = path.stat().st_size, meta["tensors"]["bytes"]
        if size != expected:
            raise ReferenceError(
                f"{path}: truncated or modified ({size} bytes, expected {expected}); rebuild it with --force"
            )
        if _file_sha256(path) != meta["tensors"]["sha256"]:
            raise ReferenceError(
                f"{path}: content hash mismatch (corrupted or modified); rebuild it with --force"
            )
        self._check_tensor_file(key, meta)
        return meta

    def _check_tensor_file(self, key: str, meta: dict[str, Any]) -> None:
        """The tensor file's header (names, dtypes, shapes, key and identity) against the metadata."""
        path, meta_path = self.tensor_path(key), self.meta_path(key)
        header, found, tokens = _read_tensor_header(path)
        _check_shapes(found, meta, meta_path, path.name)
        if header.get("key") != key:
            raise _corrupt(meta_path, f"{path.name} holds reference {_short(header.get('key'))}, not {key}")
        if "identity" in header:
            _check_identity(header["identity"], meta, meta_path, path.name)
        elif _key_of(meta, tokens) != key:
            raise _corrupt(
                meta_path,
                f"its {', '.join(_IDENTITY)} no longer hash to its key {key}: one of them was edited",
            )

    def load(self, key: str) -> Reference:
        """Load and verify a reference."""
        from safetensors.torch import load_file

        meta = self.verify(key)
        path = self.tensor_path(key)
        try:
            tensors = load_file(str(path))
        except Exception as e:
            raise ReferenceError(f"{path}: unreadable ({_first_line(e)}); rebuild it with --force") from None
        return Reference(key=key, meta=meta, **{name: tensors.get(name) for name in _TENSORS})

    def save(
        self, key: str, tensors: dict[str, Any], meta: dict[str, Any], request: dict[str, Any] | None = None
    ) -> Reference:
        """Write the tensor file, then the metadata with its hash (both atomically), then the index entry.

        An invalid index fails before anything is written.
        """
        from safetensors.torch import save

        if request is not None:
            self.index()
        tensors = {name: t.contiguous() for name, t in tensors.items() if t is not None}
        header = {"format": FORMAT, "key": key, "identity": json.dumps(_identity(meta), sort_keys=True)}
        data = save(tensors, metadata=header)
        path = self.tensor_path(key)
        self._write(path, data)
        meta = {
            **meta,
            "format": FORMAT,
            "key": key,
            "tensors": {
                "file": path.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "bytes": len(data),
                "shapes": {name: list(t.shape) for name, t in tensors.items()},
            },
        }
        self._write(self.meta_path(key), json.dumps(meta, indent=2) + "\n")
        if request is not None:
            self.remember(request, key)
        return Reference(key=key, meta=meta, **{name: tensors.get(name) for name in _TENSORS})

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every reference in the store, verified; one that fails as {"key", "error"}."""
        entries = []
        for key in self.keys():
            try:
                entries.append(self.verify(key))
            except ReferenceError as e:
                entries.append({"key": key, "error": str(e)})
        return entries

    def resolve_key(self, prefix: str) -> str:
        """A full key from a unique prefix."""
        matches = [key for key in self.keys() if key.startswith(prefix)] if prefix else []
        if prefix in matches:
            return prefix
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ReferenceError(f"no reference {prefix!r} in {self.root}")
        raise ReferenceError(
            f"reference prefix {prefix!r} is ambiguous in {self.root} ({', '.join(matches)})"
        )


_INDEX_FIX = "fix or delete it (the references stay; the index only finds them faster)"


def _valid_entry(entry: Any) -> bool:
    """An index entry: {"key": a reference key, "request": an object}."""
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("key"), str)
        and entry["key"].isalnum()
        and isinstance(entry.get("request"), dict)
    )


def _check_request(meta: dict[str, Any], request: dict[str, Any], index: Path) -> None:
    """The reference an index entry points at against the request: its window shape, top-k, dtype and counts (the
    corpus is not compared: another corpus with the same tokens shares the reference)."""
    wanted = {
        "origin": "transformers",
        "windows.window_len": request.get("window_len"),
        "windows.prefill_len": request.get("prefill_len"),
        "top_k": request.get("top_k"),
        "dtype": request.get("dtype"),
        "windows.n_windows": request.get("n_windows"),
        "model.n_layers": request.get("n_layers"),
    }
    for name, value in wanted.items():
        if value is None:
            continue
        try:
            found = _get(meta, name)
        except (KeyError, TypeError):
            found = None
        if found != value:
            raise ReferenceError(
                f"{index}: the entry for this request points at reference {meta['key']}, whose {name} is "
                f"{_short(found)}, not {_short(value)}; {_INDEX_FIX}"
            )


def _read_tensor_header(path: Path) -> tuple[dict[str, str], dict[str, tuple[str, list[int]]], Any]:
    """(header metadata, name -> (dtype, shape), and the tokens as lists when the header has no identity to check)
    of a reference's tensor file, without torch."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            names = f.keys()
            header = f.metadata() or {}
            found = {
                name: (f.get_slice(name).get_dtype(), list(f.get_slice(name).get_shape())) for name in names
            }
            by_key = "identity" not in header and found.get("tokens", ("",))[0] == "I64"
            return header, found, f.get_tensor("tokens").tolist() if by_key else None
    except Exception as e:
        raise ReferenceError(f"{path}: unreadable ({_first_line(e)}); rebuild it with --force") from None


def _check_shapes(
    found: dict[str, tuple[str, list[int]]], meta: dict[str, Any], meta_path: Path, name: str
) -> None:
    """The tensors of a file (name -> (dtype, shape)) against what the metadata says they are."""
    expected = _expected_tensors(meta)
    unknown = sorted(set(found) - set(expected))
    if unknown:
        raise _corrupt(meta_path, f"{name} holds an unknown tensor {_short(unknown[0])}")
    w = meta["windows"]
    for tensor, want in expected.items():
        if tensor not in found and tensor not in ("tokens", "topk_ids"):
            continue
        if found.get(tensor) != want:
            held = (
                "no " + tensor if tensor not in found else f"{tensor} {found[tensor][0]} {found[tensor][1]}"
            )
            raise _corrupt(
                meta_path,
                f"{name} holds {held}, but windows.n_windows {w['n_windows']}, windows.window_len "
                f"{w['window_len']} and top_k {meta['top_k']} mean {tensor} {want[0]} {want[1]}",
            )
    if meta["tensors"]["shapes"] != {tensor: shape for tensor, (_, shape) in found.items()}:
        raise _corrupt(meta_path, f"tensors.shapes does not list the shapes of the tensors in {name}")


def _check_identity(stored: str, meta: dict[str, Any], meta_path: Path, name: str) -> None:
    """The identity a tensor file was built with (its header) against the metadata's, naming the field that differs."""
    try:
        built = json.loads(stored)
    except ValueError:
        built = None
    if not isinstance(built, dict):
        raise _corrupt(meta_path, f"{name} has an unreadable identity in its header")
    for field, value in _identity(meta).items():
        if built.get(field) != value:
            raise _corrupt(
                meta_path, f"{field} is {_short(value)}, but {name} was built with {_short(built.get(field))}"
            )


def _key_of(meta: dict[str, Any], tokens: list[list[int]]) -> str:
    """The key of a reference from its metadata and tokens (for tensor files whose header has no identity)."""
    w = meta["windows"]
    origin = meta["origin"]
    dtype = meta["dtype"] if origin == "transformers" else f"refpt:{meta.get('corpus', {}).get('sha256')}"
    windows = WindowSpec(w["window_len"], w["prefill_len"])
    return reference_key(
        meta["model"]["fingerprint"], meta["tokenizer"]["hash"], tokens, windows, dtype, meta["top_k"], origin
    )


def find_reference(store: ReferenceStore, request: dict[str, Any]) -> Reference | None:
    """The stored, verified reference for a request (None if never built; a corrupted one raises)."""
    key = store.lookup(request)
    return None if key is None else store.load(key)


# ------------------------------------------------------------------------------------------------------------------
# computing


@contextlib.contextmanager
def _placed(model: Any, device: str, dtype: Any) -> Iterator[Any]:
    """The model on `device` in `dtype` for the duration, then its original tensors back (no copy kept, and the
    canonical weights that share the original storage stay shared)."""
    import torch

    params = [(t, t.data) for t in model.parameters()]
    buffers = [(t, t.data) for t in model.buffers()]  # moved, not cast (RoPE frequencies stay float32)
    changes = torch.device(device).type != "cpu" or dtype != torch.float32
    saved = params + buffers
    try:
        if changes:
            for t, data in params:
                t.data = data.to(device=device, dtype=dtype if data.is_floating_point() else data.dtype)
            for t, data in buffers:
                t.data = data.to(device=device)
        yield model
    finally:
        if changes:
            for t, data in saved:
                t.data = data


def compute_reference(
    hf_model: Any,
    tokens: Any,
    *,
    top_k: int = DEFAULT_TOP_K,
    dtype: str = "float32",
    device: str = "cpu",
    on_window: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Per-position top-k summaries of the reference model on each window (tokens: LongTensor [N, L]).

    On CUDA the default stays float32 with TF32 off: the reference must be more precise than any candidate; pass
    bfloat16 only for a model that does not fit. The dtype is recorded in the metadata and in the key.
    """
    import torch

    check_options(top_k, dtype)
    torch_dtype = getattr(torch, dtype)
    tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    out: dict[str, list[Any]] = {name: [] for name in _TENSORS[1:]}
    try:
        with _placed(hf_model, device, torch_dtype) as model, torch.no_grad():
            for index in range(tokens.shape[0]):
                inputs = tokens[index : index + 1, :-1].to(device)
                logits = model(input_ids=inputs, use_cache=False).logits[0].float()  # [L-1, V]
                vocab = logits.shape[-1]
                if top_k > vocab:
                    raise ReferenceError(f"top-k {top_k} exceeds the vocabulary ({vocab})")
                lse = torch.logsumexp(logits, dim=-1)
                values, ids = logits.topk(top_k, dim=-1)
                targets = tokens[index, 1:].to(device)
                out["topk_ids"].append(ids.cpu())
                out["topk_logprobs"].append((values - lse[:, None]).cpu())
                out["logsumexp"].append(lse.cpu())
                out["target_logprobs"].append((logits.gather(-1, targets[:, None])[:, 0] - lse).cpu())
                if on_window is not None:
                    on_window(index)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = tf32
    result = {name: torch.stack(values) for name, values in out.items()}
    result["tokens"] = tokens.to(torch.int64).cpu()
    return result


def build_reference(
    model: Any,
    corpus: CorpusSpec,
    windows: WindowSpec,
    *,
    corpus_name: str = "corpus",
    top_k: int = DEFAULT_TOP_K,
    dtype: str = "float32",
    device: str = "cpu",
    store: ReferenceStore | None = None,
    request: dict[str, Any] | None = None,
    force: bool = False,
    on_window: Callable[[int], None] | None = None,
    on_windows: Callable[[int], None] | None = None,
) -> Reference:
    """Compute (or find by content key) the reference of `model` on `corpus` and store it.

    `model` needs `hf_model`, `tokenizer`, `fingerprint`, `source` and `config` (name, n_layers), as
    `tunelab.models.LoadedModel` has. `on_windows(n)` is told the window count before the forward passes.
    """
    import torch

    store = store or ReferenceStore()
    check_options(top_k, dtype)
    check_positions(windows.window_len, model)
    if top_k > model.config.vocab_size:
        raise ReferenceError(
            f"top-k {top_k} exceeds {model.config.name}'s vocabulary ({model.config.vocab_size})"
        )
    window_ids = make_windows(corpus, model.tokenizer, windows, corpus_name)
    tok_id = tokenizer_hash(model.tokenizer)
    key = reference_key(model.fingerprint, tok_id, window_ids, windows, dtype, top_k)
    if not force and store.exists(key):
        reference = store.load(key)
        if request is not None:
            store.remember(request, key)
        return reference
    if on_windows is not None:
        on_windows(len(window_ids))
    start = time.perf_counter()
    tokens = torch.tensor(window_ids, dtype=torch.int64)
    tensors = compute_reference(
        model.hf_model, tokens, top_k=top_k, dtype=dtype, device=device, on_window=on_window
    )
    meta = {
        "origin": "transformers",
        "model": {
            "name": model.config.name,
            "source": str(model.source),
            "fingerprint": model.fingerprint,
            "n_layers": model.config.n_layers,
        },
        "tokenizer": {"hash": tok_id, "bos_per_window": _bos(model.tokenizer) is not None},
        "corpus": {
            "name": corpus_name,
            "spec": corpus.to_dict(),
            "identity": corpus.identity(),
            "stream": "documents stripped, encoded without special tokens, joined by the encoding of '\\n\\n'; "
            "non-overlapping windows; BOS first in each window when the tokenizer adds one",
        },
        "windows": {
            "window_len": windows.window_len,
            "prefill_len": windows.prefill_len,
            "n_windows": len(window_ids),
            "n_decode": windows.n_decode,
            "rows": "row p of the per-position tensors predicts token p + 1; decode rows are "
            "prefill_len .. window_len - 2",
        },
        "top_k": top_k,
        "dtype": dtype,
        "device": str(torch.device(device)),
        "versions": _versions(),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "build_seconds": round(time.perf_counter() - start, 2),
    }
    return store.save(key, tensors, meta, request)


def request_for(
    model: str, corpus: str, windows: WindowSpec, top_k: int, dtype: str, layers: int | None
) -> tuple[str, CorpusSpec, dict[str, Any]]:
    """(corpus name, corpus spec, request) for a model source and corpus, without loading the model."""
    check_options(top_k, dtype)
    corpus_name, spec = resolve_corpus(corpus)
    return corpus_name, spec, reference_request(source_identity(model), spec, windows, top_k, dtype, layers)


def get_reference(
    model: str,
    corpus: str,
    windows: WindowSpec,
    *,
    top_k: int = DEFAULT_TOP_K,
    dtype: str = "float32",
    device: str = "cpu",
    layers: int | None = None,
    force: bool = False,
    store: ReferenceStore,
    loaded: Any = None,
    load_model: Callable[[str, int | None], Any] | None = None,
    on_load: Callable[[str], None] | None = None,
    on_window: Callable[[int], None] | None = None,
    on_windows: Callable[[int], None] | None = None,
) -> tuple[Reference, Any, bool]:
    """(reference, loaded model or None, cache hit) for the reference of model source `model` on `corpus`.

    A stored reference for the same request is returned without loading the model (unless `force`); otherwise
    `loaded` (or the model loaded by `load_model(model, layers)`, default `tunelab.models.load_model`, after
    `on_load(model)`) is run on the windows, `on_windows(n)` and `on_window(i)` reporting progress.
    """
    corpus_name, spec, request = request_for(model, corpus, windows, top_k, dtype, layers)
    if force:
        store.index()  # an invalid index (never rewritten) fails before any work
    else:
        found = find_reference(store, request)
        if found is not None:
            return found, loaded, True
    if loaded is None:
        if on_load is not None:
            on_load(model)
        loaded = (load_model or _load_model)(model, layers)
    reference = build_reference(
        loaded, spec, windows, corpus_name=corpus_name, top_k=top_k, dtype=dtype, device=device, store=store,
        request=request, force=force, on_window=on_window, on_windows=on_windows,
    )  # fmt: skip
    return reference, loaded, False


def _load_model(source: str, n_layers: int | None) -> Any:
    from tunelab.models import load_model

    return load_model(source, n_layers=n_layers)


def check_options(top_k: int, dtype: str) -> None:
    """A one-line ReferenceError for a top-k or dtype no reference can have."""
    if dtype not in DTYPES:
        raise ReferenceError(f"unknown reference dtype {dtype!r} (expected {', '.join(DTYPES)})")
    if top_k < 5:
        raise ReferenceError(f"top-k must be at least 5 (tt-metal's top-5), got {top_k}")


def check_positions(window_len: int, loaded: Any) -> None:
    """A one-line ReferenceError when windows of `window_len` tokens exceed the model's positions."""
    limit = loaded.config.max_position_embeddings
    if window_len > limit:
        raise ReferenceError(
            f"{window_len}-token windows exceed {loaded.config.name}'s {limit} positions (max_position_embeddings)"
        )


def check_fingerprint(reference: Reference, loaded: Any, source: str) -> None:
    """Raise a one-line ReferenceError when `reference` was built from other weights or another tokenizer than
    `loaded` (from `source`): the fingerprint covers the vocabulary, the tokenizer hash also how it encodes."""
    built = reference.meta["model"]["fingerprint"]
    rebuild = f"rebuild it with `tunelab reference build --model {source} --force`"
    if built != loaded.fingerprint:
        raise ReferenceError(
            f"reference {reference.key} was built from model fingerprint {built}, but {source} now has "
            f"{loaded.fingerprint}: {rebuild}"
        )
    built, now = reference.meta["tokenizer"]["hash"], tokenizer_hash(loaded.tokenizer)
    if built != now:
        raise ReferenceError(
            f"reference {reference.key} was built with tokenizer {built}, but {source}'s tokenizer is {now}: "
            f"{rebuild}"
        )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "tunelab"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found
