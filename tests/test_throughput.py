"""The performance model: how formats, fidelities, chips, context and batch move decode speed and TTFT."""

import dataclasses
import json

import pytest

from tunelab.model_presets import model_preset
from tunelab.models.shapes import model_shape
from tunelab.perf.calibration import fit, load_calibration, summary
from tunelab.perf.devices import device
from tunelab.perf.support import Unsupported
from tunelab.perf.throughput import (
    PARAMS_FILE,
    DoesNotFit,
    decode_breakdown,
    load_params,
    memory_per_chip,
    predict,
)
from tunelab.precision import DecoderPrecision, MathFidelity, ModelPrecision, Precision

LLAMA_8B = model_shape("meta-llama/Llama-3.1-8B")
N150 = device("N150")


def uniform(**groups) -> ModelPrecision:
    return ModelPrecision.uniform(DecoderPrecision(**groups), LLAMA_8B.n_layers)


def step_ms(precision: ModelPrecision, dev=N150, batch: int = 1, context: int = 512) -> float:
    return sum(decode_breakdown(LLAMA_8B, precision, dev, load_params(), batch, context).values())


def test_mlp_format_ordering_on_bandwidth_bound_llama_8b_n150():
    speed = {
        fmt: predict(LLAMA_8B, uniform(ff1_ff3=fmt), N150).tok_s_u
        for fmt in Precision
        if fmt.value != "mixed"
    }
    assert speed[Precision.BFP4] > speed[Precision.BFP8] > speed[Precision.BF16]


def test_each_decoder_config_changes_its_own_term():
    base = model_preset("performance", "Llama-3.1-8B", 32)
    heavier = dataclasses.replace(base[0], ff1_ff3=Precision.BF16, wqkv=Precision.BF16)
    one = base.with_decoder(3, heavier)
    other = base.with_decoder(20, heavier)
    two = one.with_decoder(20, heavier)
    delta = step_ms(one) - step_ms(base)
    assert delta > 0
    assert step_ms(other) - step_ms(base) == pytest.approx(delta)
    assert step_ms(two) - step_ms(base) == pytest.approx(2 * delta)


def test_fidelity_costs_prefill_not_bandwidth_bound_decode():
    lofi = predict(LLAMA_8B, uniform(li_ff1_ff3=MathFidelity.LOFI), N150)
    hifi4 = predict(LLAMA_8B, uniform(li_ff1_ff3=MathFidelity.HIFI4), N150)
    assert hifi4.ttft_ms > 1.2 * lofi.ttft_ms
    assert hifi4.tok_s_u == pytest.approx(lofi.tok_s_u, rel=0.01)


def test_tensor_parallel_speeds_up_8b_with_collective_costs():
    precision = model_preset("performance", "Llama-3.1-8B", 32)
    speeds = {name: predict(LLAMA_8B, precision, device(name)).tok_s_u for name in ("N150", "N300", "T3K")}
    assert speeds["N150"] < speeds["N300"] < speeds["T3K"]
    single = decode_breakdown(LLAMA_8B, precision, N150, load_params(), 1, 512)
    pair = decode_breakdown(LLAMA_8B, precision, device("N300"), load_params(), 1, 512)
    assert single["ccl"] == 0 and pair["ccl"] > 0
    assert pair["weights"] == pytest.approx(single["weights"] / 2)


def test_lm_head_is_read_as_bfp8_whatever_the_decoders():
    params = load_params()
    terms = decode_breakdown(LLAMA_8B, uniform(), N150, params, 1, 512)
    bandwidth = N150.dram_gbs_per_chip * 1e9 * N150.dram_ubench_fraction * params.dram_efficiency
    assert terms["lm_head"] == pytest.approx(4096 * 128256 * 1.0625 / bandwidth * 1e3)
    assert (
        decode_breakdown(LLAMA_8B, uniform(wo=Precision.BF16), N150, params, 1, 512)["lm_head"]
        == terms["lm_head"]
    )


def test_bf16_lm_head_is_slower_and_bigger_than_bfp8():
    precision = model_preset("performance", "Llama-3.1-8B", 32)
    bfp8 = predict(LLAMA_8B, precision, N150)
    assert predict(LLAMA_8B, precision, N150, lm_head=Precision.BFP8) == bfp8  # the default
    bf16 = predict(LLAMA_8B, precision, N150, lm_head=Precision.BF16)
    assert bf16.tok_s_u < bfp8.tok_s_u and bf16.ttft_ms >= bfp8.ttft_ms
    assert bf16.breakdown_ms["lm_head"] > bfp8.breakdown_ms["lm_head"]
    assert bf16.breakdown_ms["weights"] == bfp8.breakdown_ms["weights"]
    weights8, kv8 = memory_per_chip(LLAMA_8B, precision, N150, 1, 512)
    weights16, kv16 = memory_per_chip(LLAMA_8B, precision, N150, 1, 512, Precision.BF16)
    assert weights16 - weights8 == pytest.approx(4096 * 128256 * (2.0 - 1.0625)) and kv16 == kv8


def test_kv_cache_reads_grow_with_context_and_follow_its_format():
    params = load_params()
    short = decode_breakdown(LLAMA_8B, uniform(), N150, params, 1, 4096)["kv_cache"]
    long = decode_breakdown(LLAMA_8B, uniform(), N150, params, 1, 8192)["kv_cache"]
    bf16 = decode_breakdown(LLAMA_8B, uniform(kv_cache=Precision.BF16), N150, params, 1, 8192)["kv_cache"]
    assert long == pytest.approx(2 * short)
    assert bf16 == pytest.approx(long * 2 / 1.0625)
    assert (
        predict(LLAMA_8B, uniform(), N150, seq_len=32768).tok_s_u < predict(LLAMA_8B, uniform(), N150).tok_s_u
    )


def test_decode_batch_shares_weight_reads():
    one = predict(LLAMA_8B, uniform(), N150, batch=1).tok_s_u
    many = predict(LLAMA_8B, uniform(), N150, batch=32).tok_s_u
    assert many < one and 32 * many > 10 * one


def test_refuses_what_tt_transformers_refuses():
    with pytest.raises(Unsupported, match=r"does not run Llama-3\.1-70B on N150"):
        seventy = model_shape("meta-llama/Llama-3.1-70B")
        predict(seventy, model_preset("performance", seventy.name, seventy.n_layers), N150)
    smollm = model_shape("HuggingFaceTB/SmolLM2-135M-Instruct")
    with pytest.raises(Unsupported, match="9 heads do not divide over 2 chips"):
        predict(smollm, model_preset("performance", smollm.name, smollm.n_layers), device("N300"))


def test_refuses_what_does_not_fit_in_dram():
    performance = model_preset("performance", "Llama-3.1-8B", 32)
    with pytest.raises(DoesNotFit, match=r"^Llama-3.1-8B does not fit on N150: .*, more than its 12.9 GB$"):
        predict(LLAMA_8B, performance, N150, seq_len=131072)  # tt-transformers: 8B on N150 has a 64k maximum
    predict(LLAMA_8B, performance, N150, seq_len=65536)
    with pytest.raises(DoesNotFit):
        predict(LLAMA_8B, uniform(ff1_ff3=Precision.BF16, ff2=Precision.BF16), N150)


def test_packaged_params_are_the_fit_of_the_packaged_calibration():
    rows = load_calibration()
    result = fit(rows)
    packaged = json.loads(PARAMS_FILE.read_text())
    for name, value in dataclasses.asdict(result.params).items():
        assert packaged["params"][name] == pytest.approx(value, rel=1e-3), name
    errors = summary(result.errors)
    assert packaged["fit_error"] == errors
    assert errors["tok_s_u"]["median_abs_pct"] <= 5 and errors["tok_s_u"]["max_abs_pct"] <= 15
