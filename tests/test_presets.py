"""Per-decoder and whole-model presets reproduce tt-transformers' branches and override files."""

import json
import warnings

import pytest

from tunelab.errors import ConfigError, ConfigWarning
from tunelab.model_presets import model_preset, override_root
from tunelab.precision import DecoderPrecision, MathFidelity, OpGroup, Precision, TensorGroup
from tunelab.presets import base_model_name, generic_accuracy, generic_performance

BFP4_MLP = DecoderPrecision(ff1_ff3=Precision.BFP4, li_ff1_ff3=MathFidelity.LOFI)
ATTENTION_OPS = [OpGroup.LI_QKV_DECODE, OpGroup.LI_QKV_PREFILL, OpGroup.SDPA_DECODE]
ATTENTION_OPS += [OpGroup.SDPA_PREFILL, OpGroup.LI_O_DECODE, OpGroup.LI_O_PREFILL]
BF16_HIFI4_ATTENTION = DecoderPrecision(
    wqkv=Precision.BF16, kv_cache=Precision.BF16, wo=Precision.BF16
).overlay(fidelities=dict.fromkeys(ATTENTION_OPS, MathFidelity.HIFI4))


@pytest.mark.parametrize(
    ("name", "base"),
    [
        ("Llama-3.1-8B-Instruct", "Llama-3.1-8B"),
        ("meta-llama/Llama-3.2-1B-Instruct", "Llama-3.2-1B"),
        ("Qwen2.5-VL-7B-Instruct", "Qwen2.5-VL-7B"),
        ("DeepSeek-R1-Distill-Llama-70B", "DeepSeek-R1-Distill-Llama-70B"),
        ("Phi-3-mini-128k-instruct", "Phi-3-mini-128k-instruct"),
        ("Mistral-7B-Instruct-v0.3", "Mistral-7B"),
    ],
)
def test_base_model_name(name, base):
    assert base_model_name(name) == base


def test_generic_performance_branches():
    assert generic_performance("Llama-3.1-8B-Instruct") == BFP4_MLP
    assert generic_performance("model") == BFP4_MLP
    assert generic_performance("Qwen2.5-7B-Instruct") == BF16_HIFI4_ATTENTION
    assert generic_performance("Qwen2.5-VL-7B-Instruct") == BF16_HIFI4_ATTENTION
    phi = generic_performance("Phi-3-mini-128k-instruct")
    assert phi == BFP4_MLP.overlay(fidelities={OpGroup.LI_QKV_PREFILL: MathFidelity.HIFI2_FP16})


def test_generic_accuracy_branches():
    for big in (
        "Llama-3.1-70B-Instruct",
        "Llama-3.2-90B",
        "DeepSeek-R1-Distill-Llama-70B",
        "Qwen2.5-72B-Instruct",
    ):
        assert generic_accuracy(big) == BFP4_MLP, big
    for bfp8 in ("Llama-3.2-1B-Instruct", "Llama-3.3-70B-Instruct", "Mistral-7B-Instruct-v0.3", "phi-4"):
        assert generic_accuracy(bfp8) == DecoderPrecision(), bfp8
    phi = generic_accuracy("Phi-3-mini-128k-instruct")
    assert phi == DecoderPrecision(li_qkv_prefill=MathFidelity.HIFI2_FP16)
    for other in ("Qwen3-32B", "Qwen2.5-7B-Instruct", "DeepSeek-R1-Distill-Qwen-14B", "model"):
        assert generic_accuracy(other) == BF16_HIFI4_ATTENTION, other


def test_llama_8b_performance_has_layer_31_override():
    preset = model_preset("performance", "Llama-3.1-8B-Instruct", 32)
    assert preset.n_layers == 32
    assert all(preset[i] == BFP4_MLP for i in range(31))
    # The override overlays the hard defaults: FF1_FF3 BFP8, LI_FF1_FF3 LOFI, the rest default.
    assert preset[31] == DecoderPrecision(li_ff1_ff3=MathFidelity.LOFI)


def test_presets_without_override_are_uniform():
    assert model_preset("performance", "Llama-3.2-1B-Instruct", 16).decoders == (BFP4_MLP,) * 16
    assert model_preset("accuracy", "Llama-3.2-1B-Instruct", 16).decoders == (DecoderPrecision(),) * 16
    assert model_preset("defaults", "Qwen2.5-7B", 28).decoders == (DecoderPrecision(),) * 28
    assert model_preset("accuracy", "Llama-3.1-8B-Instruct", 32).decoders == (DecoderPrecision(),) * 32


def test_90b_accuracy_override_uses_hifi2_nol1acc():
    preset = model_preset("accuracy", "Llama-3.2-90B-Instruct", 80)
    assert preset.is_uniform
    assert preset[79].li_qkv_decode is MathFidelity.HIFI2_NOL1ACC
    assert preset[0] == BFP4_MLP.overlay(fidelities={OpGroup.LI_QKV_DECODE: MathFidelity.HIFI2_NOL1ACC})


def test_qwen3_32b_performance_override_is_bfp4_everywhere():
    preset = model_preset("performance", "Qwen3-32B", 64)
    weights = (TensorGroup.FF1_FF3, TensorGroup.FF2, TensorGroup.WQKV, TensorGroup.WO)
    assert all(preset[i].precision(g) is Precision.BFP4 for i in range(64) for g in weights)
    assert preset[0].kv_cache is Precision.BFP8 and preset[0].li_qkv_prefill is MathFidelity.HIFI2


def test_override_files_with_wrong_ids_warn_and_fit():
    with pytest.warns(ConfigWarning, match="decoder ids 36 are beyond the model's 36 decoders"):
        preset = model_preset("performance", "Qwen3-8B", 36)
    assert preset.decoders == (BFP4_MLP,) * 36
    with pytest.warns(ConfigWarning, match="raises KeyError for decoders 1..39"):
        preset = model_preset("accuracy", "phi-4", 40)
    assert preset[0].wqkv is Precision.BFP8 and preset[0].wo is Precision.BFP8
    assert preset.decoders[1:] == (generic_accuracy("phi-4"),) * 39


def test_installed_tt_metal_override_files_win(tmp_path, monkeypatch):
    params = tmp_path / "models" / "tt_transformers" / "model_params" / "Llama-3.2-1B-Instruct"
    params.mkdir(parents=True)
    config = {"decoders": {str(i): {"precision_cfg": {"FF2": "BFP4"}} for i in range(16)}}
    (params / "performance_decoder_config.json").write_text(json.dumps(config))
    monkeypatch.setenv("TT_METAL_HOME", str(tmp_path))
    assert override_root() == params.parent
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        preset = model_preset("performance", "Llama-3.2-1B-Instruct", 16)
    # precision_cfg given: overlays hard defaults; fidelity_cfg absent: the preset's fidelities (LOFI MLP).
    assert preset[5] == DecoderPrecision(ff2=Precision.BFP4, li_ff1_ff3=MathFidelity.LOFI)
    # Without the override the bundled snapshot (which has no file for this model) applies.
    monkeypatch.setenv("TT_METAL_HOME", str(tmp_path / "absent"))
    assert model_preset("performance", "Llama-3.2-1B-Instruct", 16)[5] == BFP4_MLP


def test_bad_preset_arguments():
    with pytest.raises(ConfigError, match="unknown preset 'fast'"):
        model_preset("fast", "model", 4)
    with pytest.raises(ConfigError, match="--layers must be >= 1"):
        model_preset("performance", "model", 0)


def test_bf16_preset_is_the_full_precision_ceiling():
    preset = model_preset("bf16", "SmolLM2-135M-Instruct", 3)
    assert preset.is_uniform and preset.n_layers == 3
    assert set(preset[0].precisions.values()) == {Precision.BF16}
    assert set(preset[0].fidelities.values()) == {MathFidelity.HIFI4_FP32}
