"""`load_model`: any supported source -> the fp32 HF reference model, its tokenizer and the canonical weights.

GGUF files and Meta checkpoints are converted once into a HF-format cache entry (`tunelab.models.cache`) and every
load then reads a HF directory, so a first and a second load give identical tensors. The architecture (and the
RoPE variant) is checked from the config before any weight is read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import logging
import math
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch

from tunelab.errors import TunelabError
from tunelab.files import shown
from tunelab.models import cache
from tunelab.models.config import ModelConfig, UnsupportedArchitecture
from tunelab.models.convert import hf_to_canonical, meta_checkpoint_to_hf, meta_tokenizer
from tunelab.models.sources import Source, resolve_source
from tunelab.models.weights import ModelWeights

__all__ = ["SUPPORTED_ROPE_TYPES", "LoadedModel", "fingerprint", "load_model", "load_model_config"]

log = logging.getLogger(__name__)

SUPPORTED_ROPE_TYPES = ("default", "llama3", "yarn")
_HUB_PROBE_TIMEOUT_S = 3.0


@dataclass
class LoadedModel:
    """A model ready for the emulator (`weights`) and the reference (`hf_model`), which share storage."""

    config: ModelConfig
    hf_config: Any  # transformers.PretrainedConfig; num_hidden_layers already truncated
    hf_model: Any  # transformers.PreTrainedModel: float32, eval(), CPU, requires_grad off
    tokenizer: Any  # transformers.PreTrainedTokenizerBase
    weights: ModelWeights
    fingerprint: str
    source: str


def load_model(source: str | os.PathLike | None = None, *, n_layers: int | None = None) -> LoadedModel:
    """Load a model from an alias, a GGUF file, a HF or Meta directory, a hub id, or $HF_MODEL / $LLAMA_DIR.

    `n_layers` keeps only the first N decoders (in `hf_model`, `hf_config`, `config` and `weights`).
    Every failure the user can fix is a one-line `TunelabError`.
    """
    src = resolve_source(source)
    if n_layers is not None and n_layers < 1:
        raise TunelabError(f"{src.display}: n_layers must be at least 1, got {n_layers}")
    with _quiet_transformers():
        return _load_hf(src, *_location(src), n_layers)


def load_model_config(source: str | os.PathLike | None = None, *, n_layers: int | None = None) -> ModelConfig:
    """The `ModelConfig` `load_model` would give, without reading the weights (a GGUF or Meta checkpoint is
    converted into the model cache first, as `load_model` would)."""
    from transformers import AutoConfig

    src = resolve_source(source)
    with _quiet_transformers():
        location, kwargs = _location(src)
        hf_config = _hf_call(src, "config", AutoConfig.from_pretrained, location, **kwargs)
        return _limit_layers(src, _check(hf_config, src.name), n_layers)


def _location(src: Source) -> tuple[str, dict]:
    """Where transformers loads `src` from (a model-cache directory for GGUF and Meta checkpoints), with kwargs."""
    if src.kind == "gguf":
        return _cached(src, [Path(src.location)], _build_gguf), {}
    if src.kind == "meta":
        directory = Path(src.location)
        files = [directory / "params.json", *directory.glob("consolidated.*.pth")]
        files += [directory / "tokenizer.model"] if (directory / "tokenizer.model").is_file() else []
        return _cached(src, files, _build_meta), {}
    if src.kind == "hub":
        return src.location, _hub_kwargs(src)
    return src.location, {}


def _limit_layers(src: Source, config: ModelConfig, n_layers: int | None) -> ModelConfig:
    if n_layers is None:
        return config
    if n_layers > config.n_layers:
        raise TunelabError(f"{src.display}: n_layers={n_layers} but the model has {config.n_layers} layers")
    return dataclasses.replace(config, n_layers=n_layers)


# ------------------------------------------------------------------------------------------------------------------
# HF directory / hub id


def _load_hf(src: Source, location: str, kwargs: dict, n_layers: int | None) -> LoadedModel:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    hf_config = _hf_call(src, "config", AutoConfig.from_pretrained, location, **kwargs)
    config = _limit_layers(src, _check(hf_config, src.name), n_layers)
    if n_layers is not None:
        _truncate(hf_config, n_layers)
    model, loading = _hf_call(
        src,
        "weights",
        AutoModelForCausalLM.from_pretrained,
        location,
        config=hf_config,
        dtype=torch.float32,
        output_loading_info=True,
        **kwargs,
    )
    _check_weights(src, model, loading)
    model.eval().requires_grad_(False)
    tokenizer = _hf_call(src, "tokenizer", AutoTokenizer.from_pretrained, location, **kwargs)
    weights = hf_to_canonical(model.state_dict(), config)
    return LoadedModel(
        config=config,
        hf_config=model.config,
        hf_model=model,
        tokenizer=tokenizer,
        weights=weights,
        fingerprint=fingerprint(model, tokenizer, config),
        source=src.display,
    )


def _hf_call(src: Source, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except TunelabError:
        raise
    except Exception as e:
        first = next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        if src.kind == "hub":
            raise TunelabError(f"cannot load {src.location!r} ({what}): {first}") from None
        raise TunelabError(f"{src.display}: cannot load the {what} ({first})") from None


def _check_weights(src: Source, model: Any, loading: dict[str, Any]) -> None:
    """Refuse (one line) a checkpoint that lacks weights its config needs (transformers would initialise them at
    random) or holds NaN or infinite weights: either would be scored silently as if it were the model."""
    missing = sorted(loading.get("missing_keys") or ())
    if missing:
        raise TunelabError(
            f"{src.display}: the checkpoint lacks {len(missing)} weights its config.json needs (e.g. {missing[0]}); "
            "config and weights do not match"
        )
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not all(
            torch.isfinite(chunk).all() for chunk in tensor.detach().reshape(-1).split(1 << 24)
        ):
            raise TunelabError(f"{src.display}: weight {name} holds NaN or infinite values")


def _fill_architecture(hf_config: Any) -> None:
    """GGUF configs (and some old config.json files) name no architecture: take the model type's causal LM."""
    if not getattr(hf_config, "architectures", None):
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        architecture = MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(getattr(hf_config, "model_type", ""))
        if architecture:
            hf_config.architectures = [architecture]


def _check(hf_config: Any, name: str) -> ModelConfig:
    """ModelConfig of a HF config, refusing (one line) what the emulator cannot run, before weights are read."""
    _fill_architecture(hf_config)
    config = ModelConfig.from_hf(hf_config, name)
    rope = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None) or {}
    rope = rope if isinstance(rope, dict) else {}
    rope_type = rope.get("rope_type") or rope.get("type") or "default"
    if rope_type not in SUPPORTED_ROPE_TYPES:
        raise UnsupportedArchitecture(
            f"{name}: unsupported RoPE scaling {rope_type} (supported: {', '.join(SUPPORTED_ROPE_TYPES)})"
        )
    partial = getattr(hf_config, "partial_rotary_factor", None) or rope.get("partial_rotary_factor") or 1.0
    if partial != 1.0:
        raise UnsupportedArchitecture(
            f"{name}: partial rotary embeddings (partial_rotary_factor={partial}) are not supported"
        )
    act = getattr(hf_config, "hidden_act", "silu")
    if act not in ("silu", "swish"):
        raise UnsupportedArchitecture(f"{name}: unsupported MLP activation {act} (supported: silu)")
    if not (math.isfinite(config.rope_theta) and config.rope_theta > 0):
        raise TunelabError(f"{name}: rope_theta must be a positive number, found {shown(config.rope_theta)}")
    positions = config.max_position_embeddings
    if isinstance(positions, bool) or not isinstance(positions, int) or positions < 1:
        raise TunelabError(
            f"{name}: max_position_embeddings must be a positive integer, found {shown(positions)}"
        )
    return config


def _truncate(hf_config: Any, n_layers: int) -> None:
    hf_config.num_hidden_layers = n_layers
    for key in ("layer_types",):  # per-layer lists must match the layer count
        value = getattr(hf_config, key, None)
        if isinstance(value, list):
            setattr(hf_config, key, value[:n_layers])


def _hub_reachable() -> bool:
    """A quick TCP probe of the hub (or the HTTPS proxy): transformers would retry for ~25 s when it is down.

    Run in a daemon thread so that a slow DNS resolver cannot stretch it past the timeout either.
    """
    from huggingface_hub import constants

    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    url = urlparse(proxy or constants.ENDPOINT)
    address = (url.hostname or "", url.port or (443 if url.scheme == "https" else 80))
    reached: list[bool] = []

    def probe() -> None:
        with contextlib.suppress(OSError):
            socket.create_connection(address, timeout=_HUB_PROBE_TIMEOUT_S).close()
            reached.append(True)

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(_HUB_PROBE_TIMEOUT_S)
    return bool(reached)


def _hub_kwargs(src: Source) -> dict:
    """from_pretrained arguments for a hub id: offline (local HF cache only) when the hub cannot be reached."""
    from huggingface_hub import constants

    if not constants.HF_HUB_OFFLINE and _hub_reachable():
        return {}
    from huggingface_hub import try_to_load_from_cache

    if not isinstance(try_to_load_from_cache(src.location, "config.json"), str):
        raise TunelabError(
            f"cannot load {src.location!r}: not a local path and the Hugging Face hub is unreachable "
            f"(or offline) or the id does not exist"
        )
    return {"local_files_only": True}


# ------------------------------------------------------------------------------------------------------------------
# Converted sources (GGUF, Meta) through the cache


def _cached(src: Source, files: list[Path], build: Any) -> str:
    key, identity = cache.entry_key(src.name, src.kind, files)
    entry = cache.lookup(key)
    if entry is None:
        log.info("converting %s into the cache (%s); later loads read it", src.display, cache.cache_root())
        entry = cache.store(key, identity, lambda directory: build(src, directory))
        gc.collect()  # the conversion's model and tensors, before the entry is loaded
    return str(entry)


def _save_hf(directory: Path, hf_config: Any, state_dict: dict[str, torch.Tensor], tokenizer: Any) -> None:
    """Write a HF checkpoint (config.json, model.safetensors, tokenizer files); tied LM heads are not stored."""
    from safetensors.torch import save_file

    tensors = {
        key: t.detach().contiguous()
        for key, t in state_dict.items()
        if not (key == "lm_head.weight" and getattr(hf_config, "tie_word_embeddings", False))
        and not key.endswith("rotary_emb.inv_freq")
    }
    dtypes = {t.dtype for t in tensors.values()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    if hasattr(hf_config, "quantization_config"):
        del hf_config.quantization_config
    hf_config.dtype = str(dtypes.pop()).removeprefix("torch.") if len(dtypes) == 1 else "float32"
    hf_config.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def _build_gguf(src: Source, directory: Path) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    path = Path(src.location)
    gguf = {"gguf_file": path.name}
    hf_config = _hf_call(src, "GGUF config", AutoConfig.from_pretrained, str(path.parent), **gguf)
    _check(hf_config, src.name)  # before the slow dequantisation
    tokenizer = _hf_call(src, "GGUF tokenizer", AutoTokenizer.from_pretrained, str(path.parent), **gguf)
    model = _hf_call(
        src, "GGUF weights", AutoModelForCausalLM.from_pretrained, str(path.parent), config=hf_config,
        dtype=torch.float32, **gguf,
    )  # fmt: skip
    _save_hf(directory, model.config, model.state_dict(), tokenizer)


def _build_meta(src: Source, directory: Path) -> None:
    source_dir = Path(src.location)
    if not (source_dir / "tokenizer.model").is_file():
        raise TunelabError(f"{source_dir}: a Meta checkpoint needs its tokenizer.model")
    hf_config, state_dict = meta_checkpoint_to_hf(source_dir, src.name)
    _check(hf_config, src.name)
    tokenizer = meta_tokenizer(source_dir / "tokenizer.model", hf_config.vocab_size)
    hf_config.bos_token_id = tokenizer.bos_token_id
    hf_config.eos_token_id = tokenizer.eos_token_id
    _save_hf(directory, hf_config, state_dict, tokenizer)


# ------------------------------------------------------------------------------------------------------------------
# fingerprint


def _tensor_bytes(t: torch.Tensor) -> memoryview:
    return memoryview(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy())


def fingerprint(hf_model: Any, tokenizer: Any, config: ModelConfig) -> str:
    """Content hash (16 hex digits) of the weights, the tokenizer vocabulary and the model facts.

    Hashes every state-dict tensor's name, dtype, shape and bytes (a tied LM head once, as an alias), the sorted
    vocabulary with the special tokens, and the ModelConfig fields other than the name plus the RoPE parameters.
    It depends on content only, so it is stable across loads, processes and cache rebuilds.
    """
    h = hashlib.sha256(b"tunelab-fingerprint-1\n")
    facts = {k: v for k, v in dataclasses.asdict(config).items() if k != "name"}
    hf_config = hf_model.config
    facts["rope"] = getattr(hf_config, "rope_parameters", None) or getattr(hf_config, "rope_scaling", None)
    h.update(json.dumps(facts, sort_keys=True, default=str).encode())
    seen: dict[tuple, str] = {}
    for key, t in sorted(hf_model.state_dict().items()):
        h.update(f"\n{key} {t.dtype} {tuple(t.shape)}".encode())
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if ident in seen:
            h.update(f" = {seen[ident]}".encode())
            continue
        seen[ident] = key
        h.update(_tensor_bytes(t))
    vocab = sorted(tokenizer.get_vocab().items())
    h.update(json.dumps([vocab, sorted(tokenizer.all_special_tokens)]).encode())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Silence transformers' load reports and progress bars (tunelab reports what matters in one line)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
