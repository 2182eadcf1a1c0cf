"""Teacher-forced accuracy of a candidate against a reference, with tt-metal's definitions.

Over the decode positions of every window (tt-metal's test_accuracy: prefill 512, 511 decode steps):

- top-1: the candidate's argmax equals the reference's argmax (reference top-k column 0);
- top-5: the candidate's argmax is among the reference's top 5;
- ties: the candidate's logits are stored in bfp8/bf16 on the device (and in the emulator), so its maximum is often
  attained by several ids. `top1` breaks ties to the lowest id (torch.argmax; assumed to match the device's argmax);
  `top1_tie_aware` credits a position whose reference argmax is among the tied maxima, and `tie_rate` is the
  fraction of positions with a tied maximum. The gap between the two is tie-breaking, not numerical error;
- KL(reference || candidate) on the stored top-k support: both distributions are renormalised over the reference's
  k ids before the divergence is taken (the support usually holds most of the reference's mass; the mean mass it
  holds is reported as `kl_support_mass`). None when the reference has no log-probabilities (an imported .refpt);
- perplexity: exp of the candidate's mean negative log-likelihood of the true next tokens, from its full logits;
- 95% intervals for top-1 and top-5 by a block bootstrap: each window's decode positions are cut into consecutive
  blocks of 32 (neighbouring positions are correlated, so resampling single positions would understate the width),
  blocks are resampled with replacement 2000 times (seeded), and the percentile interval of the pooled rate is taken.

Accuracy is agreement with the reference model, not with the corpus text, exactly as in tt-metal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from tunelab.errors import TunelabError
from tunelab.eval.reference import Reference

__all__ = [
    "AccuracyResult",
    "Bootstrap",
    "Scorer",
    "WindowMetrics",
    "WindowScores",
    "block_bootstrap_ci",
    "evaluate",
    "score_window",
]


@dataclass(frozen=True)
class Bootstrap:
    """Block bootstrap settings (block=1 is the plain per-position bootstrap)."""

    resamples: int = 2000
    block: int = 32
    level: float = 0.95
    seed: int = 0

    def describe(self) -> str:
        return (
            f"block bootstrap: blocks of {self.block} consecutive decode positions within a window, "
            f"{self.resamples} resamples, seed {self.seed}, percentile {self.level:.0%} interval"
        )


@dataclass
class WindowScores:
    """Per-decode-position scores of one window (tensors of length n_decode)."""

    top1: torch.Tensor  # bool
    top5: torch.Tensor  # bool
    top1_tie_aware: torch.Tensor  # bool: the reference argmax attains the candidate's maximum
    tied: torch.Tensor  # bool: the candidate's maximum is attained by more than one id
    nll: torch.Tensor  # float64: candidate -log p(true next token)
    kl: torch.Tensor | None  # float64: KL(ref || cand) on the reference top-k support
    support_mass: torch.Tensor | None  # float64: reference mass inside its top-k
    ref_nll: torch.Tensor | None  # float64: reference -log p(true next token)
    argmax: torch.Tensor  # int64: the candidate's predictions


def score_window(logits: torch.Tensor, reference: Reference, window: int) -> WindowScores:
    """Score a candidate's decode logits [n_decode, vocab] (row i predicts token prefill_len + i + 1)."""
    rows = reference.decode_rows
    n_decode = reference.n_decode
    if logits.dim() != 2 or logits.shape[0] != n_decode:
        raise TunelabError(
            f"candidate logits have shape {tuple(logits.shape)}; expected [{n_decode}, vocab] "
            f"(the decode positions of a {reference.window_len}-token window with prefill {reference.prefill_len})"
        )
    ids = reference.topk_ids[window, rows].to(logits.device)  # [D, k]
    targets = reference.tokens[window, rows.start + 1 : rows.stop + 1].to(logits.device)
    _check_ids(ids, targets, logits.shape[-1])
    logits = logits.double()
    logprobs = torch.log_softmax(logits, dim=-1)
    argmax = logits.argmax(dim=-1)
    best = logits.max(dim=-1).values
    kl = support_mass = ref_nll = None
    if reference.topk_logprobs is not None:
        ref_lp = reference.topk_logprobs[window, rows].double().to(logits.device)  # [D, k]
        support_mass = ref_lp.logsumexp(-1).exp()
        p_log = ref_lp - ref_lp.logsumexp(-1, keepdim=True)
        cand = logprobs.gather(-1, ids)
        q_log = cand - cand.logsumexp(-1, keepdim=True)
        kl = (p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0.0)
    if reference.target_logprobs is not None:
        ref_nll = -reference.target_logprobs[window, rows].double().to(logits.device)
    return WindowScores(
        top1=(argmax == ids[:, 0]).cpu(),
        top5=(argmax[:, None] == ids[:, :5]).any(-1).cpu(),
        top1_tie_aware=(logits.gather(-1, ids[:, :1])[:, 0] == best).cpu(),
        tied=((logits == best[:, None]).sum(-1) > 1).cpu(),
        nll=-logprobs.gather(-1, targets[:, None])[:, 0].cpu(),
        kl=None if kl is None else kl.cpu(),
        support_mass=None if support_mass is None else support_mass.cpu(),
        ref_nll=None if ref_nll is None else ref_nll.cpu(),
        argmax=argmax.cpu(),
    )


def _check_ids(ids: torch.Tensor, targets: torch.Tensor, vocab: int) -> None:
    """The reference's top-k ids and true tokens must be ids of the candidate's vocabulary."""
    for name, t in (("top-k id", ids), ("token", targets)):
        low, high = int(t.min()), int(t.max())
        if low < 0 or high >= vocab:
            raise TunelabError(
                f"reference {name} {low if low < 0 else high} is outside the candidate's vocabulary (0..{vocab - 1})"
            )


def block_bootstrap_ci(hits: np.ndarray, spec: Bootstrap = Bootstrap()) -> tuple[float, float]:
    """Percentile interval of the pooled hit rate of `hits` [windows, positions], resampling position blocks."""
    hits = np.asarray(hits, dtype=np.float64)
    if hits.ndim == 1:
        hits = hits[None]
    n_positions = hits.shape[1]
    starts = range(0, n_positions, spec.block)
    sums = np.array([hits[:, s : s + spec.block].sum(1) for s in starts]).T.reshape(-1)
    counts = np.array([min(spec.block, n_positions - s) for s in starts] * hits.shape[0], dtype=np.float64)
    rng = np.random.default_rng(spec.seed)
    draws = rng.integers(0, len(sums), size=(spec.resamples, len(sums)))
    rates = sums[draws].sum(1) / counts[draws].sum(1)
    tail = (1 - spec.level) / 2
    low, high = np.quantile(rates, [tail, 1 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class WindowMetrics:
    window: int
    top1: float
    top5: float
    kl: float | None
    ppl: float
    n_positions: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "top1": self.top1,
            "top5": self.top5,
            "kl": self.kl,
            "ppl": self.ppl,
            "n_positions": self.n_positions,
        }


@dataclass(frozen=True)
class AccuracyResult:
    """Accuracy of a candidate over every decode position of every window (fractions, not percentages)."""

    top1: float
    top5: float
    kl: float | None
    ppl: float
    top1_ci: tuple[float, float]
    top5_ci: tuple[float, float]
    n_positions: int
    n_windows: int
    top1_tie_aware: float
    tie_rate: float
    reference_ppl: float | None
    kl_support_mass: float | None
    per_window: list[WindowMetrics]
    position_top1: list[float]  # per decode position, the mean over windows
    position_top5: list[float]
    bootstrap: Bootstrap = field(default_factory=Bootstrap)

    def segments(self, size: int = 100) -> list[dict[str, Any]]:
        """Accuracy per `size`-position segment of the decode positions (tt-metal prints it per 100 tokens)."""
        out = []
        for start in range(0, len(self.position_top1), size):
            top1 = self.position_top1[start : start + size]
            top5 = self.position_top5[start : start + size]
            out.append(
                {
                    "positions": [start, start + len(top1)],
                    "top1": sum(top1) / len(top1),
                    "top5": sum(top5) / len(top5),
                }
            )
        return out

    def to_dict(self, per_position: bool = True) -> dict[str, Any]:
        data: dict[str, Any] = {
            "top1": self.top1,
            "top5": self.top5,
            "kl": self.kl,
            "ppl": self.ppl,
            "top1_ci": list(self.top1_ci),
            "top5_ci": list(self.top5_ci),
            "n_positions": self.n_positions,
            "n_windows": self.n_windows,
            "top1_tie_aware": self.top1_tie_aware,
            "tie_rate": self.tie_rate,
            "reference_ppl": self.reference_ppl,
            "kl_support_mass": self.kl_support_mass,
            "kl_definition": None
            if self.kl is None
            else "KL(reference || candidate) over the reference top-k ids, both renormalised on that support",
            "ci_method": self.bootstrap.describe(),
            "per_window": [w.to_dict() for w in self.per_window],
            "segments": self.segments(),
        }
        if per_position:
            data["per_position"] = {
                "top1": [round(x, 4) for x in self.position_top1],
                "top5": [round(x, 4) for x in self.position_top5],
            }
        return data


class Scorer:
    """Accumulates per-window scores against a reference and summarises them (logits are not kept)."""

    def __init__(self, reference: Reference, bootstrap: Bootstrap = Bootstrap()) -> None:
        self.reference = reference
        self.bootstrap = bootstrap
        self.windows: dict[int, WindowScores] = {}

    def add(self, window: int, logits: torch.Tensor) -> WindowScores:
        scores = score_window(logits, self.reference, window)
        self.windows[window] = scores
        return scores

    def result(self) -> AccuracyResult:
        if not self.windows:
            raise TunelabError("no window was scored")
        order = sorted(self.windows)
        scores = [self.windows[w] for w in order]

        def stack(name: str) -> torch.Tensor | None:
            values = [getattr(s, name) for s in scores]
            return None if any(v is None for v in values) else torch.stack(values)

        top1, top5, nll = stack("top1").double(), stack("top5").double(), stack("nll")
        kl, mass, ref_nll = stack("kl"), stack("support_mass"), stack("ref_nll")
        per_window = [
            WindowMetrics(
                window=w,
                top1=float(s.top1.double().mean()),
                top5=float(s.top5.double().mean()),
                kl=None if s.kl is None else float(s.kl.mean()),
                ppl=math.exp(float(s.nll.mean())),
                n_positions=len(s.top1),
            )
            for w, s in zip(order, scores, strict=True)
        ]
        return AccuracyResult(
            top1=float(top1.mean()),
            top5=float(top5.mean()),
            kl=None if kl is None else float(kl.mean()),
            ppl=math.exp(float(nll.mean())),
            top1_ci=block_bootstrap_ci(top1.numpy(), self.bootstrap),
            top5_ci=block_bootstrap_ci(top5.numpy(), self.bootstrap),
            n_positions=int(top1.numel()),
            n_windows=len(order),
            top1_tie_aware=float(stack("top1_tie_aware").double().mean()),
            tie_rate=float(stack("tied").double().mean()),
            reference_ppl=None if ref_nll is None else math.exp(float(ref_nll.mean())),
            kl_support_mass=None if mass is None else float(mass.mean()),
            per_window=per_window,
            position_top1=top1.mean(0).tolist(),
            position_top5=top5.mean(0).tolist(),
            bootstrap=self.bootstrap,
        )


def evaluate(
    reference: Reference,
    candidate: Callable[[torch.Tensor, int], torch.Tensor],
    *,
    bootstrap: Bootstrap = Bootstrap(),
    on_window: Callable[[int], None] | None = None,
) -> AccuracyResult:
    """Run `candidate(tokens[:L-1], prefill_len) -> decode logits [n_decode, vocab]` on every reference window.

    For the emulator: `lambda t, p: emulator.teacher_forced(t, p, precision)`.
    """
    scorer = Scorer(reference, bootstrap)
    for window in range(reference.n_windows):
        tokens = reference.tokens[window, :-1]
        scorer.add(window, candidate(tokens, reference.prefill_len))
        if on_window is not None:
            on_window(window)
    return scorer.result()
