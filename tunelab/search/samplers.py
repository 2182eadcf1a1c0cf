"""Samplers: tunelab's additive model-based sampler (default), and Optuna's TPE, NSGA-II, GP and random.

`additive` (the default: on SmolLM2 for an N150 it found configs beyond tt-transformers' presets where random search
found none and TPE little; `benchmarks/search_efficiency.py`) exploits what is known about the problem. The objectives that need no accuracy run (tok/s/user, TTFT)
come from the throughput model, which is additive over (decoder group, knob) choices in time per token; the sampler
learns that additive table exactly from a few hundred cheap calls. Accuracy objectives get a Bayesian linear
surrogate over the same one-hot choices plus shared per-knob features (lowering FF2 costs about the same in every
group), fitted to the trials so far. Each proposal draws one surrogate from the posterior (Thompson sampling),
predicts every candidate (mutations of the current front and random configs), and takes the candidate with the
largest hypervolume improvement over the observed front (measured from the study's reference point, the warm
starts' nadir, so proposals aim beyond the presets); when none improves it, the one closest to improving.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.samplers import BaseSampler, RandomSampler
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import ConfigError
from tunelab.search.pareto import hypervolume, nondominated, to_minimisation
from tunelab.search.space import SearchSpace

__all__ = ["SAMPLERS", "AdditiveSampler", "make_sampler", "stored_hv_reference"]

SAMPLERS = ("additive", "tpe", "nsga2", "gp", "random")
HV_REFERENCE_ATTR = (
    "tunelab_hv_reference"  # the study's hypervolume reference point, once its warm starts ran
)
Cheap = Mapping[int, Callable[[dict[str, str]], float]]


def stored_hv_reference(study: optuna.Study, n_objectives: int) -> list[float] | None:
    """The study's stored hypervolume reference point, or None when there is none yet or the stored value is not
    `n_objectives` finite numbers (a corrupt value is then computed again from the warm starts)."""
    value = study.user_attrs.get(HV_REFERENCE_ATTR)
    if not isinstance(value, list) or len(value) != n_objectives:
        return None
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    return [float(v) for v in value] if numbers else None


def make_sampler(name: str, seed: int, space: SearchSpace, cheap: Cheap | None = None) -> BaseSampler:
    """A seeded sampler by name; `cheap` gives objectives computable without an accuracy run (by index)."""
    if name == "tpe":
        return optuna.samplers.TPESampler(
            seed=seed, multivariate=True, n_startup_trials=10, constant_liar=True
        )
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=20)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "additive":
        return AdditiveSampler(space.params, cheap or {}, seed=seed)
    raise ConfigError(f"unknown sampler {name!r} (expected one of {', '.join(SAMPLERS)})")


class _Encoder:
    """One-hot features of a parameter assignment: per parameter, plus per knob shared by all groups."""

    def __init__(self, params: Mapping[str, Sequence[str]]) -> None:
        self.params = {name: list(choices) for name, choices in params.items()}
        self.offsets: dict[str, int] = {}
        shared: dict[str, int] = {}
        offset = 0
        for name, choices in self.params.items():
            self.offsets[name] = offset
            offset += len(choices)
        self.n_own = offset
        for name, choices in self.params.items():
            knob = name.split(".", 1)[-1]
            if knob not in shared:
                shared[knob] = offset
                offset += len(choices)
        self.shared = shared
        self.size = offset

    def index(self, params: Mapping[str, str]) -> list[int]:
        """Positions of the assignment's choices (own features only)."""
        return [self.offsets[n] + self.params[n].index(params[n]) for n in self.params]

    def encode(self, params: Mapping[str, str]) -> np.ndarray:
        x = np.zeros(self.size)
        for name, choices in self.params.items():
            i = choices.index(params[name])
            x[self.offsets[name] + i] = 1.0
            x[self.shared[name.split(".", 1)[-1]] + i] += 1.0
        return x


class _AdditiveTable:
    """An exactly additive cheap objective: f(x) = g(base + Σ delta[param, choice]) with g identity or 1/x."""

    def __init__(self, fn: Callable[[dict[str, str]], float], encoder: _Encoder, rng: np.random.Generator):
        self.fn, self.encoder = fn, encoder
        base = {n: c[0] for n, c in encoder.params.items()}
        f0 = fn(base)
        deltas = {}
        for name, choices in encoder.params.items():
            for c in choices[1:]:
                deltas[(name, c)] = fn({**base, name: c})
        self.exact = False
        for transform in (lambda v: v, lambda v: 1.0 / v if v else np.inf):
            t0 = transform(f0)
            table = np.zeros(encoder.n_own)
            for (name, c), value in deltas.items():
                table[encoder.offsets[name] + encoder.params[name].index(c)] = transform(value) - t0
            probes = [{n: ch[rng.integers(len(ch))] for n, ch in encoder.params.items()} for _ in range(8)]
            if all(
                np.isclose(transform(fn(p)), t0 + table[encoder.index(p)].sum(), rtol=1e-9, atol=1e-12)
                for p in probes
            ):
                self.t0, self.table, self.transform, self.exact = t0, table, transform, True
                break

    def __call__(self, params: Mapping[str, str]) -> float:
        if not self.exact:
            return self.fn(dict(params))
        t = self.t0 + self.table[self.encoder.index(params)].sum()
        return float(self.transform(t))  # both transforms are their own inverse


class AdditiveSampler(BaseSampler):
    """Thompson-sampled hypervolume improvement under an additive Bayesian surrogate (module docstring)."""

    def __init__(
        self,
        params: Mapping[str, Sequence[str]],
        cheap: Cheap,
        seed: int | None = None,
        n_startup_trials: int = 8,
        n_candidates: int = 1500,
        prior_precision: float = 1.0,
    ) -> None:
        self.encoder = _Encoder(params)
        self.cheap_fns = dict(cheap)
        self.rng = np.random.default_rng(seed)
        self.random = RandomSampler(seed=seed)
        self.n_startup_trials = n_startup_trials
        self.n_candidates = n_candidates
        self.prior_precision = prior_precision
        self._tables: dict[int, _AdditiveTable] | None = None

    # -- Optuna's sampler interface
    def infer_relative_search_space(
        self, study: optuna.Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return {name: CategoricalDistribution(choices) for name, choices in self.encoder.params.items()}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        observed = [
            t
            for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
            if t.values is not None and all(n in t.params for n in self.encoder.params)
        ]
        if len(observed) < self.n_startup_trials or not search_space:
            return {}
        return self._propose(study, observed)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        return self.random.sample_independent(study, trial, param_name, param_distribution)

    # -- the proposal
    def _cheap(self) -> dict[int, _AdditiveTable]:
        if self._tables is None:
            self._tables = {i: _AdditiveTable(fn, self.encoder, self.rng) for i, fn in self.cheap_fns.items()}
        return self._tables

    def _propose(self, study: optuna.Study, observed: list[FrozenTrial]) -> dict[str, str]:
        maximise = [d == optuna.study.StudyDirection.MAXIMIZE for d in study.directions]
        n_obj = len(maximise)
        feasible = [t for t in observed if all(v <= 0 for v in t.constraints.values())]
        if not feasible:
            return {}
        values = np.array([t.values for t in feasible], dtype=np.float64)
        X = np.array([self.encoder.encode(t.params) for t in feasible])
        cheap = self._cheap()
        weights = {j: self._thompson(X, values[:, j]) for j in range(n_obj) if j not in cheap}

        front_idx = nondominated(values.tolist(), maximise)
        pending = study.get_trials(deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING))
        seen = {
            tuple(t.params[n] for n in self.encoder.params)
            for t in (*observed, *pending)
            if all(n in t.params for n in self.encoder.params)  # other workers' trials are not proposed again
        }
        candidates = self._candidates([feasible[i].params for i in front_idx], seen)
        if not candidates:
            return {}
        Xc = np.array([self.encoder.encode(c) for c in candidates])
        predicted = np.zeros((len(candidates), n_obj))
        for j in range(n_obj):
            if j in cheap:
                predicted[:, j] = [cheap[j](c) for c in candidates]
            else:
                w, b = weights[j]
                predicted[:, j] = Xc @ w + b
        reference = stored_hv_reference(study, n_obj) or self._reference(values, maximise)
        front_points = values[front_idx]
        base_volume = hypervolume(front_points.tolist(), maximise, reference)
        # Only candidates the front does not already dominate (and that beat the reference) can gain volume.
        p_min, f_min = to_minimisation(predicted, maximise), to_minimisation(front_points, maximise)
        r_min = to_minimisation([reference], maximise)[0]
        covered = np.any(np.all(f_min[None, :, :] <= p_min[:, None, :], axis=2), axis=1)
        gains = np.zeros(len(candidates))
        for i in np.flatnonzero(~covered & np.all(p_min < r_min, axis=1)):
            gains[i] = (
                hypervolume([*front_points.tolist(), predicted[i].tolist()], maximise, reference)
                - base_volume
            )
        if gains.max() > 0:
            return candidates[int(gains.argmax())]
        # Nothing improves the front: take the candidate nearest to it (smallest additive epsilon to non-dominance).
        scale = np.ptp(values, axis=0) + 1e-12
        p = to_minimisation(predicted, maximise) / scale
        f = to_minimisation(front_points, maximise) / scale
        epsilon = np.min(np.max(p[:, None, :] - f[None, :, :], axis=2), axis=1)
        return candidates[int(epsilon.argmin())]

    def _thompson(self, X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
        """One draw of (weights, intercept) from a Bayesian ridge posterior of y on X."""
        mean = y.mean()
        yc = y - mean
        precision = X.T @ X + self.prior_precision * np.eye(X.shape[1])
        cov = np.linalg.inv(precision)
        w_mean = cov @ X.T @ yc
        residual = yc - X @ w_mean
        dof = max(len(y) - 1, 1)
        noise = max(float(residual @ residual) / dof, 1e-4 * float(yc @ yc) / dof, 1e-10)
        w = self.rng.multivariate_normal(w_mean, noise * (cov + cov.T) / 2, method="cholesky")
        return w, mean

    def _candidates(self, front: list[dict[str, str]], seen: set[tuple]) -> list[dict[str, str]]:
        names = list(self.encoder.params)
        out, keys = [], set()
        n_mutants = self.n_candidates * 2 // 3
        for k in range(self.n_candidates):
            if front and k < n_mutants:
                candidate = dict(front[self.rng.integers(len(front))])
                for _ in range(self.rng.geometric(0.5)):  # 1, 2, 3, ... flips (mean 2)
                    name = names[self.rng.integers(len(names))]
                    choices = self.encoder.params[name]
                    candidate[name] = choices[self.rng.integers(len(choices))]
            else:
                candidate = {n: c[self.rng.integers(len(c))] for n, c in self.encoder.params.items()}
            key = tuple(candidate[n] for n in names)
            if key in seen or key in keys:
                continue
            keys.add(key)
            out.append(candidate)
        return out

    @staticmethod
    def _reference(values: np.ndarray, maximise: Sequence[bool]) -> list[float]:
        worst = np.where(maximise, values.min(axis=0), values.max(axis=0))
        span = np.ptp(values, axis=0) + 1e-9
        return list(np.where(maximise, worst - 0.1 * span, worst + 0.1 * span))
