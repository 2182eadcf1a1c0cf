"""The shape and architecture facts of a decoder-only model, read from its HF config (config.json)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tunelab.errors import TunelabError
from tunelab.precision import check_decoder_count

__all__ = ["SUPPORTED_ARCHITECTURES", "ModelConfig", "UnsupportedArchitecture"]

# architectures[0] -> (q/k/v bias, q/k RMSNorm, fused qkv_proj + gate_up_proj in the checkpoint)
_ARCHITECTURES: dict[str, tuple[bool, bool, bool]] = {
    "LlamaForCausalLM": (False, False, False),
    "MistralForCausalLM": (False, False, False),
    "Qwen2ForCausalLM": (True, False, False),
    "Qwen3ForCausalLM": (False, True, False),
    "Phi3ForCausalLM": (False, False, True),
}
SUPPORTED_ARCHITECTURES = tuple(_ARCHITECTURES)
# config.json files without `architectures` (old ones, GGUF metadata) name the model type only.
_MODEL_TYPES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
    "phi3": "Phi3ForCausalLM",
}


class UnsupportedArchitecture(TunelabError):
    """The checkpoint's architecture is not one tunelab emulates."""


@dataclass(frozen=True)
class ModelConfig:
    """What the emulator, the reference and the throughput model need to know about a model."""

    name: str  # tt-transformers' model_name: the HF repo basename, e.g. "Llama-3.1-8B-Instruct"
    architecture: str
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    hidden_dim: int
    vocab_size: int
    norm_eps: float
    rope_theta: float
    tie_word_embeddings: bool
    qkv_bias: bool
    qk_norm: bool
    fused_checkpoint: bool
    max_position_embeddings: int

    @classmethod
    def from_hf(cls, hf_config: Any, name: str) -> ModelConfig:
        """From a transformers PretrainedConfig or a config.json dict; unsupported architectures raise one line."""
        get = (
            hf_config.get
            if isinstance(hf_config, dict)
            else lambda key, default=None: getattr(hf_config, key, default)
        )
        architecture = _architecture(get("architectures"), get("model_type"), name)
        qkv_bias, qk_norm, fused = _ARCHITECTURES[architecture]
        n_heads = get("num_attention_heads")
        # transformers 5 keeps rope_theta inside rope_parameters; 4.x and older config.json files have it top-level
        rope = get("rope_parameters") or get("rope_scaling") or {}
        rope = rope if isinstance(rope, dict) else {}
        rope_theta = get("rope_theta") or rope.get("rope_theta") or 10000.0
        dim = get("hidden_size")
        n_kv_heads = get("num_key_value_heads")
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        _check_head_groups(n_heads, n_kv_heads, name)
        return cls(
            name=name,
            architecture=architecture,
            dim=dim,
            n_layers=check_decoder_count(get("num_hidden_layers"), f"{name}: num_hidden_layers"),
            n_heads=n_heads,
            n_kv_heads=n_kv_heads,
            head_dim=get("head_dim") or dim // n_heads,
            hidden_dim=get("intermediate_size"),
            vocab_size=get("vocab_size"),
            norm_eps=get("rms_norm_eps"),
            rope_theta=float(rope_theta),
            tie_word_embeddings=bool(get("tie_word_embeddings", False)),
            qkv_bias=qkv_bias,
            qk_norm=qk_norm,
            fused_checkpoint=fused,
            max_position_embeddings=get("max_position_embeddings"),
        )

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim


def _check_head_groups(n_heads: object, n_kv_heads: object, name: str) -> None:
    """Grouped-query attention shares each KV head among an equal number of query heads: a count that does not
    divide is a malformed config (other bad values are left to the callers' range checks)."""
    counts = (n_heads, n_kv_heads)
    if all(isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in counts) and n_heads % n_kv_heads:
        raise TunelabError(
            f"{name}: num_attention_heads {n_heads} is not a multiple of num_key_value_heads {n_kv_heads}"
        )


def _architecture(architectures: object, model_type: object, name: str) -> str:
    """The supported architecture a config names (`architectures[0]`, else by `model_type`), or a one-line error."""
    supported = f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})"
    if architectures:
        first = architectures[0] if isinstance(architectures, list) else architectures
        if isinstance(first, str) and first in _ARCHITECTURES:
            return first
        raise UnsupportedArchitecture(f"{name}: unsupported architecture {str(first)[:60]} {supported}")
    architecture = _MODEL_TYPES.get(model_type) if isinstance(model_type, str) else None
    if architecture is None:
        raise UnsupportedArchitecture(f"{name}: unsupported model_type {str(model_type)[:40]} {supported}")
    return architecture
