"""Evaluation corpora, registered by name and described as data, and the token windows cut from them.

A corpus is a `CorpusSpec` (where its documents come from) resolved through one registry, `CORPORA`:

- `default`: the built-in corpus, original English text written for tunelab (package data `corpus_data/*.txt`,
  one document per file, read in file-name order): narrative, technical, dialogue, instructions, code;
- a text file (one document) or a directory (every `*.txt` in it, sorted by name, one document each);
- a JSON prompt file: a list of strings, or of objects with a "text" (or "prompt") field, one document each;
- a JSON spec file: an object with a "kind" key, i.e. a `CorpusSpec` written as data (relative paths are relative to
  the spec file), which is how a user adds a corpus without touching tunelab;
- a Hugging Face `datasets` spec `hf:NAME:CONFIG:SPLIT:COLUMN` (empty fields take defaults). NAME may be one of the
  local builders text/json/csv/parquet, in which case CONFIG is the data file path (or a glob), e.g.
  `hf:csv:data/reviews.csv:train:body`.

Windows follow tt-transformers' test_accuracy protocol by default: 1024 tokens, the first 512 prefilled and the next
511 teacher-forced decode positions scored. The token stream is built by encoding every non-empty document (stripped)
without special tokens and joining them with the encoding of a blank line ("\\n\\n"). Windows are non-overlapping
slices of that stream, spread evenly over it when it holds more windows than are used (the built-in corpus holds
16 windows of 1024 SmolLM2 tokens; 8 are used by default, one every other slot, so every register is represented).
When the tokenizer adds a BOS token by default (Llama 3 does, SmolLM2 does not), every window starts with it, as
tt-metal's generate_reference_hf.py encodes with add_special_tokens=True; it then holds BOS + window_len - 1 stream
tokens.

Nothing here imports torch, so a reference cache lookup stays fast.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from tunelab.errors import TunelabError

__all__ = [
    "CORPORA",
    "DEFAULT_WINDOWS",
    "LOCAL_BUILDERS",
    "CorpusError",
    "CorpusSpec",
    "WindowSpec",
    "builtin_documents",
    "iter_documents",
    "make_windows",
    "register_corpus",
    "resolve_corpus",
    "token_stream",
]

DEFAULT_WINDOWS = 8  # windows per evaluation when not given: as many as the corpus yields, at most this many
MAX_STREAM_TOKENS = 65536  # tokens read from a corpus at most, unless the windows asked for need more
# `datasets` builders whose CONFIG field is a data-file path
LOCAL_BUILDERS = ("text", "json", "csv", "parquet")
SEPARATOR = "\n\n"  # joins documents in the token stream
CorpusKind = Literal["builtin", "text", "json", "datasets"]


class CorpusError(TunelabError):
    """A corpus that cannot be found, read or cut into windows."""


@dataclass(frozen=True)
class CorpusSpec:
    """Where a corpus's documents come from.

    kind: "builtin" (package data), "text" (a file or a directory of *.txt), "json" (a prompt file) or "datasets".
    path: the file or directory (text, json); for datasets, the data file(s) of a local builder.
    name, config, split, column: the `datasets.load_dataset` arguments and the text column (datasets only).
    """

    kind: CorpusKind
    path: str | None = None
    name: str | None = None
    config: str | None = None
    split: str = "train"
    column: str = "text"
    description: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.kind not in ("builtin", "text", "json", "datasets"):
            raise CorpusError(f"unknown corpus kind {self.kind!r} (expected builtin, text, json or datasets)")
        if self.kind in ("text", "json") and not self.path:
            raise CorpusError(f"a {self.kind} corpus needs a path")
        if self.kind == "datasets" and not self.name:
            raise CorpusError(
                "a datasets corpus needs a name (a hub dataset or one of text, json, csv, parquet)"
            )
        if self.kind == "datasets" and self.name in LOCAL_BUILDERS and not self.path:
            raise CorpusError(f"the datasets builder {self.name!r} needs data files (path)")

    @classmethod
    def from_dict(
        cls, data: dict[str, Any], base: Path | None = None, where: str = "corpus spec"
    ) -> CorpusSpec:
        """A spec written as data (a JSON object); relative paths are taken relative to `base`."""
        known = {"kind", "path", "name", "config", "split", "column", "description"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CorpusError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(known))})")
        if "kind" not in data:
            raise CorpusError(f"{where}: a corpus spec needs a 'kind' (builtin, text, json or datasets)")
        values = {k: v for k, v in data.items() if v is not None}
        wrong = next((k for k, v in values.items() if not isinstance(v, str)), None)
        if wrong is not None:
            raise CorpusError(f"{where}: {wrong} must be a string, got {json.dumps(values[wrong])[:40]}")
        path = values.get("path")
        if path is not None and base is not None and not Path(path).expanduser().is_absolute():
            values["path"] = str(base / path)
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, "")}

    def identity(self) -> str:
        """A hash of the spec and of the content of its local files (no tokenizer, no `datasets` load).

        Hub datasets are identified by their spec alone: a changed hub dataset is caught by the reference's own
        content key (the window token ids), not by this cheap identity.
        """
        facts = {k: v for k, v in self.to_dict().items() if k != "description"}
        h = hashlib.sha256(json.dumps(facts, sort_keys=True).encode())
        for file in self._local_files():
            h.update(f"\n{file.name}\n".encode())
            try:
                h.update(file.read_bytes())
            except OSError as e:
                raise CorpusError(f"{file}: cannot read it ({e.strerror or e})") from None
        return h.hexdigest()[:16]

    def _local_files(self) -> list[Path]:
        if self.kind == "builtin":
            return _builtin_files()
        if self.kind == "datasets" and self.name not in LOCAL_BUILDERS:
            return []
        assert self.path is not None
        if _is_glob(self.path):
            files = sorted(Path(p) for p in glob.glob(str(Path(self.path).expanduser())))
            if not files:
                raise CorpusError(f"{self.path}: no file matches")
            return files
        path = Path(self.path).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.txt")) if self.kind == "text" else sorted(p for p in path.iterdir())
            return [f for f in files if f.is_file()]
        if not path.exists():
            raise CorpusError(f"{path}: no such file or directory")
        return [path]


CORPORA: dict[str, CorpusSpec] = {
    "default": CorpusSpec(
        "builtin",
        description="tunelab's built-in English corpus: narrative, technical, dialogue, instructions, code",
    ),
    "wikitext-2": CorpusSpec(
        "datasets",
        name="wikitext",
        config="wikitext-2-raw-v1",
        split="test",
        column="text",
        description="WikiText-2 (raw) test split from the Hugging Face hub, one line per document",
    ),
}


def register_corpus(name: str, spec: CorpusSpec | dict[str, Any]) -> CorpusSpec:
    """Register a corpus under a name (a spec or its dict form); later `resolve_corpus(name)` finds it."""
    if isinstance(spec, dict):
        spec = CorpusSpec.from_dict(spec, where=f"corpus {name!r}")
    CORPORA[name] = spec
    return spec


def resolve_corpus(text: str) -> tuple[str, CorpusSpec]:
    """(display name, spec) of a corpus argument: a registered name, `hf:...`, a file or a directory."""
    if text in CORPORA:
        return text, CORPORA[text]
    if text.startswith("hf:"):
        return text, _parse_hf(text)
    path = Path(text).expanduser()
    kind = _file_kind(path)
    if kind == "dir":
        if not any(path.glob("*.txt")):
            raise CorpusError(f"{path}: a corpus directory needs *.txt files (one document each)")
        return str(path), CorpusSpec("text", path=str(path.absolute()))
    if kind == "file":
        if path.suffix.lower() == ".json":
            data = _read_json(path)
            if isinstance(data, dict):
                return str(path), CorpusSpec.from_dict(data, base=path.parent.absolute(), where=str(path))
            return str(path), CorpusSpec("json", path=str(path.absolute()))
        return str(path), CorpusSpec("text", path=str(path.absolute()))
    raise CorpusError(
        f"unknown corpus {text!r}: not a registered name ({', '.join(CORPORA)}), an existing file or directory, "
        "or hf:NAME:CONFIG:SPLIT:COLUMN"
    )


def _file_kind(path: Path) -> str | None:
    """What `path` is: "dir", "file" (a regular one) or None (missing, or a name the file system cannot hold)."""
    try:
        return "dir" if path.is_dir() else "file" if path.is_file() else None
    except (OSError, ValueError):
        return None


def _parse_hf(text: str) -> CorpusSpec:
    """hf:NAME[:CONFIG[:SPLIT[:COLUMN]]]; split and column are taken from the right so a path may hold colons."""
    body = text[3:]
    head, *tail = body.split(":", 1)
    rest = tail[0] if tail else ""
    parts = rest.rsplit(":", 2) if rest else []
    config = parts[0] if parts else ""
    split = parts[1] if len(parts) > 1 else ""
    column = parts[2] if len(parts) > 2 else ""
    if not head:
        raise CorpusError(f"{text}: expected hf:NAME:CONFIG:SPLIT:COLUMN (NAME is missing)")
    local = head in LOCAL_BUILDERS
    if local and not config:
        raise CorpusError(f"{text}: the {head!r} builder needs a data file, e.g. hf:{head}:PATH:train:text")
    if local and not (glob.glob(str(Path(config).expanduser())) or Path(config).expanduser().exists()):
        raise CorpusError(f"{text}: {config}: no such file or directory")
    return CorpusSpec(
        "datasets",
        path=str(Path(config).expanduser().absolute()) if local else None,
        name=head,
        config=None if local or not config else config,
        split=split or "train",
        column=column or "text",
    )


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise CorpusError(f"{path}: cannot read it as JSON ({e})") from None


# ------------------------------------------------------------------------------------------------------------------
# documents


def _builtin_files() -> list[Path]:
    root = resources.files("tunelab.eval") / "corpus_data"
    files = sorted((Path(str(p)) for p in root.iterdir() if p.name.endswith(".txt")), key=lambda p: p.name)
    if not files:
        raise CorpusError(
            "the built-in corpus is missing from the installed tunelab (tunelab/eval/corpus_data)"
        )
    return files


def builtin_documents() -> list[str]:
    """The built-in corpus's documents, in file-name order."""
    return [p.read_text(encoding="utf-8") for p in _builtin_files()]


def iter_documents(spec: CorpusSpec) -> Iterator[str]:
    """The documents of a corpus, lazily (a large `datasets` corpus is read only as far as it is consumed)."""
    if spec.kind in ("builtin", "text"):
        for file in spec._local_files():
            try:
                yield file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                raise CorpusError(f"{file}: cannot read it as UTF-8 text ({e})") from None
    elif spec.kind == "json":
        yield from _json_documents(Path(spec.path or ""))
    else:
        yield from _dataset_documents(spec)


def _json_documents(path: Path) -> Iterator[str]:
    data = _read_json(path)
    if not isinstance(data, list):
        raise CorpusError(
            f"{path}: a JSON prompt file is a list of strings or of objects with a 'text' field"
        )
    for index, item in enumerate(data):
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict) and isinstance(item.get("text", item.get("prompt")), str):
            yield item.get("text", item.get("prompt"))
        else:
            raise CorpusError(
                f"{path}: item {index} is neither a string nor an object with a 'text' or 'prompt'"
            )


def _dataset_documents(spec: CorpusSpec) -> Iterator[str]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise CorpusError("datasets corpora need the `datasets` package") from None
    where = f"hf:{spec.name}"
    try:
        if spec.name in LOCAL_BUILDERS:
            dataset = datasets.load_dataset(spec.name, data_files=spec.path, split=spec.split)
        else:
            dataset = datasets.load_dataset(spec.name, spec.config, split=spec.split)
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise CorpusError(f"{where}: cannot load the dataset ({first})") from None
    if spec.column not in dataset.column_names:
        raise CorpusError(
            f"{where}: no column {spec.column!r} in split {spec.split!r} "
            f"(columns: {', '.join(dataset.column_names)})"
        )
    for value in dataset[spec.column]:  # a lazy column: rows are read as they are consumed
        if value is not None:
            yield str(value)


# ------------------------------------------------------------------------------------------------------------------
# windows


@dataclass(frozen=True)
class WindowSpec:
    """How windows are cut: `window_len` tokens each, the first `prefill_len` prefilled, the rest teacher-forced.

    The tt-metal protocol (the default) feeds tokens[:window_len - 1]: prefill 512, then 511 decode steps each fed
    the true token, so `n_decode` = window_len - 1 - prefill_len positions are scored (the last token is only a
    target). `n_windows` None means as many as the corpus yields, at most DEFAULT_WINDOWS.
    """

    window_len: int = 1024
    prefill_len: int = 512
    n_windows: int | None = None

    def __post_init__(self) -> None:
        if self.window_len < 3:
            raise CorpusError(f"window length must be at least 3 tokens, got {self.window_len}")
        if not 1 <= self.prefill_len <= self.window_len - 2:
            raise CorpusError(
                f"prefill must be in 1..{self.window_len - 2} for {self.window_len}-token windows, "
                f"got {self.prefill_len}"
            )
        if self.n_windows is not None and self.n_windows < 1:
            raise CorpusError(f"the number of windows must be at least 1, got {self.n_windows}")

    @property
    def n_decode(self) -> int:
        return self.window_len - 1 - self.prefill_len

    @classmethod
    def tt_metal(cls, window_len: int = 1024, n_windows: int | None = None) -> WindowSpec:
        """tt-metal's split of a reference file: prefill = window_len // 2."""
        return cls(window_len, window_len // 2, n_windows)


def _bos(tokenizer: Any) -> int | None:
    """The BOS id if the tokenizer prepends it by default (as tt-metal's reference script encodes), else None."""
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None:
        return None
    ids = tokenizer.encode("a")
    return bos if ids and ids[0] == bos else None


def token_stream(spec: CorpusSpec, tokenizer: Any, max_tokens: int | None = None) -> list[int]:
    """The corpus's documents encoded without special tokens and joined by the encoding of a blank line."""
    separator = tokenizer.encode(SEPARATOR, add_special_tokens=False)
    stream: list[int] = []
    for document in iter_documents(spec):
        text = document.strip()
        if not text:
            continue
        if stream:
            stream.extend(separator)
        stream.extend(tokenizer.encode(text, add_special_tokens=False))
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    return stream


def make_windows(
    spec: CorpusSpec, tokenizer: Any, windows: WindowSpec, name: str = "corpus"
) -> list[list[int]]:
    """Non-overlapping windows of `windows.window_len` token ids from the corpus's token stream (see the module).

    The stream (at most MAX_STREAM_TOKENS of it, or what the windows asked for need, so a large dataset is not
    tokenised whole) is cut into consecutive window slots; when there are more slots than windows wanted, the
    windows are spread evenly over them (slot floor(i * slots / wanted) for window i), so every part of the corpus
    is represented.
    """
    bos = _bos(tokenizer)
    per_window = windows.window_len - (bos is not None)
    wanted = windows.n_windows or DEFAULT_WINDOWS
    stream = token_stream(spec, tokenizer, max(wanted * per_window, MAX_STREAM_TOKENS))
    slots = len(stream) // per_window
    if slots == 0:
        raise CorpusError(
            f"corpus {name} has {len(stream)} tokens; one {windows.window_len}-token window needs {per_window}"
        )
    if windows.n_windows is not None and slots < windows.n_windows:
        raise CorpusError(
            f"corpus {name} has {len(stream)} tokens: {slots} windows of {windows.window_len}, "
            f"not the {windows.n_windows} asked for"
        )
    count = min(slots, wanted)
    prefix = [bos] if bos is not None else []
    chosen = [i * slots // count for i in range(count)]
    return [prefix + stream[s * per_window : (s + 1) * per_window] for s in chosen]
