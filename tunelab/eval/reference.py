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
- `index.json`: request -> key, so that a repeated build finds its reference without loading the model.

The key is a content hash of (model fingerprint, tokenizer, window token ids, lengths, dtype, k). The request is a
cheap identity of what was asked: the model source's resolved files with their sizes and mtimes, the corpus spec
with its files' content, the window spec, k, dtype and layer count. A request hit is verified against the tensor
file's stored hash; `tunelab eval` also checks the model fingerprint it loads against the reference's
(`check_fingerprint`). `get_reference` is the whole lookup-or-build, loading the model only on a miss.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from tunelab.errors import TunelabError
from tunelab.eval.corpus import CorpusSpec, WindowSpec, _bos, make_windows, resolve_corpus

__all__ = [
    "DEFAULT_TOP_K",
    "FORMAT",
    "Reference",
    "ReferenceError",
    "ReferenceStore",
    "build_reference",
    "check_fingerprint",
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


def _atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Write through a temporary file in the same directory, then rename: readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # umask permissions
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


class ReferenceStore:
    """A directory of references (`<key>.safetensors` + `<key>.json`) with a request index (`index.json`)."""

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else default_reference_dir()

    def tensor_path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def meta_path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def exists(self, key: str) -> bool:
        return self.tensor_path(key).exists() and self.meta_path(key).exists()

    # index ------------------------------------------------------------------------------------------------------

    def _index(self) -> dict[str, Any]:
        try:
            data = json.loads(self.index_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError):
            return {}  # the index is only a shortcut: an unreadable one is rebuilt as references are built
        return data if isinstance(data, dict) else {}

    def lookup(self, request: dict[str, Any]) -> str | None:
        """The key stored for a request, if its files are still there."""
        entry = self._index().get(request_id(request))
        key = entry.get("key") if isinstance(entry, dict) else None
        return key if key and self.exists(key) else None

    def remember(self, request: dict[str, Any], key: str) -> None:
        index = self._index()
        index[request_id(request)] = {"key": key, "request": request}
        _atomic_write(self.index_path, lambda p: p.write_text(json.dumps(index, indent=1, sort_keys=True)))

    # metadata and integrity -------------------------------------------------------------------------------------

    def meta(self, key: str) -> dict[str, Any]:
        path = self.meta_path(key)
        if not path.exists():
            if self.tensor_path(key).exists():
                raise ReferenceError(f"{path}: missing (the reference's metadata); rebuild it with --force")
            raise ReferenceError(f"no reference {key} in {self.root}")
        try:
            meta = json.loads(path.read_text())
            meta["tensors"]["sha256"], meta["tensors"]["bytes"], meta["windows"]["prefill_len"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ReferenceError(f"{path}: unreadable metadata ({e}); rebuild it with --force") from None
        return meta

    def verify(self, key: str) -> dict[str, Any]:
        """The metadata of a reference whose tensor file has the stored size and SHA-256 (else one-line error)."""
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
        return meta

    def load(self, key: str) -> Reference:
        """Load and verify a reference."""
        from safetensors.torch import load_file

        meta = self.verify(key)
        path = self.tensor_path(key)
        try:
            tensors = load_file(str(path))
        except Exception as e:
            raise ReferenceError(f"{path}: unreadable ({e}); rebuild it with --force") from None
        missing = [name for name in ("tokens", "topk_ids") if name not in tensors]
        if missing:
            raise ReferenceError(f"{path}: no tensor {missing[0]!r}; rebuild it with --force")
        return Reference(key=key, meta=meta, **{name: tensors.get(name) for name in _TENSORS})

    def save(
        self, key: str, tensors: dict[str, Any], meta: dict[str, Any], request: dict[str, Any] | None = None
    ) -> Reference:
        """Write the tensor file, then the metadata with its hash (both atomically), then the index entry."""
        from safetensors.torch import save_file

        tensors = {name: t.contiguous() for name, t in tensors.items() if t is not None}
        path = self.tensor_path(key)
        _atomic_write(path, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT, "key": key}))
        meta = {
            **meta,
            "format": FORMAT,
            "key": key,
            "tensors": {
                "file": path.name,
                "sha256": _file_sha256(path),
                "bytes": path.stat().st_size,
                "shapes": {name: list(t.shape) for name, t in tensors.items()},
            },
        }
        _atomic_write(self.meta_path(key), lambda p: p.write_text(json.dumps(meta, indent=2) + "\n"))
        if request is not None:
            self.remember(request, key)
        return Reference(key=key, meta=meta, **{name: tensors.get(name) for name in _TENSORS})

    def list(self) -> list[dict[str, Any]]:
        """Metadata of every reference in the store (unreadable ones as {"key", "error"})."""
        entries = []
        for path in sorted(self.root.glob("*.json")):
            if path.name == "index.json":
                continue
            try:
                entries.append(self.meta(path.stem))
            except ReferenceError as e:
                entries.append({"key": path.stem, "error": str(e)})
        return entries

    def resolve_key(self, prefix: str) -> str:
        """A full key from a unique prefix."""
        if self.exists(prefix):
            return prefix
        matches = sorted({p.stem for p in self.root.glob(f"{prefix}*.json") if p.name != "index.json"})
        if len(matches) == 1:
            return matches[0]
        if not matches:
            raise ReferenceError(f"no reference {prefix!r} in {self.root}")
        raise ReferenceError(
            f"reference prefix {prefix!r} is ambiguous in {self.root} ({', '.join(matches)})"
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

    if dtype not in DTYPES:
        raise ReferenceError(f"unknown reference dtype {dtype!r} (expected {', '.join(DTYPES)})")
    if top_k < 5:
        raise ReferenceError(f"top-k must be at least 5 (tt-metal's top-5), got {top_k}")
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
    if not force:
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


def check_fingerprint(reference: Reference, loaded: Any, source: str) -> None:
    """Raise a one-line ReferenceError when `reference` was built from other weights than `loaded` (from `source`)."""
    built = reference.meta["model"]["fingerprint"]
    if built != loaded.fingerprint:
        raise ReferenceError(
            f"reference {reference.key} was built from model fingerprint {built}, but {source} now has "
            f"{loaded.fingerprint}: rebuild it with `tunelab reference build --model {source} --force`"
        )


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for package in ("torch", "transformers", "tunelab"):
        with contextlib.suppress(PackageNotFoundError):
            found[package] = version(package)
    return found
