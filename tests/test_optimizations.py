"""`--optimizations` strings: tt-transformers' grammar, round trips, one-line errors."""

import pytest

from tunelab.errors import ConfigError
from tunelab.interop import parse_optimizations, to_optimizations
from tunelab.precision import DecoderPrecision, MathFidelity, Precision

DEFAULT_NAME = (
    "precision_cfg = {ff1_3: bfp8, ff2: bfp8, wqkv: bfp8, wo: bfp8, kv_cache: bfp8, activation: mixed}, "
    "fidelity_cfg = {li_ff1_3: hifi2fp16, li_ff2: hifi2fp16, li_qkv_decode: hifi2, li_o_decode: hifi2, "
    "sdpa_decode: hifi2, li_qkv_prefill: hifi2, li_o_prefill: hifi2, sdpa_prefill: hifi4, accuracy: hifi4fp32}"
)


def test_full_name_of_defaults_is_tt_transformers_string():
    assert to_optimizations(DecoderPrecision()) == DEFAULT_NAME
    assert parse_optimizations(DEFAULT_NAME) == DecoderPrecision()


def test_lt_examples_overlay_the_hard_defaults():
    short = parse_optimizations(
        "precision_cfg = {ff1_3: bfp4, ff2: bfp8}, fidelity_cfg = {li_ff1_3: lofi, li_ff2: hifi2}"
    )
    assert short == DecoderPrecision(
        ff1_ff3=Precision.BFP4, li_ff1_ff3=MathFidelity.LOFI, li_ff2=MathFidelity.HIFI2
    )
    long = parse_optimizations(
        "precision_cfg = {ff1_3: bfp8, ff2: bfp8, wqkv: bfp8, wo: bfp4, kv_cache: bfp8, activation: bf16}, "
        "fidelity_cfg = {li_ff1_3: hifi2, sdpa_decode: hifi2na, li_o_decode: lofi, li_qkv_prefill: hifi2, "
        "sdpa_prefill: hifi4, li_o_prefill: lofi}"
    )
    assert long.wo is Precision.BFP4 and long.activation is Precision.BF16
    assert long.sdpa_decode is MathFidelity.HIFI2_NA and long.li_ff2 is MathFidelity.HIFI2_FP16


def test_round_trip_of_a_non_default_decoder():
    decoder = DecoderPrecision(
        ff1_ff3=Precision.BFP4,
        kv_cache=Precision.BF16,
        activation=Precision.BFP8,
        accuracy=MathFidelity.HIFI2_NOL1ACC,
    )
    assert parse_optimizations(to_optimizations(decoder)) == decoder


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ff1_3: bfp4", "unknown section 'ff1_3'"),
        ("fidelity_cfg = {li_ff2: lofi}", "precision_cfg is missing"),
        ("precision_cfg = {ff1_3: bfp4}", "fidelity_cfg is missing"),
        ("precision_cfg = {}, fidelity_cfg = {li_ff2: lofi}", "precision_cfg is empty"),
        (
            "precision_cfg = {ff1_3 bfp4}, fidelity_cfg = {li_ff2: lofi}",
            "'ff1_3 bfp4' is not a 'key: value' pair",
        ),
        ("precision_cfg = {ff1_3: bfp4: x}, fidelity_cfg = {li_ff2: lofi}", "is not a 'key: value' pair"),
        ("precision_cfg = {FF1_FF3: bfp4}, fidelity_cfg = {li_ff2: lofi}", "unknown key 'FF1_FF3'"),
        ("precision_cfg = {ff1_3: BFP4}, fidelity_cfg = {li_ff2: lofi}", "ff1_3: invalid value 'BFP4'"),
        (
            "precision_cfg = {ff1_3: bfp4}, fidelity_cfg = {li_ff2: hifi2_fp16}",
            "li_ff2: invalid value 'hifi2_fp16'",
        ),
        (
            "precision_cfg = {wo: mixed}, fidelity_cfg = {li_ff2: lofi}",
            "wo: 'mixed' is only valid for activation",
        ),
        ("precision_cfg = {ff1_3: bfp4}, fidelity_cfg = li_ff2: lofi", "expected '{...}' after fidelity_cfg"),
    ],
)
def test_bad_strings_give_one_line_errors(text, message):
    with pytest.raises(ConfigError) as info:
        parse_optimizations(text)
    assert message in str(info.value) and str(info.value).startswith("--optimizations")
