"""Model shapes for the performance model: a known model name or any HF config.json, read into a `ModelConfig`.

Known models are the HF configs shipped in `data/model_configs.json`, matched by tt-transformers' base model name,
so `meta-llama/Llama-3.1-8B`, `Llama-3.1-8B` and `Llama-3.1-8B-Instruct` all find the same shapes.
Vision-language checkpoints are read through their text decoder, which is all that decode and prefill time needs.
"""

from __future__ import annotations

import dataclasses
import json
from functools import cache
from importlib import resources
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.files import read_json, shown
from tunelab.models.config import ModelConfig
from tunelab.presets import base_model_name, model_basename

__all__ = ["KNOWN_MODELS", "ModelNotFound", "UnknownModel", "model_shape"]

# A multimodal architecture -> the causal-LM architecture its text decoder has.
_TEXT_DECODERS = {"MllamaForConditionalGeneration": "LlamaForCausalLM"}
# ModelConfig field -> the config.json key it comes from (max_position_embeddings may be absent).
_SHAPE_FIELDS = {
    "dim": "hidden_size",
    "n_layers": "num_hidden_layers",
    "n_heads": "num_attention_heads",
    "n_kv_heads": "num_key_value_heads",
    "head_dim": "head_dim",
    "hidden_dim": "intermediate_size",
    "vocab_size": "vocab_size",
    "max_position_embeddings": "max_position_embeddings",
}
MAX_SIZE = 2**26  # bounds every shape so products stay exact floats; real models are far below it


class UnknownModel(TunelabError):
    """A model that is neither a known name nor a readable HF config.json."""


class ModelNotFound(UnknownModel):
    """A name that is neither a known model nor a path to a config.json."""


@cache
def _known() -> dict[str, dict]:
    text = resources.files("tunelab.models").joinpath("data/model_configs.json").read_text()
    return json.loads(text)


KNOWN_MODELS: tuple[str, ...] = tuple(_known())


def model_shape(spec: str) -> ModelConfig:
    """Shapes of `spec`: an HF id or basename of a known model, or a path to a config.json (or its directory).

    The returned `name` is the basename tt-transformers uses (`HF_MODEL`'s last component), which selects presets.
    """
    path = _local_config(spec)
    if path is not None:
        name = path.resolve().parent.name if path.name == "config.json" else path.stem
        try:
            hf_config = read_json(path, "an HF config.json")
        except TunelabError as exc:
            raise UnknownModel(str(exc)) from None
        return _from_hf(hf_config, name, str(path))
    name = model_basename(spec)
    base = base_model_name(name)
    for key, hf_config in _known().items():
        if base_model_name(key) == base:
            return _from_hf(hf_config, name, key)
    raise ModelNotFound(
        f"unknown model {shown(spec)}: give a path to its config.json, or one of "
        f"{', '.join(k.rsplit('/', 1)[-1] for k in KNOWN_MODELS)}"
    )


def _local_config(spec: str) -> Path | None:
    """The config.json `spec` names on disk (a file, or a directory holding one), or None if it names none."""
    try:
        path = Path(spec)
        if path.is_dir():
            if not (path / "config.json").is_file():
                raise UnknownModel(f"{spec}: a directory without a config.json")
            return path / "config.json"
        return path if path.is_file() else None
    except (OSError, ValueError):  # a name too long for a path, or with a NUL byte: not a file
        return None


def _from_hf(hf_config: object, name: str, source: str) -> ModelConfig:
    if not isinstance(hf_config, dict):
        raise UnknownModel(f"{source}: a config.json must hold a JSON object, found {shown(hf_config)}")
    architectures = hf_config.get("architectures")
    architecture = architectures[0] if isinstance(architectures, list) and architectures else None
    text_architecture = _TEXT_DECODERS.get(architecture) if isinstance(architecture, str) else None
    try:
        if text_architecture is None:
            model = ModelConfig.from_hf(hf_config, name)
        else:
            text_config = {
                **hf_config,
                **hf_config.get("text_config", {}),
                "architectures": [text_architecture],
            }
            model = dataclasses.replace(ModelConfig.from_hf(text_config, name), architecture=architecture)
    except (TypeError, ValueError, ZeroDivisionError, KeyError, IndexError) as exc:
        raise UnknownModel(f"{source}: missing or malformed shape fields ({shown(str(exc), 80)})") from None
    for field, hf_key in _SHAPE_FIELDS.items():
        value = getattr(model, field)
        if field == "max_position_embeddings" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= MAX_SIZE:
            raise UnknownModel(
                f"{source}: {hf_key} must be an integer in 1..{MAX_SIZE}, found {shown(value)}"
            )
    return model
