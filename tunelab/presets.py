"""tt-transformers' per-decoder presets (`ModelOptimizations.performance/accuracy`), with their model branches.

These are the presets for one decoder; whole-model presets, which also apply tt-transformers' per-model override
files, live in `tunelab.model_presets`.
"""

from __future__ import annotations

import re

from tunelab.precision import DecoderPrecision, MathFidelity, OpGroup, Precision, TensorGroup

__all__ = [
    "base_model_name",
    "full_precision",
    "generic_accuracy",
    "generic_performance",
    "hard_defaults",
    "model_basename",
]

_QWEN_7B = {"Qwen2.5-7B", "Qwen2.5-VL-7B"}
_LARGE_MODELS = {"Llama-3.1-70B", "Llama-3.2-90B", "DeepSeek-R1-Distill-Llama-70B", "Qwen2.5-72B"}
_BFP8_ATTENTION_FAMILIES = ("Llama-3", "Mistral-7B", "Phi-3-mini", "phi-4")
_ATTENTION_OPS = (
    OpGroup.LI_QKV_DECODE,
    OpGroup.LI_QKV_PREFILL,
    OpGroup.SDPA_DECODE,
    OpGroup.SDPA_PREFILL,
    OpGroup.LI_O_DECODE,
    OpGroup.LI_O_PREFILL,
)
_BF16_ATTENTION = {
    TensorGroup.WQKV: Precision.BF16,
    TensorGroup.KV_CACHE: Precision.BF16,
    TensorGroup.WO: Precision.BF16,
}
_HIFI4_ATTENTION = dict.fromkeys(_ATTENTION_OPS, MathFidelity.HIFI4)
_BFP4_MLP = ({TensorGroup.FF1_FF3: Precision.BFP4}, {OpGroup.LI_FF1_FF3: MathFidelity.LOFI})


def base_model_name(model_name: str) -> str:
    """tt-transformers' `get_base_model_name`: drop an HF org prefix and everything after the first `<n>B-`."""
    name = model_basename(model_name)
    match = re.match(r"(.*?\d+[bB])-", name)
    return match.group(1) if match else name


def hard_defaults() -> DecoderPrecision:
    """`_default_settings()`: BFP8 weights and KV cache, mixed activations, HiFi2 attention, HiFi2-fp16 MLP."""
    return DecoderPrecision()


def full_precision() -> DecoderPrecision:
    """tunelab's accuracy ceiling: every tensor group BF16 (activations too) and every op at HIFI4_FP32."""
    return DecoderPrecision().overlay(
        dict.fromkeys(TensorGroup, Precision.BF16), dict.fromkeys(OpGroup, MathFidelity.HIFI4_FP32)
    )


def generic_performance(model_name: str) -> DecoderPrecision:
    """`ModelOptimizations.performance(model_name)` for one decoder."""
    base = base_model_name(model_name)
    if base in _QWEN_7B:
        return hard_defaults().overlay(_BF16_ATTENTION, _HIFI4_ATTENTION)
    decoder = hard_defaults().overlay(*_BFP4_MLP)
    if model_basename(model_name).startswith("Phi-3-mini"):
        decoder = decoder.overlay(fidelities={OpGroup.LI_QKV_PREFILL: MathFidelity.HIFI2_FP16})
    return decoder


def generic_accuracy(model_name: str) -> DecoderPrecision:
    """`ModelOptimizations.accuracy(model_name)` for one decoder."""
    base = base_model_name(model_name)
    if base in _LARGE_MODELS:
        return hard_defaults().overlay(*_BFP4_MLP)
    if base.startswith(_BFP8_ATTENTION_FAMILIES):
        decoder = hard_defaults()  # the branch re-sets BFP8 attention and HiFi2-fp16 MLP, i.e. the defaults
        if base.startswith("Phi-3-mini"):
            decoder = decoder.overlay(fidelities={OpGroup.LI_QKV_PREFILL: MathFidelity.HIFI2_FP16})
        return decoder
    return hard_defaults().overlay(_BF16_ATTENTION, _HIFI4_ATTENTION)


def model_basename(model_name: str) -> str:
    """tt-transformers' model_name: the last path component of an HF id or checkpoint path."""
    return model_name.rstrip("/").rsplit("/", 1)[-1]
