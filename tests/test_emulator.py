"""The emulated tt-transformers model against transformers, per architecture, and its own invariants."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    Qwen2Config,
    Qwen3Config,
)

from tunelab.backends.emulated import EmulatedModel, EmulatorOptions, ops
from tunelab.backends.emulated.weight_cache import WeightCache
from tunelab.errors import ConfigError
from tunelab.model_presets import model_preset
from tunelab.models import ModelConfig, hf_to_canonical
from tunelab.numerics import SrcA, quantize
from tunelab.precision import DecoderPrecision, MathFidelity, ModelPrecision, Precision

TINY = dict(
    hidden_size=128,
    intermediate_size=256,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=512,
    initializer_range=0.05,
    bos_token_id=0,
    eos_token_id=1,
    pad_token_id=2,
)
ARCHITECTURES = {
    "LlamaForCausalLM": (LlamaConfig, {}),
    "Qwen2ForCausalLM": (Qwen2Config, {}),
    "Qwen3ForCausalLM": (Qwen3Config, {"head_dim": 32}),
    "MistralForCausalLM": (MistralConfig, {}),
    "Phi3ForCausalLM": (Phi3Config, {}),
}
# An all-BF16 / HIFI4_FP32 emulation stays within this fraction of the largest |logit| of the fp32 forward
# (measured: 1.0-1.9% after two bf16 layers and the bfp8 LM head). Argmax must agree wherever the fp32 top-1 leads
# the runner-up by more than twice that, i.e. wherever the reference itself is not ambiguous at this tolerance.
LOGIT_TOLERANCE = 0.025


def tiny_model(architecture: str, seed: int = 0, **overrides) -> tuple[torch.nn.Module, ModelConfig]:
    config_class, extra = ARCHITECTURES[architecture]
    torch.manual_seed(seed)
    fields = {**TINY, **extra, **overrides}
    hf = AutoModelForCausalLM.from_config(config_class(architectures=[architecture], **fields)).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a misplaced one shows
        for name, parameter in hf.named_parameters():
            if "norm" in name or "bias" in name:
                parameter.add_(torch.randn_like(parameter) * 0.1)
    return hf, ModelConfig.from_hf(hf.config, "tiny")


def emulator(hf, config, **options) -> EmulatedModel:
    return EmulatedModel(
        config, hf_to_canonical(hf.state_dict(), config), hf.model.rotary_emb, EmulatorOptions(**options)
    )


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_full_precision_matches_transformers_fp32(architecture):
    hf, config = tiny_model(architecture)
    tokens = torch.randint(0, TINY["vocab_size"], (256,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = hf(tokens[None]).logits[0, 128:]
    logits = emulator(hf, config).teacher_forced(tokens, 128, model_preset("bf16", "tiny", 2))
    tolerance = LOGIT_TOLERANCE * reference.abs().max()
    assert (logits - reference).abs().max() <= tolerance
    top2 = reference.topk(2).values
    decisive = (top2[:, 0] - top2[:, 1]) > 2 * tolerance
    assert decisive.float().mean() >= 0.3
    agreement = (logits.argmax(-1) == reference.argmax(-1))[decisive].float().mean()
    assert agreement >= 0.999


@pytest.mark.parametrize("accumulation", ["fast", "exact"])
def test_batched_decode_equals_stepwise_decode(accumulation, monkeypatch):
    """Bit for bit, at sizes where the matmul library's summation order depends on the shape (1-3 rows, the
    number of keys): 3 query heads per kv head, 64 decode positions over 160-224 keys."""
    monkeypatch.setattr(ops, "SDPA_ROW_BLOCK", 24)  # several attention blocks in prefill and in decode
    hf, config = tiny_model(
        "Qwen2ForCausalLM",
        hidden_size=384,
        intermediate_size=1024,
        num_attention_heads=6,
        num_key_value_heads=2,
    )
    tokens = torch.randint(0, TINY["vocab_size"], (224,), generator=torch.Generator().manual_seed(2))
    model = emulator(hf, config, accumulation=accumulation)
    mixed = model_preset("performance", "tiny", 2).with_decoder(
        1, DecoderPrecision(kv_cache=Precision.BFP4, activation=Precision.BFP8, sdpa_decode=MathFidelity.LOFI)
    )
    batched = model.teacher_forced(tokens, 160, mixed)
    stepwise = model.teacher_forced_stepwise(tokens, 160, mixed)
    assert batched.shape == (64, TINY["vocab_size"])
    assert torch.equal(batched, stepwise)


@pytest.mark.parametrize("fidelity", [MathFidelity.LOFI, MathFidelity.HIFI2, MathFidelity.HIFI4])
@pytest.mark.parametrize("start", [0, 37])
def test_attention_rows_do_not_depend_on_the_rows_computed_with_them(fidelity, start):
    generator = torch.Generator().manual_seed(6)
    rows, heads, kv, dim = 300, 6, 2, 32
    q = ops.store(torch.randn(heads, rows, dim, generator=generator), "bf16")
    k, v = (ops.store(torch.randn(kv, start + rows, dim, generator=generator), "bfp8") for _ in range(2))
    mask = torch.zeros(rows, start + rows).masked_fill_(
        torch.arange(start + rows)[None] > torch.arange(rows)[:, None] + start, float("-inf")
    )
    kernel, scale = fidelity.kernel, dim**-0.5
    assert rows > 2 * ops.SDPA_ROW_BLOCK
    together = ops.sdpa(q, k, v, mask, kernel, scale, start)
    alone = [ops.sdpa(q[:, i : i + 1], k, v, mask[i : i + 1], kernel, scale, start + i) for i in range(rows)]
    assert torch.equal(together, torch.cat(alone, dim=1))
    # ... and it is attention: the whole computation in one piece differs only by fp32 summation order
    scores = ops.batched_matmul(q.unflatten(0, (kv, -1)).flatten(1, 2), k.mT, kernel) * scale
    probabilities = ops.store(torch.softmax(scores.unflatten(1, (-1, rows)) + mask, dim=-1), "bf16")
    whole = ops.batched_matmul(probabilities.flatten(1, 2), v, kernel).reshape(heads, rows, dim)
    assert (together - whole).abs().max() <= 0.01 * whole.abs().max()
    assert (together == whole).float().mean() >= 0.9


def test_lower_precision_moves_logits_further():
    hf, config = tiny_model("LlamaForCausalLM")
    tokens = torch.randint(0, TINY["vocab_size"], (160,), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = hf(tokens[None]).logits[0, 96:]
    model = emulator(hf, config)

    def error(weights: Precision, fidelity: MathFidelity) -> float:
        groups = dict.fromkeys(("ff1_ff3", "ff2", "wqkv", "wo", "kv_cache"), weights)
        ops = dict.fromkeys(
            ("li_ff1_ff3", "li_ff2", "li_qkv_decode", "li_o_decode", "li_qkv_prefill"), fidelity
        )
        config_ = ModelPrecision.uniform(DecoderPrecision(**groups, **ops), 2)
        return (model.teacher_forced(tokens, 96, config_) - reference).pow(2).mean().item()

    bf16, bfp8, bfp4 = (
        error(Precision.BF16, MathFidelity.HIFI4),
        error(Precision.BFP8, MathFidelity.HIFI2),
        error(Precision.BFP4, MathFidelity.LOFI),
    )
    assert bf16 < bfp8 < bfp4


def test_exact_accumulation_differs_from_fast_only_where_dst_is_bf16():
    hf, config = tiny_model("LlamaForCausalLM")
    tokens = torch.randint(0, TINY["vocab_size"], (96,), generator=torch.Generator().manual_seed(4))
    fast, exact = emulator(hf, config), emulator(hf, config, accumulation="exact")
    fp32_everywhere = model_preset("bf16", "tiny", 2)
    bf16_dst = model_preset("performance", "tiny", 2)  # LOFI and HIFI2_FP16 MLP: bf16 Dst
    assert not torch.equal(
        fast.teacher_forced(tokens, 64, bf16_dst), exact.teacher_forced(tokens, 64, bf16_dst)
    )
    # Only the LM head (HiFi2, bf16 Dst) differs between modes when every decoder op accumulates in fp32.
    fast_h, exact_h = (m.teacher_forced(tokens, 64, fp32_everywhere) for m in (fast, exact))
    assert (fast_h - exact_h).abs().max() < 0.05 * fast_h.abs().max()


def test_changing_one_decoder_requantises_only_its_changed_groups():
    hf, config = tiny_model("LlamaForCausalLM")
    model = emulator(hf, config)
    base = model_preset("defaults", "tiny", 2)
    model.decoders(base)
    assert model.cache.conversions == 10  # 2 decoders x (wqkv, wo, w1, w3, w2)
    model.decoders(base.with_decoder(1, DecoderPrecision(li_ff2=MathFidelity.LOFI)))  # fidelity only
    assert model.cache.conversions == 10
    model.decoders(base.with_decoder(1, DecoderPrecision(ff2=Precision.BFP4)))
    assert model.cache.conversions == 11


def test_other_options_share_the_weight_cache():
    hf, config = tiny_model("LlamaForCausalLM")
    tokens = torch.randint(0, TINY["vocab_size"], (48,), generator=torch.Generator().manual_seed(7))
    precision = model_preset("performance", "tiny", 2)
    fast = emulator(hf, config)
    fast.teacher_forced(tokens, 32, precision)
    exact = fast.with_options(EmulatorOptions("exact", lm_head_format="bf16"))
    got = exact.teacher_forced(tokens, 32, precision)
    assert exact.cache is fast.cache and fast.cache.conversions == 10  # nothing quantised again
    assert torch.equal(
        got,
        emulator(hf, config, accumulation="exact", lm_head_format="bf16").teacher_forced(
            tokens, 32, precision
        ),
    )
    assert fast.options.accumulation == "fast" and fast.lm_head is not exact.lm_head


def test_fused_gate_and_up_weights_are_quantised_one_by_one():
    hf, config = tiny_model("LlamaForCausalLM")
    weights = hf_to_canonical(hf.state_dict(), config)
    layer = weights.layers[0]
    layer.w1, layer.w3 = (
        torch.randn(128, 24) * 0.05,
        torch.randn(128, 24),
    )  # 24 columns: a bfp block straddles
    cache = WeightCache(weights)
    fused = cache.get(0, "bfp4", "w1", "w3").all
    assert torch.equal(fused, torch.cat([cache.get(0, "bfp4", "w1").all, cache.get(0, "bfp4", "w3").all], -1))
    assert not torch.equal(fused, SrcA(quantize(torch.cat([layer.w1, layer.w3], -1), "bfp4")).all)


def test_decoder_count_must_match_the_model():
    hf, config = tiny_model("LlamaForCausalLM")
    with pytest.raises(ConfigError, match="the config has 3 decoders but tiny has 2 layers"):
        emulator(hf, config).teacher_forced(torch.arange(10), 5, model_preset("performance", "tiny", 3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("accumulation", ["fast", "exact"])
def test_cuda_runs_the_same_emulation(accumulation):
    hf, config = tiny_model("Qwen3ForCausalLM")
    tokens = torch.randint(0, TINY["vocab_size"], (96,), generator=torch.Generator().manual_seed(5))
    precision = model_preset("performance", "tiny", 2)
    weights = hf_to_canonical(hf.state_dict(), config)
    cpu = EmulatedModel(config, weights, hf.model.rotary_emb, EmulatorOptions(accumulation))
    expected = cpu.teacher_forced(tokens, 64, precision)
    cuda_rotary = copy.deepcopy(hf.model.rotary_emb).to("cuda")
    gpu = EmulatedModel(config, weights, cuda_rotary, EmulatorOptions(accumulation), device="cuda")
    got = gpu.teacher_forced(tokens, 64, precision).cpu()
    # Same values up to the matmul libraries' fp32 summation order (and rare Triton partial-sum ties).
    assert (got - expected).abs().max() <= 0.02 * expected.abs().max()
    assert (got.argmax(-1) == expected.argmax(-1)).float().mean() >= 0.9
    assert torch.equal(gpu.teacher_forced_stepwise(tokens, 64, precision).cpu(), got)
