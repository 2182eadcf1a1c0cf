"""Study objectives and constraints, read from `Metrics`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from tunelab.errors import ConfigError
from tunelab.evaluator import Metrics

__all__ = ["OBJECTIVES", "Constraints", "Objective", "objectives"]


@dataclass(frozen=True)
class Objective:
    name: str
    maximise: bool
    label: str
    worst: float  # the value an infeasible config gets, so samplers still learn from it

    def value(self, metrics: Metrics) -> float:
        value = getattr(metrics, self.name) if metrics.feasible else None
        return self.worst if value is None else float(value)

    @property
    def direction(self) -> str:
        return "maximize" if self.maximise else "minimize"


OBJECTIVES = {
    "top1": Objective("top1", True, "top-1", 0.0),
    "tok_s_u": Objective("tok_s_u", True, "tok/s/user", 0.0),
    "top5": Objective("top5", True, "top-5", 0.0),
    "kl": Objective("kl", False, "KL(ref || cand)", 1e3),
    "ttft_ms": Objective("ttft_ms", False, "TTFT ms", 1e9),
}


def objectives(names: Sequence[str]) -> tuple[Objective, ...]:
    if not names:
        raise ConfigError("a study needs at least one objective")
    unknown = [n for n in names if n not in OBJECTIVES]
    if unknown:
        raise ConfigError(f"unknown objective {unknown[0]!r} (expected one of {', '.join(OBJECTIVES)})")
    if len(set(names)) != len(names):
        raise ConfigError(f"objectives listed twice: {', '.join(names)}")
    return tuple(OBJECTIVES[n] for n in names)


@dataclass(frozen=True)
class Constraints:
    """Feasibility of a scored config: each value <= 0 means satisfied (Optuna's convention)."""

    min_top1: float | None = None
    max_dram_gb: float | None = None

    def values(self, metrics: Metrics) -> dict[str, float]:
        out = {"fits": 0.0 if metrics.feasible else 1.0}
        if self.min_top1 is not None:
            out["min_top1"] = self.min_top1 - (metrics.top1 if metrics.top1 is not None else 0.0)
        if self.max_dram_gb is not None:
            dram = metrics.dram_bytes
            out["max_dram"] = 1.0 if dram is None else dram / 1e9 - self.max_dram_gb
        return out

    def satisfied(self, metrics: Metrics) -> bool:
        return all(v <= 0 for v in self.values(metrics).values())
