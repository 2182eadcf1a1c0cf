"""Models: load a checkpoint (alias, GGUF, HF or Meta directory, hub id) into the reference and canonical forms,
and read a model's shapes alone (`model_shape`: a known name or any HF config.json) for the performance model.

Names load on first use, so reading a config (`tunelab.models.config`) does not import torch or transformers.
"""

from importlib import import_module

_EXPORTS = {
    "CacheWarning": "cache",
    "cache_root": "cache",
    "SUPPORTED_ARCHITECTURES": "config",
    "ModelConfig": "config",
    "UnsupportedArchitecture": "config",
    "hf_to_canonical": "convert",
    "permute": "convert",
    "reverse_permute": "convert",
    "reverse_permute_1d": "convert",
    "SUPPORTED_ROPE_TYPES": "loader",
    "LoadedModel": "loader",
    "fingerprint": "loader",
    "load_model": "loader",
    "load_model_config": "loader",
    "KNOWN_MODELS": "shapes",
    "UnknownModel": "shapes",
    "model_shape": "shapes",
    "ALIASES": "sources",
    "Source": "sources",
    "resolve_source": "sources",
    "LayerWeights": "weights",
    "ModelWeights": "weights",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> object:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'tunelab.models' has no attribute {name!r}")
    return getattr(import_module(f"tunelab.models.{_EXPORTS[name]}"), name)
