"""The Evaluator on a tiny random Llama: Metrics, incremental windows, infeasible configs, cache keys, state reuse."""

import json

import pytest
import tiny_search
import torch

from tunelab.evaluator import (
    Evaluator,
    ImportedAccuracy,
    Metrics,
    ModelledThroughput,
    PrefixStates,
    config_key,
    emulated_evaluator,
)
from tunelab.interop import to_decoder_config
from tunelab.model_presets import model_preset
from tunelab.perf import device
from tunelab.precision import ModelPrecision, Precision, TensorGroup
from tunelab.presets import hard_defaults


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    return tiny_search.setup(tmp_path_factory.mktemp("evaluator"))


def perf(n: int = 2) -> ModelPrecision:
    return model_preset("performance", "tiny", n)


def test_config_key_is_the_canonical_complete_json():
    a = ModelPrecision.uniform(hard_defaults(), 2)
    b = ModelPrecision((hard_defaults(), hard_defaults().overlay({TensorGroup.FF2: Precision.BFP8})))
    assert config_key(a) == config_key(b)  # the same config written two ways
    c = a.with_decoder(1, hard_defaults().overlay({TensorGroup.FF2: Precision.BFP4}))
    assert config_key(c) != config_key(a)
    assert len(config_key(a)) == 16


def test_score_gives_fractions_speed_and_identity(env):
    _, _, evaluator, _ = env
    m = evaluator.score(perf())
    assert m.feasible and m.reason is None
    assert 0 <= m.top1 <= 1 and 0 <= m.top5 <= 1 and m.top1 <= m.top5
    assert m.top1_ci[0] <= m.top1 <= m.top1_ci[1]
    assert m.kl is not None and m.kl >= 0 and m.ppl > 1
    assert m.n_windows == 2 and m.n_positions == 2 * 31 and len(m.per_window_top1) == 2
    assert m.tok_s_u > 0 and m.ttft_ms > 0 and m.dram_bytes > 0
    assert m.kind == "emulated+modelled" and m.evaluator == evaluator.key
    identity = evaluator.identity
    assert identity["model_fingerprint"] and identity["reference"] and identity["n_windows"] == 2
    assert Metrics.from_dict(json.loads(json.dumps(m.to_dict()))) == m


def test_windows_are_incremental_and_the_last_equals_score(env):
    _, _, evaluator, _ = env
    seen = list(evaluator.windows(perf()))
    assert [m.n_windows for m in seen] == [1, 2]
    assert seen[-1].top1 == evaluator.score(perf()).top1
    first = next(iter(evaluator.windows(perf())))  # a caller may stop after one window
    assert first.n_windows == 1 and first.top1 == seen[0].top1


def test_more_precision_scores_at_least_as_well_here(env):
    _, _, evaluator, _ = env
    low = evaluator.score(
        ModelPrecision.uniform(
            hard_defaults().overlay(
                dict.fromkeys(
                    (TensorGroup.FF1_FF3, TensorGroup.FF2, TensorGroup.WQKV, TensorGroup.WO), Precision.BFP4
                )
            ),
            2,
        )
    )
    high = evaluator.score(model_preset("bf16", "tiny", 2))
    assert high.kl < low.kl
    assert high.tok_s_u < low.tok_s_u  # bf16 weights read more bytes


def test_unsupported_config_is_an_infeasible_metrics_not_an_exception(env):
    _, _, evaluator, _ = env
    t3k = Evaluator(
        evaluator.accuracy, ModelledThroughput(evaluator.model, device("T3K")), 2, evaluator.model
    )
    m = t3k.score(perf())  # 4 attention heads do not divide over 8 chips
    assert not m.feasible and "heads" in m.reason and m.top1 is None
    huge = Evaluator(
        evaluator.accuracy, ModelledThroughput(evaluator.model, device("N150"), batch=10**7, seq_len=512), 2
    )
    m = huge.score(perf())
    assert not m.feasible and "does not fit" in m.reason
    too_long = Evaluator(
        evaluator.accuracy, ModelledThroughput(evaluator.model, device("N150"), seq_len=10**8), 2
    )
    m = too_long.score(perf())
    assert not m.feasible and "context of 512" in m.reason


def test_windows_bound_is_checked(env):
    _, _, evaluator, _ = env
    n = evaluator.accuracy.max_windows
    assert evaluator.with_windows(None).n_windows == n
    with pytest.raises(Exception, match=f"--windows must be in 1..{n}"):
        evaluator.with_windows(n + 1)


def test_resuming_from_stored_hidden_states_is_bit_identical(env):
    _, _, evaluator, _ = env
    emulator, reference = evaluator.accuracy.emulator, evaluator.accuracy.reference
    tokens = reference.tokens[0, :-1]
    a = perf()
    b = a.with_decoder(1, hard_defaults().overlay({TensorGroup.FF2: Precision.BF16}))
    captured = {}
    full_a = emulator.teacher_forced(tokens, 32, a, on_layer=lambda i, s: captured.__setitem__(i, s))
    full_b = emulator.teacher_forced(tokens, 32, b)
    resumed_b = emulator.teacher_forced(tokens, 32, b, start=1, entering=captured[1])
    assert torch.equal(resumed_b, full_b)
    assert not torch.equal(full_a, full_b)


def test_evaluator_reuses_prefix_states_and_gets_the_same_metrics(env, tmp_path):
    _, s, evaluator, refs = env
    a = perf()
    b = a.with_decoder(1, hard_defaults().overlay({TensorGroup.WO: Precision.BF16}))
    source = evaluator.accuracy
    source.states = PrefixStates()
    evaluator.score(a)
    hits = source.states.hits
    reused = evaluator.score(b)
    assert source.states.hits == hits + 2  # one per window
    fresh, _ = emulated_evaluator(s, reference_dir=refs)
    assert fresh.score(b).top1 == reused.top1 and fresh.score(b).kl == reused.kl


def test_prefix_keys_identify_the_decoders_before_each_layer():
    a = perf(4)
    b = a.with_decoder(2, hard_defaults())
    pa, pb = PrefixStates.prefixes(a), PrefixStates.prefixes(b)
    assert pa[:3] == pb[:3] and pa[3] != pb[3] and len(pa) == 4


def test_imported_accuracy(tmp_path, env):
    _, _, evaluator, _ = env
    path = tmp_path / "results.json"
    path.write_text(json.dumps([{"config": to_decoder_config(perf()), "top1": 81.5, "top5": 97.0}]))
    imported = Evaluator(ImportedAccuracy(path, 2), evaluator.throughput, model=evaluator.model)
    m = imported.score(perf())
    assert m.top1 == pytest.approx(0.815) and m.top5 == pytest.approx(0.97) and m.kind == "imported+modelled"
    with pytest.raises(Exception, match="no result for config"):
        imported.score(model_preset("bf16", "tiny", 2))
    path.write_text("{not json")
    with pytest.raises(Exception, match="cannot read imported results"):
        ImportedAccuracy(path, 2)
