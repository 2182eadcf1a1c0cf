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
from tunelab.models.config import ModelConfig
from tunelab.presets import base_model_name, model_basename

__all__ = ["KNOWN_MODELS", "UnknownModel", "model_shape"]

# A multimodal architecture -> the causal-LM architecture its text decoder has.
_TEXT_DECODERS = {"MllamaForConditionalGeneration": "LlamaForCausalLM"}
_SHAPE_FIELDS = ("dim", "n_layers", "n_heads", "n_kv_heads", "head_dim", "hidden_dim", "vocab_size")


class UnknownModel(TunelabError):
    """A model that is neither a known name nor a readable HF config.json."""


@cache
def _known() -> dict[str, dict]:
    text = resources.files("tunelab.models").joinpath("data/model_configs.json").read_text()
    return json.loads(text)


KNOWN_MODELS: tuple[str, ...] = tuple(_known())


def model_shape(spec: str) -> ModelConfig:
    """Shapes of `spec`: an HF id or basename of a known model, or a path to a config.json (or its directory).

    The returned `name` is the basename tt-transformers uses (`HF_MODEL`'s last component), which selects presets.
    """
    path = Path(spec)
    if path.is_dir():
        path = path / "config.json"
    if path.is_file():
        try:
            hf_config = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UnknownModel(f"{path}: not a readable config.json: {exc}") from None
        name = path.parent.name if path.name == "config.json" else path.stem
        return _from_hf(hf_config, name, str(path))
    name = model_basename(spec)
    base = base_model_name(name)
    for key, hf_config in _known().items():
        if base_model_name(key) == base:
            return _from_hf(hf_config, name, key)
    raise UnknownModel(
        f"unknown model {spec!r}: give a path to its config.json, or one of "
        f"{', '.join(k.rsplit('/', 1)[-1] for k in KNOWN_MODELS)}"
    )


def _from_hf(hf_config: dict, name: str, source: str) -> ModelConfig:
    if not isinstance(hf_config, dict):
        raise UnknownModel(f"{source}: a config.json must hold a JSON object")
    architecture = (hf_config.get("architectures") or ["<none>"])[0]
    text_architecture = _TEXT_DECODERS.get(architecture)
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
    except (TypeError, ValueError, ZeroDivisionError) as exc:
        raise UnknownModel(f"{source}: missing or malformed shape fields ({exc})") from None
    bad = [f for f in _SHAPE_FIELDS if not (isinstance(getattr(model, f), int) and getattr(model, f) > 0)]
    if bad:
        raise UnknownModel(f"{source}: {bad[0]} must be a positive integer, got {getattr(model, bad[0])!r}")
    return model
