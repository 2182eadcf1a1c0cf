"""Models: load a checkpoint (alias, GGUF, HF or Meta directory, hub id) into the reference and canonical forms."""

from tunelab.models.cache import CacheWarning, cache_root
from tunelab.models.config import SUPPORTED_ARCHITECTURES, ModelConfig, UnsupportedArchitecture
from tunelab.models.convert import hf_to_canonical, permute, reverse_permute, reverse_permute_1d
from tunelab.models.loader import SUPPORTED_ROPE_TYPES, LoadedModel, fingerprint, load_model
from tunelab.models.sources import ALIASES, Source, resolve_source
from tunelab.models.weights import LayerWeights, ModelWeights

__all__ = [
    "ALIASES",
    "SUPPORTED_ARCHITECTURES",
    "SUPPORTED_ROPE_TYPES",
    "CacheWarning",
    "LayerWeights",
    "LoadedModel",
    "ModelConfig",
    "ModelWeights",
    "Source",
    "UnsupportedArchitecture",
    "cache_root",
    "fingerprint",
    "hf_to_canonical",
    "load_model",
    "permute",
    "resolve_source",
    "reverse_permute",
    "reverse_permute_1d",
]
