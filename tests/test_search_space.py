"""The search space: decoder groups, knobs, fidelity pruning (with a bit-identity check), decode/encode."""

import random

import pytest
import tiny_lm
import torch

from tunelab.backends.emulated import EmulatorOptions, emulator_for
from tunelab.errors import ConfigError
from tunelab.model_presets import model_preset
from tunelab.precision import MathFidelity, ModelPrecision, OpGroup, Precision, TensorGroup
from tunelab.presets import hard_defaults
from tunelab.search.space import (
    DEFAULT_FIDELITIES,
    SearchSpace,
    distinct_fidelities,
    effective_kernel,
    parse_groups,
)


def test_groups():
    assert parse_groups("uniform", 3) == ((0, 1, 2),)
    assert parse_groups("per-decoder", 3) == ((0,), (1,), (2,))
    blocks = parse_groups("blocks:4", 30)
    assert sorted(len(b) for b in blocks) == [7, 7, 8, 8] and sum(blocks, ()) == tuple(range(30))
    assert parse_groups("0-1, 2-27,28-29", 30) == ((0, 1), tuple(range(2, 28)), (28, 29))
    for bad, message in [
        ("blocks:0", "needs 1..30 blocks"),
        ("blocks:31", "needs 1..30 blocks"),
        ("0-10,12-29", "cover decoders 0..29 exactly once"),
        ("0-15,15-29", "cover decoders 0..29 exactly once"),
        ("layers", "unknown granularity"),
        ("5-2,0-29", "is empty"),
    ]:
        with pytest.raises(ConfigError, match=message):
            parse_groups(bad, 30)


def test_pruning_follows_the_weight_bits_each_phase_uses():
    # bfp4 weights fit in SrcA's high part: HiFi2 (bf16 Dst) sums what LoFi sums, HiFi4 what HiFi3 would.
    assert effective_kernel(MathFidelity.LOFI, Precision.BFP4) == effective_kernel(
        MathFidelity.HIFI2_FP16, Precision.BFP4
    )
    assert effective_kernel(MathFidelity.LOFI, Precision.BFP8) != effective_kernel(
        MathFidelity.HIFI2_FP16, Precision.BFP8
    )
    # fp32 Dst or L1 accumulation still separate them.
    assert effective_kernel(MathFidelity.LOFI, Precision.BFP4) != effective_kernel(
        MathFidelity.HIFI2, Precision.BFP4
    )
    assert effective_kernel(MathFidelity.HIFI4, Precision.BF16) == effective_kernel(
        MathFidelity.HIFI4_FP32, Precision.BF16
    )
    assert distinct_fidelities(DEFAULT_FIDELITIES, Precision.BFP4) == (
        MathFidelity.LOFI,
        MathFidelity.HIFI2,
        MathFidelity.HIFI4,
    )
    assert distinct_fidelities(DEFAULT_FIDELITIES, Precision.BF16) == DEFAULT_FIDELITIES
    assert distinct_fidelities((MathFidelity.HIFI4_FP32, MathFidelity.HIFI4), Precision.BFP8) == (
        MathFidelity.HIFI4_FP32,
    )


@pytest.fixture(scope="module")
def tiny():
    return tiny_lm.loaded()


def _logits(emulator, precision):
    tokens = torch.arange(3, 3 + 80) % tiny_lm.VOCAB
    return emulator.teacher_forced(tokens, 48, precision)


@pytest.mark.parametrize("accumulation", ["fast", "exact"])
def test_a_pruned_pair_gives_bit_identical_outputs(tiny, accumulation):
    emulator = emulator_for(tiny, EmulatorOptions(accumulation))

    def mlp(fmt, fidelity):
        decoder = hard_defaults().overlay({TensorGroup.FF1_FF3: fmt}, {OpGroup.LI_FF1_FF3: fidelity})
        return ModelPrecision.uniform(decoder, tiny.config.n_layers)

    lofi = _logits(emulator, mlp(Precision.BFP4, MathFidelity.LOFI))
    hifi2 = _logits(emulator, mlp(Precision.BFP4, MathFidelity.HIFI2_FP16))
    assert torch.equal(lofi, hifi2)  # pruned: the same result
    # The same fidelity pair on bfp8 weights is not pruned, and does change the result.
    assert not torch.equal(
        _logits(emulator, mlp(Precision.BFP8, MathFidelity.LOFI)),
        _logits(emulator, mlp(Precision.BFP8, MathFidelity.HIFI2_FP16)),
    )


def test_a_pruned_hifi4_pair_gives_bit_identical_outputs(tiny):
    emulator = emulator_for(tiny, EmulatorOptions("exact"))
    base = hard_defaults().overlay({TensorGroup.WO: Precision.BF16})
    a = ModelPrecision.uniform(base.overlay(fidelities={OpGroup.LI_O_DECODE: MathFidelity.HIFI4}), 2)
    b = ModelPrecision.uniform(base.overlay(fidelities={OpGroup.LI_O_DECODE: MathFidelity.HIFI4_FP32}), 2)
    assert torch.equal(_logits(emulator, a), _logits(emulator, b))


def test_space_knobs_and_choices():
    space = SearchSpace.build(ModelPrecision.uniform(hard_defaults(), 30), "blocks:4")
    assert [k.tensor for k in space.knobs] == [
        TensorGroup.FF1_FF3,
        TensorGroup.FF2,
        TensorGroup.WQKV,
        TensorGroup.WO,
        TensorGroup.KV_CACHE,
    ]
    ff = space.knobs[0]
    assert ff.ops == (OpGroup.LI_FF1_FF3,)
    assert "BFP4/HIFI2_FP16" not in ff.labels and "BFP4/LOFI" in ff.labels and "BF16/HIFI2_FP16" in ff.labels
    assert len(ff.labels) == 3 + 4 + 4
    assert space.knobs[2].ops == (OpGroup.LI_QKV_DECODE, OpGroup.LI_QKV_PREFILL)
    assert space.knobs[4].labels == ("BFP4", "BFP8", "BF16")  # no SDPA op group searched by default
    assert len(space.params) == 4 * 5
    sdpa = SearchSpace.build(
        ModelPrecision.uniform(hard_defaults(), 2), "uniform", ops=(OpGroup.SDPA_DECODE,)
    )
    assert "BFP8/HIFI4" in sdpa.knobs[4].labels and sdpa.knobs[0].labels == ("BFP4", "BFP8", "BF16")


def test_decode_encode_round_trip_and_unsearched_groups_come_from_base():
    base = model_preset("accuracy", "SmolLM2-135M-Instruct", 6)
    space = SearchSpace.build(base, "0-1,2-5")
    rng = random.Random(0)
    for _ in range(20):
        params = {name: rng.choice(choices) for name, choices in space.params.items()}
        config = space.decode(params)
        assert space.encode(config) == params and space.contains(config)
        assert all(d.sdpa_decode == base[0].sdpa_decode and d.activation is Precision.MIXED for d in config)
        assert config[0] == config[1] and config[2] == config[5]
    assert "[0-1] FF1_FF3=" in space.describe(params) and "; [2-5]" in space.describe(params)


def test_encode_takes_the_nearest_choice_for_configs_outside_the_space():
    space = SearchSpace.build(ModelPrecision.uniform(hard_defaults(), 4), "uniform")
    performance = model_preset("performance", "Llama-3.2-1B-Instruct", 4)
    params = space.encode(performance)
    assert params["g0.FF1_FF3"] == "BFP4/LOFI" and params["g0.FF2"] == "BFP8/HIFI2_FP16"
    assert space.contains(performance)
    odd = performance.with_decoder(0, performance[0].overlay({TensorGroup.FF2: Precision.BF16}))
    assert space.encode(odd)["g0.FF2"] == "BFP8/HIFI2_FP16"  # three of four decoders vote bfp8
    assert not space.contains(odd)


def test_bad_spaces_are_one_line_errors():
    base = ModelPrecision.uniform(hard_defaults(), 2)
    with pytest.raises(ConfigError, match="ACTIVATION is not searchable"):
        SearchSpace.build(base, tensors=(TensorGroup.ACTIVATION,))
    with pytest.raises(ConfigError, match="unknown tensor 'FFN'"):
        SearchSpace.from_spec(base, {"tensors": ["FFN"]})
    with pytest.raises(ConfigError, match="MIXED is an ACTIVATION setting"):
        SearchSpace.build(base, formats=(Precision.MIXED,))
    space = SearchSpace.build(base, "uniform")
    with pytest.raises(ConfigError, match="not one of"):
        space.decode({**{n: c[0] for n, c in space.params.items()}, "g0.FF2": "BFP2"})
