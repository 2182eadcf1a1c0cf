"""Sensitivity profiles: what lowering one (decoder, tensor group) at a time costs, and a search strategy built on it.

From a high-precision baseline (every searched group at its highest-precision choice: BF16 at the highest offered
fidelity, KV cache BF16), `run_profile` scores the baseline with exactly one (decoder, group) lowered to each
level (default: matmuls BFP8/HIFI2 and BFP4/LOFI, KV cache BFP8 and BFP4) and stores each row in the study
database (`tunelab_sensitivity`), so an interrupted profile resumes where it stopped.

`AdditiveModel` predicts any per-decoder config's KL increase and top-1 drop as the sum of its (decoder, group,
level) rows. `ladder` turns it into configs: for n throughput budgets, the config with the least predicted KL
whose time per token fits (a multiple-choice knapsack, solved by dynamic programming over discretised time).
`enqueue_ladder` queues them as study trials; `rank_correlation` says how well the prediction ranks measured KL
(additivity is an assumption, so the trials stay the ground truth).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluator import Metrics, config_key, identity_key
from tunelab.interop import to_decoder_config
from tunelab.precision import ModelPrecision, Precision
from tunelab.search.space import Knob, SearchSpace
from tunelab.search.storage import ResultStore

if TYPE_CHECKING:
    from tunelab.search.study import StudyRunner, TrialRecord

__all__ = [
    "MAX_LADDER",
    "PROFILE_ATTR",
    "AdditiveModel",
    "Profile",
    "ProfileRow",
    "Rung",
    "baseline_params",
    "default_levels",
    "enqueue_ladder",
    "ladder",
    "ladder_rungs",
    "profile_key",
    "rank_correlation",
    "run_profile",
]

PROFILE_ATTR = "tunelab_sensitivity_profile"  # the study user attribute naming its profile
MAX_LADDER = 1000  # configs one ladder enqueues: each is a trial to run
# The default lowered levels per format: tt-transformers' own fidelity for bfp8 weights, the cheapest for bfp4.
_LEVEL_FIDELITY = {Precision.BFP8: "HIFI2", Precision.BFP4: "LOFI"}
_FORMAT_RANK = {Precision.BFP4: 0, Precision.BFP8: 1, Precision.BF16: 2}


def _rank(choice: tuple[Precision, Any]) -> tuple:
    fmt, fidelity = choice
    kernel = None if fidelity is None else fidelity.kernel
    return (_FORMAT_RANK[fmt], kernel.phases if kernel else 0, kernel.fp32_dest_acc_en if kernel else False)


def _highest(knob: Knob) -> str:
    return knob.label(max(knob.choices, key=_rank))


def _per_decoder(space: SearchSpace) -> None:
    if any(len(layers) != 1 for layers in space.groups):
        raise ConfigError(f"a sensitivity profile needs a per-decoder space, not {space.granularity!r}")


def baseline_params(space: SearchSpace) -> dict[str, str]:
    """Every parameter at its knob's highest-precision choice (BF16 at the highest offered fidelity)."""
    return {space.param_name(g, k): _highest(k) for g in range(len(space.groups)) for k in space.knobs}


def default_levels(space: SearchSpace) -> dict[str, list[str]]:
    """Per knob (tensor name), its BFP8 and BFP4 choices: at HIFI2 and LOFI for matmuls where offered (else the
    format's first offered fidelity); formats the space does not offer are left out."""
    levels: dict[str, list[str]] = {}
    for knob in space.knobs:
        chosen = []
        for fmt in (Precision.BFP8, Precision.BFP4):
            labels = [knob.label(c) for c in knob.choices if c[0] is fmt]
            if labels:
                preferred = f"{fmt.name}/{_LEVEL_FIDELITY[fmt]}"
                chosen.append(preferred if preferred in labels else labels[0])
        levels[knob.tensor.name] = chosen
    return levels


def profile_key(evaluator_key: str, baseline_config_key: str, levels: Mapping[str, Sequence[str]]) -> str:
    """A profile's identity: who scored it, from which baseline, lowering to which levels."""
    return identity_key(
        {
            "sensitivity": evaluator_key,
            "baseline": baseline_config_key,
            "levels": {t: list(v) for t, v in sorted(levels.items())},
        }
    )


def _increase(metrics: Metrics, baseline: Metrics, name: str) -> float:
    """metrics - baseline for kl, baseline - metrics for top1 (both "how much worse"); inf when unknown."""
    value, base = getattr(metrics, name), getattr(baseline, name)
    if not metrics.feasible or value is None or base is None:
        return math.inf
    return value - base if name == "kl" else base - value


@dataclass(frozen=True)
class ProfileRow:
    """One (decoder, group) lowered to one level, everything else at the baseline."""

    layer: int
    tensor: str
    lowered: str
    metrics: Metrics
    baseline: Metrics

    @property
    def kl_increase(self) -> float:
        return _increase(self.metrics, self.baseline, "kl")

    @property
    def top1_drop(self) -> float:
        return _increase(self.metrics, self.baseline, "top1")


@dataclass(frozen=True)
class Profile:
    """A stored profile's rows, in the order they were measured."""

    key: str
    rows: tuple[ProfileRow, ...]

    @classmethod
    def load(cls, store: ResultStore, key: str) -> Profile:
        return cls(key, tuple(ProfileRow(**row) for row in store.sensitivity(key)))

    @property
    def baseline(self) -> Metrics | None:
        return self.rows[0].baseline if self.rows else None

    def most_sensitive(self, n: int = 10) -> list[ProfileRow]:
        """The n rows with the largest KL increase (ties: larger top-1 drop first)."""
        return sorted(self.rows, key=lambda r: (-r.kl_increase, -r.top1_drop, r.layer))[:n]

    def means(self) -> dict[tuple[str, str], tuple[float, float]]:
        """Per (tensor, level): the mean KL increase and mean top-1 drop over decoders."""
        groups: dict[tuple[str, str], list[ProfileRow]] = {}
        for row in self.rows:
            groups.setdefault((row.tensor, row.lowered), []).append(row)
        return {
            key: (
                float(np.mean([r.kl_increase for r in rows])),
                float(np.mean([r.top1_drop for r in rows])),
            )
            for key, rows in groups.items()
        }

    def heatmap(self, metric: str = "kl") -> tuple[list[int], list[str], np.ndarray]:
        """(decoders, "TENSOR LEVEL" columns, values [decoder, column]) of the KL increase ("kl") or top-1
        drop ("top1"); NaN where a row is missing."""
        if metric not in ("kl", "top1"):
            raise ConfigError(f"unknown sensitivity metric {metric!r} (expected kl or top1)")
        layers = sorted({r.layer for r in self.rows})
        columns = list(dict.fromkeys(f"{r.tensor} {r.lowered}" for r in self.rows))
        values = np.full((len(layers), len(columns)), np.nan)
        for r in self.rows:
            value = r.kl_increase if metric == "kl" else r.top1_drop
            values[layers.index(r.layer), columns.index(f"{r.tensor} {r.lowered}")] = value
        return layers, columns, values


def run_profile(
    score: Callable[[ModelPrecision], Metrics],
    space: SearchSpace,
    baseline_params: Mapping[str, str],
    levels: Mapping[str, Sequence[str]],
    store: ResultStore,
    profile: str,
    on_step: Callable[[int, int, ProfileRow], None] | None = None,
) -> list[ProfileRow]:
    """Score the baseline with one (decoder, knob) lowered at a time to each of its `levels` and store each row
    under `profile`; rows already stored are skipped, so an interrupted profile resumes. Returns every row.

    Decoders go from the first to the last: a config lowering decoder i reuses the hidden states that entered
    decoder i under the baseline (the evaluator keeps them), and only the first config of decoder i rebuilds
    them from decoder i-1's, which that decoder's configs kept warm. (Going from the last decoder to the first
    reuses as much but needs the baseline's states of early decoders to outlive every later config's, which a
    bounded state cache does not promise.) `on_step(done, total, row)` follows each new row.
    """
    _per_decoder(space)
    knobs = {k.tensor.name: k for k in space.knobs}
    unknown = [t for t in levels if t not in knobs]
    if unknown:
        raise ConfigError(f"no knob {unknown[0]} in the space (knobs: {', '.join(knobs)})")
    for tensor, labels in levels.items():
        for label in labels:
            knobs[tensor].parse(label)
    stored = [ProfileRow(**row) for row in store.sensitivity(profile)]
    done = {(r.layer, r.tensor, r.lowered) for r in stored}
    plan = [
        (layer, knob, label)
        for layer in range(len(space.groups))
        for knob in space.knobs
        for label in levels.get(knob.tensor.name, ())
        if label != baseline_params[space.param_name(layer, knob)]
    ]
    todo = [
        (layer, knob, label) for layer, knob, label in plan if (layer, knob.tensor.name, label) not in done
    ]
    if not todo:
        return stored
    baseline = stored[0].baseline if stored else score(space.decode(baseline_params))
    if not baseline.feasible or baseline.kl is None:
        raise TunelabError(
            f"the baseline config cannot be profiled: {baseline.reason or 'its KL is unknown'}"
        )
    rows = list(stored)
    for layer, knob, label in todo:
        params = {**baseline_params, space.param_name(layer, knob): label}
        metrics = score(space.decode(params))
        row = ProfileRow(layer, knob.tensor.name, label, metrics, baseline)
        store.record_sensitivity(profile, layer, row.tensor, label, metrics, baseline)
        rows.append(row)
        if on_step is not None:
            on_step(len(rows), len(plan), row)
    return rows


@dataclass(frozen=True)
class AdditiveModel:
    """Predicted KL increase and top-1 drop of a per-decoder config: the sum of its profiled single changes.

    A choice the profile did not measure counts as the profiled level of the same format (its fidelity is
    ignored), a choice in the baseline's format as no change; a format with neither is an error.
    """

    space: SearchSpace  # per-decoder
    baseline: dict[str, str]  # tensor -> baseline label
    kl: dict[tuple[int, str, str], float]
    top1: dict[tuple[int, str, str], float]
    levels: dict[str, list[str]]  # per tensor, the levels the profile measured (in the order measured)

    @classmethod
    def from_rows(cls, rows: Iterable[ProfileRow], space: SearchSpace) -> AdditiveModel:
        _per_decoder(space)
        rows = list(rows)
        if not rows:
            raise TunelabError("the sensitivity profile has no rows")
        kl = {(r.layer, r.tensor, r.lowered): r.kl_increase for r in rows}
        top1 = {(r.layer, r.tensor, r.lowered): r.top1_drop for r in rows}
        levels: dict[str, list[str]] = {}
        for r in rows:
            if r.lowered not in levels.setdefault(r.tensor, []):
                levels[r.tensor].append(r.lowered)
        return cls(space, {k.tensor.name: _highest(k) for k in space.knobs}, kl, top1, levels)

    def _key(self, layer: int, knob: Knob, label: str) -> tuple[int, str, str] | None:
        tensor = knob.tensor.name
        if label == self.baseline[tensor]:
            return None
        if (layer, tensor, label) in self.kl:
            return (layer, tensor, label)
        fmt = knob.parse(label)[0]
        for level in self.levels.get(tensor, ()):
            if knob.parse(level)[0] is fmt and (layer, tensor, level) in self.kl:
                return (layer, tensor, level)
        if fmt is knob.parse(self.baseline[tensor])[0]:
            return None
        raise ConfigError(f"the sensitivity profile has no {fmt.name} row for decoder {layer} {tensor}")

    def predict(self, params: Mapping[str, str]) -> tuple[float, float]:
        """(KL increase, top-1 drop) over the baseline of a per-decoder parameter assignment."""
        kl = top1 = 0.0
        for layer in range(len(self.space.groups)):
            for knob in self.space.knobs:
                key = self._key(layer, knob, params[self.space.param_name(layer, knob)])
                if key is not None:
                    kl += self.kl[key]
                    top1 += self.top1[key]
        return kl, top1

    def predict_config(self, precision: ModelPrecision) -> tuple[float, float]:
        """The prediction for a config, read through the space's nearest choices."""
        return self.predict(self.space.encode(precision))


@dataclass(frozen=True)
class Rung:
    """One ladder config: the least predicted KL among configs whose time per token meets `budget`."""

    precision: ModelPrecision
    params: dict[str, str]
    budget: float  # tok/s/user it had to reach (under the additive time model)
    tok_s_u: float  # its speed as `speed` reports it
    kl_increase: float  # predicted
    top1_drop: float  # predicted


def ladder_rungs(
    model: AdditiveModel,
    space: SearchSpace,
    speed: Callable[[ModelPrecision], float | None],
    n: int,
    resolution: int = 1 << 15,
) -> list[Rung]:
    """The ladder with its budgets and predictions; see `ladder`."""
    if not 1 <= n <= MAX_LADDER:
        raise ConfigError(f"--ladder needs 1..{MAX_LADDER} configs, got {n}")
    _per_decoder(space)
    base = baseline_params(space)

    def seconds(params: Mapping[str, str]) -> float:
        value = speed(space.decode(params))
        return 1.0 / value if value is not None and value > 0 else math.inf

    t0 = seconds(base)
    if not math.isfinite(t0):
        raise TunelabError("the baseline config has no throughput (tt-transformers would refuse it)")
    # Items are (decoder, knob); options are the baseline (no time, no KL) and each profiled level whose time
    # and predicted KL are known. Each option's time delta is measured once, alone on the baseline.
    items: list[tuple[str, list[str], np.ndarray, np.ndarray, np.ndarray]] = []
    for layer in range(len(space.groups)):
        for knob in space.knobs:
            name = space.param_name(layer, knob)
            labels, saved, kl, top1 = [base[name]], [0.0], [0.0], [0.0]
            for label in model.levels.get(knob.tensor.name, ()):
                key = (layer, knob.tensor.name, label)
                if key not in model.kl or not math.isfinite(model.kl[key]):
                    continue
                t = seconds({**base, name: label})
                if math.isfinite(t):
                    labels.append(label)
                    saved.append(t0 - t)
                    kl.append(model.kl[key])
                    top1.append(model.top1[key] if math.isfinite(model.top1[key]) else 0.0)
            items.append((name, labels, np.array(saved), np.array(kl), np.array(top1)))
    fastest = {**base, **{name: labels[int(np.argmax(s))] for name, labels, s, _, _ in items}}
    s_low, s_base = 1.0 / seconds(fastest), 1.0 / t0
    budgets = np.linspace(s_base, s_low, n) if n > 1 else np.array([(s_base + s_low) / 2])

    # Multiple-choice knapsack, exact on a time grid: f[c] = least KL whose grid saving is >= c. Each option's
    # saving (relative to its item's slowest option) is rounded down and each requirement up, so every answer
    # meets its budget under the additive time model; the grid is `resolution` steps over the whole range.
    floor = np.array([s.min() for _, _, s, _, _ in items])
    span = float(sum(s.max() - s.min() for _, _, s, _, _ in items))
    q = span / resolution if span > 0 else 1.0
    units = [np.floor((s - s.min()) / q + 1e-9).astype(np.int64) for _, _, s, _, _ in items]
    top = int(sum(u.max() for u in units))
    f = np.full(top + 1, np.inf)
    f[0] = 0.0
    index = np.arange(top + 1)
    choice = np.zeros((len(items), top + 1), dtype=np.int16)
    for i, (_, _, _, kl, _) in enumerate(items):
        candidates = np.stack([f[np.maximum(index - u, 0)] + k for u, k in zip(units[i], kl, strict=True)])
        choice[i] = np.argmin(candidates, axis=0)
        f = candidates[choice[i], index]

    rungs: dict[str, Rung] = {}
    for budget in budgets:
        need = t0 - 1.0 / budget - floor.sum()  # saving (beyond every item's slowest option) the budget asks
        c = math.ceil(need / q - 1e-9) if need > 0 else 0
        if c > top:  # only every item's fastest option is certain to meet the fastest budget
            picks = [int(np.argmax(s)) for _, _, s, _, _ in items]
        else:
            picks = [0] * len(items)
            for i in range(len(items) - 1, -1, -1):
                picks[i] = int(choice[i, c])
                c = max(c - int(units[i][picks[i]]), 0)
        params = {**base, **{items[i][0]: items[i][1][o] for i, o in enumerate(picks)}}
        precision = space.decode(params)
        key = config_key(precision)
        if key in rungs:
            rungs[key] = replace(rungs[key], budget=max(rungs[key].budget, float(budget)))
            continue
        value = speed(precision)
        rungs[key] = Rung(
            precision=precision,
            params=params,
            budget=float(budget),
            tok_s_u=float(value) if value is not None else 0.0,
            kl_increase=float(sum(items[i][3][o] for i, o in enumerate(picks))),
            top1_drop=float(sum(items[i][4][o] for i, o in enumerate(picks))),
        )
    return sorted(rungs.values(), key=lambda r: (r.tok_s_u, -r.kl_increase))


def ladder(
    model: AdditiveModel,
    space: SearchSpace,
    speed: Callable[[ModelPrecision], float | None],
    n: int,
) -> list[ModelPrecision]:
    """Configs for n throughput budgets spread evenly between the all-baseline and the all-lowest configs' speeds:
    per (decoder, knob) the baseline or one profiled level, least total predicted KL with time per token (which
    the throughput model makes additive over those choices; each choice's delta measured once with `speed`, in
    tok/s/user) within the budget. Solved exactly by dynamic programming on a fine time grid. Distinct configs,
    slowest first."""
    return [r.precision for r in ladder_rungs(model, space, speed, n)]


def enqueue_ladder(runner: StudyRunner, configs: Sequence[ModelPrecision], tag: str = "ladder") -> int:
    """Enqueue each config as a trial with its exact decoder_config (the objective scores that, whatever the
    study's granularity), skipping configs a waiting, running or complete trial already has; returns how many
    were enqueued."""
    from optuna.trial import TrialState

    states = (TrialState.COMPLETE, TrialState.WAITING, TrialState.RUNNING)
    present: set[str] = set()
    for t in runner.study.get_trials(deepcopy=False, states=states):
        present.update((t.user_attrs.get("seed_key"), t.user_attrs.get("metrics", {}).get("config_key")))
    space = runner.space
    enqueued = 0
    for i, precision in enumerate(configs):
        key = config_key(precision)
        if key in present:
            continue
        present.add(key)
        runner.study.enqueue_trial(
            space.encode(precision),
            user_attrs={
                "seed_config": to_decoder_config(precision),
                "seed_key": key,
                "ladder": i,
                "ladder_tag": tag,
            },
            skip_if_exists=False,
        )
        enqueued += 1
    return enqueued


def _spearman(x: Sequence[float], y: Sequence[float]) -> float:
    try:
        from scipy.stats import spearmanr
    except ImportError:  # ranks with ties averaged, then Pearson
        import pandas as pd

        rx, ry = pd.Series(x).rank().to_numpy(), pd.Series(y).rank().to_numpy()
        if rx.std() == 0 or ry.std() == 0:
            return math.nan
        return float(np.corrcoef(rx, ry)[0, 1])
    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def rank_correlation(model: AdditiveModel, records: Iterable[TrialRecord]) -> float:
    """Spearman correlation between the predicted and the measured KL of trials with a measured KL (NaN for
    fewer than two, or when either side is constant)."""
    from tunelab.interop.decoder_json import parse_decoder_config
    from tunelab.presets import hard_defaults

    predicted, measured = [], []
    for record in records:
        if record.best.kl is None or not record.config:
            continue
        parsed = parse_decoder_config(
            record.config, lambda _n: hard_defaults(), source=f"trial {record.number}"
        )
        predicted.append(model.predict_config(parsed.precision)[0])
        measured.append(record.best.kl)
    if len(predicted) < 2:
        return math.nan
    return _spearman(predicted, measured)
