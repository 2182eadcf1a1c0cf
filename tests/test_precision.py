"""The vocabulary matches tt-transformers' enums, kernel configs and hard defaults."""

import pytest

from tunelab.precision import (
    LM_HEAD_FIDELITY,
    MATMULS,
    DecoderPrecision,
    MathFidelity,
    Matmul,
    ModelPrecision,
    OpGroup,
    Precision,
    TensorGroup,
)


def test_enum_names_and_values_match_tt_transformers():
    assert [(m.name, m.value) for m in TensorGroup] == [
        ("FF1_FF3", "ff1_3"),
        ("FF2", "ff2"),
        ("WQKV", "wqkv"),
        ("WO", "wo"),
        ("KV_CACHE", "kv_cache"),
        ("ACTIVATION", "activation"),
    ]
    assert [m.value for m in OpGroup] == [
        "li_ff1_3",
        "li_ff2",
        "li_qkv_decode",
        "li_o_decode",
        "sdpa_decode",
        "li_qkv_prefill",
        "li_o_prefill",
        "sdpa_prefill",
        "accuracy",
    ]
    assert {m.name: m.value for m in MathFidelity} == {
        "LOFI": "lofi",
        "HIFI2": "hifi2",
        "HIFI2_NA": "hifi2na",
        "HIFI2_FP16": "hifi2fp16",
        "HIFI2_NOL1ACC": "hifi2nol1acc",
        "HIFI4": "hifi4",
        "HIFI4_FP32": "hifi4fp32",
    }


@pytest.mark.parametrize(
    ("fidelity", "expected"),
    [
        (MathFidelity.LOFI, ("LoFi", 1, False, True, False)),
        (MathFidelity.HIFI2, ("HiFi2", 2, True, True, True)),
        (MathFidelity.HIFI2_NA, ("HiFi2", 2, False, False, False)),
        (MathFidelity.HIFI2_FP16, ("HiFi2", 2, False, True, False)),
        (MathFidelity.HIFI2_NOL1ACC, ("HiFi2", 2, True, False, True)),
        (MathFidelity.HIFI4, ("HiFi4", 4, True, True, False)),
        (MathFidelity.HIFI4_FP32, ("HiFi4", 4, True, True, True)),
    ],
)
def test_kernel_configs(fidelity, expected):
    k = fidelity.kernel
    assert (k.math_fidelity, k.phases, k.fp32_dest_acc_en, k.packer_l1_acc, k.math_approx_mode) == expected


def test_decoder_defaults_are_tt_hard_defaults():
    d = DecoderPrecision()
    assert all(d.precision(g) is Precision.BFP8 for g in TensorGroup if g is not TensorGroup.ACTIVATION)
    assert d.activation is Precision.MIXED
    assert d.fidelity(OpGroup.LI_FF1_FF3) is d.fidelity(OpGroup.LI_FF2) is MathFidelity.HIFI2_FP16
    assert d.sdpa_prefill is MathFidelity.HIFI4
    assert d.accuracy is MathFidelity.HIFI4_FP32
    others = set(OpGroup) - {OpGroup.LI_FF1_FF3, OpGroup.LI_FF2, OpGroup.SDPA_PREFILL, OpGroup.ACCURACY}
    assert {d.fidelity(op) for op in others} == {MathFidelity.HIFI2}


def test_mixed_only_for_activation_and_types_checked():
    with pytest.raises(ValueError, match="FF2 cannot be MIXED"):
        DecoderPrecision(ff2=Precision.MIXED)
    with pytest.raises(TypeError, match="WQKV must be a Precision"):
        DecoderPrecision(wqkv="bfp8")
    with pytest.raises(TypeError, match="LI_FF2 must be a MathFidelity"):
        DecoderPrecision(li_ff2="lofi")


def test_overlay_replaces_only_given_groups():
    d = DecoderPrecision().overlay(
        {TensorGroup.FF1_FF3: Precision.BFP4}, {OpGroup.LI_FF1_FF3: MathFidelity.LOFI}
    )
    assert d.ff1_ff3 is Precision.BFP4 and d.li_ff1_ff3 is MathFidelity.LOFI
    assert d.overlay(
        {TensorGroup.FF1_FF3: Precision.BFP8}, {OpGroup.LI_FF1_FF3: MathFidelity.HIFI2_FP16}
    ) == (DecoderPrecision())


def test_bytes_per_element():
    assert [p.bytes_per_element for p in (Precision.BFP4, Precision.BFP8, Precision.BF16)] == [
        0.5625,
        1.0625,
        2.0,
    ]
    with pytest.raises(ValueError):
        _ = Precision.MIXED.bytes_per_element


def test_model_precision():
    fast = DecoderPrecision(ff1_ff3=Precision.BFP4)
    m = ModelPrecision.uniform(DecoderPrecision(), 4)
    assert m.n_layers == len(m) == 4 and m.is_uniform
    changed = m.with_decoder(3, fast)
    assert changed[3] == fast and changed.decoders[:3] == m.decoders[:3]
    assert not changed.is_uniform and m.is_uniform
    with pytest.raises(IndexError):
        m.with_decoder(4, fast)
    with pytest.raises(ValueError):
        ModelPrecision(())
    with pytest.raises(ValueError):
        ModelPrecision.uniform(fast, 0)
    assert hash(m) == hash(ModelPrecision.uniform(DecoderPrecision(), 4))


def test_matmul_table_maps_each_weight_group_to_its_op_groups():
    expected = (
        Matmul(TensorGroup.WQKV, prefill=OpGroup.LI_QKV_PREFILL, decode=OpGroup.LI_QKV_DECODE),
        Matmul(TensorGroup.WO, prefill=OpGroup.LI_O_PREFILL, decode=OpGroup.LI_O_DECODE),
        Matmul(TensorGroup.FF1_FF3, prefill=OpGroup.LI_FF1_FF3, decode=OpGroup.LI_FF1_FF3),
        Matmul(TensorGroup.FF2, prefill=OpGroup.LI_FF2, decode=OpGroup.LI_FF2),
    )
    assert expected == MATMULS
    linear_ops = {op for op in OpGroup if op.name.startswith("LI_")}
    assert {op for m in MATMULS for op in (m.prefill, m.decode)} == linear_ops
    assert LM_HEAD_FIDELITY.kernel.phases == 2 and not LM_HEAD_FIDELITY.kernel.fp32_dest_acc_en
