"""Metrics on synthetic references whose answers are known: tt-metal's top-1/top-5, KL, perplexity, intervals."""

import math

import numpy as np
import pytest
import torch

from tunelab.errors import TunelabError
from tunelab.eval.accuracy import Bootstrap, Scorer, block_bootstrap_ci, evaluate, score_window
from tunelab.eval.reference import Reference

N, L, P, V = 3, 40, 20, 50  # windows, window length, prefill, vocabulary
D = L - 1 - P


def synthetic(k: int = 8, seed: int = 0, logprobs: bool = True) -> tuple[Reference, torch.Tensor]:
    """A reference built from known full logits [N, L-1, V] (returned too)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(N, L - 1, V, generator=g, dtype=torch.float64) * 3
    tokens = torch.randint(0, V, (N, L), generator=g)
    lse = logits.logsumexp(-1)
    values, ids = logits.topk(k)
    target = logits.gather(-1, tokens[:, 1:, None])[..., 0] - lse
    meta = {"windows": {"prefill_len": P}, "model": {"name": "synthetic"}}
    if not logprobs:
        return Reference("synthetic", meta, tokens, ids), logits
    return Reference(
        "synthetic", meta, tokens, ids, (values - lse[..., None]).float(), lse.float(), target.float()
    ), logits


def decode(logits: torch.Tensor, window: int) -> torch.Tensor:
    return logits[window, P : L - 1].float()


def test_identical_candidate_scores_perfectly():
    ref, logits = synthetic(k=V)
    windows = iter(range(N))
    result = evaluate(ref, lambda tokens, prefill: decode(logits, next(windows)))
    assert result.top1 == result.top5 == 1.0 and result.top1_ci == (1.0, 1.0)
    assert result.kl == pytest.approx(0.0, abs=1e-6)
    assert result.ppl == pytest.approx(result.reference_ppl, rel=1e-5)
    assert result.kl_support_mass == pytest.approx(1.0, abs=1e-5)
    assert result.n_positions == N * D and result.n_windows == N


def test_top1_and_top5_follow_tt_metal_definitions():
    ref, _ = synthetic()
    ids = ref.topk_ids[0, ref.decode_rows]
    candidate = torch.zeros(D, V)
    rank = [i % 8 for i in range(D)]  # position i: the candidate's argmax is the reference's rank-i%8 token
    for i, r in enumerate(rank):
        candidate[i, ids[i, r]] = 10.0
    scores = score_window(candidate, ref, 0)
    assert scores.top1.tolist() == [r == 0 for r in rank]
    assert scores.top5.tolist() == [r < 5 for r in rank]


def test_kl_on_the_top_k_support_is_renormalised():
    ref, logits = synthetic(k=4)
    candidate = decode(logits, 1) + torch.randn(D, V, generator=torch.Generator().manual_seed(1))
    scores = score_window(candidate, ref, 1)
    ids = ref.topk_ids[1, ref.decode_rows]
    p = torch.softmax(logits[1, P : L - 1].gather(-1, ids), -1)
    q = torch.softmax(candidate.double().gather(-1, ids), -1)
    torch.testing.assert_close(scores.kl, (p * (p / q).log()).sum(-1))
    full = synthetic(k=V)[0]
    full_scores = score_window(candidate, full, 1)
    p_all = torch.softmax(logits[1, P : L - 1], -1)
    q_all = torch.softmax(candidate.double(), -1)
    torch.testing.assert_close(full_scores.kl, (p_all * (p_all / q_all).log()).sum(-1))


def test_perplexity_is_on_the_true_tokens():
    ref, logits = synthetic()
    candidate = torch.randn(N, D, V, generator=torch.Generator().manual_seed(2))
    scorer = Scorer(ref)
    for w in range(N):
        scorer.add(w, candidate[w])
    targets = ref.tokens[:, P + 1 :]
    nll = -torch.log_softmax(candidate.double(), -1).gather(-1, targets[..., None]).mean()
    result = scorer.result()
    assert result.ppl == pytest.approx(math.exp(float(nll)))
    true_ref = -torch.log_softmax(logits[:, P : L - 1], -1).gather(-1, targets[..., None]).mean()
    assert result.reference_ppl == pytest.approx(math.exp(float(true_ref)), rel=1e-5)
    assert [w.window for w in result.per_window] == [0, 1, 2]
    assert len(result.position_top1) == D


def test_ids_only_reference_has_no_kl():
    ref, logits = synthetic(logprobs=False)
    result = evaluate(ref, lambda tokens, prefill: decode(logits, 0))
    assert result.kl is None and result.reference_ppl is None and result.kl_support_mass is None
    assert result.per_window[0].top1 == 1.0 and result.per_window[0].kl is None
    data = result.to_dict()
    assert data["kl"] is None and data["kl_definition"] is None and math.isfinite(data["ppl"])


def test_to_dict_has_the_promised_fields():
    ref, logits = synthetic()
    result = evaluate(ref, lambda tokens, prefill: decode(logits, 0) + 0.5 * torch.randn(D, V))
    data = result.to_dict()
    for key in ("top1", "top5", "kl", "ppl", "top1_ci", "top5_ci", "n_positions", "per_window", "segments"):
        assert key in data
    assert 0 <= data["top1_ci"][0] <= data["top1"] <= data["top1_ci"][1] <= 1
    assert len(data["per_position"]["top1"]) == D and "per_position" not in result.to_dict(per_position=False)
    assert sum(s["positions"][1] - s["positions"][0] for s in result.segments(size=7)) == D


def test_bootstrap_interval():
    rng = np.random.default_rng(0)
    hits = rng.random((8, 511)) < 0.9
    low, high = block_bootstrap_ci(hits)
    assert low < hits.mean() < high and high - low < 0.05
    assert block_bootstrap_ci(hits) == (low, high)  # seeded
    plain = block_bootstrap_ci(hits, Bootstrap(block=1))
    sd = math.sqrt(0.9 * 0.1 / hits.size)
    assert plain[1] - plain[0] == pytest.approx(2 * 1.96 * sd, rel=0.2)
    # correlated positions (runs of 32 equal outcomes) widen the block interval over the naive one
    runs = np.repeat(rng.random((8, 16)) < 0.9, 32, axis=1)[:, :511]
    naive = block_bootstrap_ci(runs, Bootstrap(block=1))
    blocked = block_bootstrap_ci(runs)
    assert blocked[1] - blocked[0] > 3 * (naive[1] - naive[0])
    assert block_bootstrap_ci(np.ones((2, 100), dtype=bool)) == (1.0, 1.0)


def test_shape_and_vocabulary_errors():
    ref, _ = synthetic()
    with pytest.raises(TunelabError, match=r"expected \[19, vocab\]"):
        score_window(torch.zeros(D + 1, V), ref, 0)
    with pytest.raises(TunelabError, match="outside the candidate's vocabulary"):
        score_window(torch.zeros(D, 10), ref, 0)
    with pytest.raises(TunelabError, match="no window"):
        Scorer(ref).result()


def test_tied_maxima_are_reported_and_credited_separately():
    ref, _ = synthetic()
    ids = ref.topk_ids[0, ref.decode_rows, 0]
    candidate = torch.zeros(D, V)
    candidate[torch.arange(D), ids] = 5.0
    other = torch.where(ids == 0, 1, 0)  # another id, lower than the reference argmax unless that is 0
    candidate[torch.arange(D), other] = 5.0  # an exact tie, as bfp8-stored logits often have
    scores = score_window(candidate, ref, 0)
    assert scores.tied.all() and scores.top1_tie_aware.all()
    assert scores.top1.tolist() == (ids == 0).tolist()  # torch.argmax breaks the tie to the lowest id
    result = evaluate(ref.select(1), lambda tokens, prefill: candidate)
    assert (
        result.tie_rate == 1.0
        and result.top1_tie_aware == 1.0
        and result.top1 == float((ids == 0).double().mean())
    )
