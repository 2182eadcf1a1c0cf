"""tt-metal `.refpt` reference files: import them as tunelab references, export ours for tt-metal's tests.

A .refpt is `torch.save({"top5_tokens": int64 [L-1, 5], "reference_tokens": int64 [1, L]})`: row p of
`top5_tokens` holds the reference model's 5 most likely ids for token p + 1 given tokens 0..p (column 0 the argmax),
and `reference_tokens` the true corpus tokens (tt_transformers.md §3.1). tt-metal scores it with prefill L // 2
(512 of 1024) and the L - 1 - L // 2 teacher-forced decode positions after it.

An imported file becomes a one-window reference with top-5 ids only: top-1 and top-5 work, perplexity of the
candidate works (it needs only the true tokens), KL and the reference's own perplexity are unavailable (None).
"""

from __future__ import annotations

import io
import stat
import sys
import warnings
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from tunelab.eval.corpus import WindowSpec
from tunelab.eval.reference import (
    Reference,
    ReferenceError,
    ReferenceStore,
    _file_sha256,
    check_positions,
    reference_key,
    tokenizer_hash,
)
from tunelab.files import atomic_write

__all__ = ["export_refpt", "import_refpt", "read_refpt"]


def read_refpt(path: Path | str) -> tuple[torch.Tensor, torch.Tensor]:
    """(top5_tokens [L-1, 5], reference_tokens [1, L]) of a .refpt file, validated (one-line errors)."""
    path = Path(path)
    _check_regular(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's notes on pickle protocols: the error below says it all
            data = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ReferenceError(f"{path}: no such file") from None
    except OSError as e:
        raise ReferenceError(f"{path}: cannot read it ({e.strerror or e})") from None
    except Exception:
        raise ReferenceError(
            f"{path}: not a readable .refpt file (truncated, corrupted, or not a torch.save of tensors)"
        ) from None
    if not isinstance(data, dict) or not {"top5_tokens", "reference_tokens"} <= set(data):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ReferenceError(f"{path}: a .refpt holds 'top5_tokens' and 'reference_tokens' (found {found})")
    top5, tokens = data["top5_tokens"], data["reference_tokens"]
    for name, t in (("top5_tokens", top5), ("reference_tokens", tokens)):
        if not isinstance(t, torch.Tensor) or t.dtype.is_floating_point or t.dtype == torch.bool:
            raise ReferenceError(f"{path}: {name} must be an integer tensor")
    if tokens.dim() == 1:
        tokens = tokens[None]
    if tokens.dim() != 2 or tokens.shape[0] != 1 or tokens.shape[1] < 3:
        raise ReferenceError(f"{path}: reference_tokens has shape {tuple(tokens.shape)}, expected [1, L]")
    length = tokens.shape[1]
    if top5.dim() != 2 or top5.shape[1] < 5 or top5.shape[0] < length - 1:
        raise ReferenceError(
            f"{path}: top5_tokens has shape {tuple(top5.shape)}, expected [{length - 1}, 5] for {length} tokens"
        )
    return top5[: length - 1, :5].to(torch.int64), tokens.to(torch.int64)


def _check_regular(path: Path) -> None:
    """A one-line error unless `path` is a regular file (a FIFO would block `torch.load` forever)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise ReferenceError(f"{path}: no such file") from None
    except OSError as e:
        raise ReferenceError(f"{path}: cannot read it ({e.strerror or e})") from None
    if stat.S_ISDIR(mode):
        raise ReferenceError(f"{path}: is a directory, not a .refpt file")
    if not stat.S_ISREG(mode):
        raise ReferenceError(f"{path}: is not a regular file (expected a .refpt file)")


def import_refpt(
    path: Path | str, model: Any, store: ReferenceStore | None = None, force: bool = False
) -> Reference:
    """Store a .refpt as a reference for `model` (needs `fingerprint`, `tokenizer`, `source`, `config`).

    Its key hashes the file's content with the model fingerprint, so importing the same file again is a no-op
    (unless `force`, which replaces a stored copy, e.g. a corrupted one).
    """
    path = Path(path)
    store = store or ReferenceStore()
    top5, tokens = read_refpt(path)
    vocab = int(model.config.vocab_size)
    largest = max(int(top5.max()), int(tokens.max()))
    if largest >= vocab or min(int(top5.min()), int(tokens.min())) < 0:
        raise ReferenceError(
            f"{path}: token id {largest} is outside {model.config.name}'s vocabulary ({vocab}): "
            "a reference file for another model?"
        )
    windows = WindowSpec.tt_metal(tokens.shape[1])
    check_positions(windows.window_len, model)
    file_hash = _file_sha256(path)
    tok_id = tokenizer_hash(model.tokenizer)
    key = reference_key(model.fingerprint, tok_id, tokens.tolist(), windows, f"refpt:{file_hash}", 5, "refpt")
    if not force and store.exists(key):
        return store.load(key)
    meta = {
        "origin": "refpt",
        "model": {
            "name": model.config.name,
            "source": str(model.source),
            "fingerprint": model.fingerprint,
            "n_layers": model.config.n_layers,
        },
        "tokenizer": {"hash": tok_id},
        "corpus": {"name": f"refpt:{path.name}", "file": str(path.absolute()), "sha256": file_hash},
        "windows": {
            "window_len": windows.window_len,
            "prefill_len": windows.prefill_len,
            "n_windows": 1,
            "n_decode": windows.n_decode,
            "rows": "row p predicts token p + 1; decode rows are prefill_len .. window_len - 2 (tt-metal: L // 2)",
        },
        "top_k": 5,
        "dtype": "unknown (tt-metal .refpt: top-5 ids only)",
        "device": None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    return store.save(key, {"tokens": tokens, "topk_ids": top5[None]}, meta)


def export_refpt(reference: Reference, path: Path | str, window: int = 0) -> Path:
    """Write one window of a reference as a tt-metal .refpt (all L - 1 rows of its top 5), atomically: a failed
    write leaves an existing file as it was."""
    path = Path(path)
    if not 0 <= window < reference.n_windows:
        raise ReferenceError(
            f"reference {reference.key} has windows 0..{reference.n_windows - 1}, not {window}"
        )
    data = {
        "top5_tokens": reference.topk_ids[window, :, :5].to(torch.int64).contiguous(),
        "reference_tokens": reference.tokens[window : window + 1].to(torch.int64).contiguous(),
    }
    buffer = io.BytesIO()
    torch.save(data, buffer)
    atomic_write(path, buffer.getvalue())
    if reference.prefill_len != reference.window_len // 2:
        print(
            f"note: tt-metal scores a .refpt with prefill {reference.window_len // 2}; this reference was "
            f"built with prefill {reference.prefill_len} (the top-5 rows are valid for any prefill)",
            file=sys.stderr,
        )
    return path
