"""Optuna studies over per-decoder configs: create, run (resumable), and read back.

A study's settings (`StudySpec`) live in the Optuna study's user attributes, so `tunelab study run NAME` needs
only the name and the storage URL. Every trial records its metrics, config key, complete decoder_config and a
description as user attributes (optuna-dashboard shows them) and its constraints through `Trial.set_constraint`.
Scores go through the evaluation cache (`ResultStore`): a config scored before by the same evaluator, in any
study, costs one database read. After every trial the study's front and hypervolume tables are refreshed.

Warm starts (tt-transformers' presets and `--seed-config` files) are enqueued with their exact configs before the
sampler proposes anything; a warm start whose trial was interrupted is enqueued again on the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluator import EvaluationSettings, Evaluator, Metrics, config_key
from tunelab.interop import to_decoder_config
from tunelab.interop.decoder_json import parse_decoder_config
from tunelab.model_presets import PRESETS, model_preset
from tunelab.precision import ModelPrecision
from tunelab.presets import hard_defaults
from tunelab.search.objectives import Constraints, Objective, objectives
from tunelab.search.pareto import hypervolume, nondominated
from tunelab.search.samplers import HV_REFERENCE_ATTR, make_sampler
from tunelab.search.space import SearchSpace, check_granularity
from tunelab.search.storage import ResultStore, _safe

__all__ = [
    "DEFAULT_SEEDS",
    "FrontMember",
    "StudyRunner",
    "StudySpec",
    "TrialRecord",
    "create_study",
    "default_storage",
    "delete_study",
    "front",
    "list_studies",
    "load_spec",
    "trial_records",
]

SPEC_ATTR = "tunelab"
DEFAULT_SEEDS = ("defaults", "performance", "accuracy")
optuna.logging.set_verbosity(optuna.logging.WARNING)


def default_storage(name: str, directory: str | Path = "studies") -> str:
    """One SQLite file per study under `studies/`."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path / name}.db"


@dataclass(frozen=True)
class StudySpec:
    """Everything a study needs to run again: model, scoring, space, sampler, objectives, constraints, seeds."""

    name: str
    evaluation: EvaluationSettings = field(default_factory=EvaluationSettings)
    space: dict[str, Any] = field(default_factory=lambda: {"granularity": "blocks:4"})
    base: str = "defaults"  # the preset unsearched groups come from
    sampler: str = "additive"
    seed: int = 0
    objectives: tuple[str, ...] = ("top1", "tok_s_u")
    min_top1: float | None = None
    max_dram_gb: float | None = None
    seeds: tuple[str, ...] = DEFAULT_SEEDS
    seed_configs: tuple[tuple[str, dict], ...] = ()  # (name, decoder_config JSON) of --seed-config files

    def __post_init__(self) -> None:
        objectives(self.objectives)
        unknown = [s for s in (*self.seeds, self.base) if s not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown preset {unknown[0]!r} (expected one of {', '.join(PRESETS)})")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise ConfigError(f"--min-top1 is a fraction in 0..1, got {self.min_top1}")

    @property
    def constraints(self) -> Constraints:
        return Constraints(self.min_top1, self.max_dram_gb)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["evaluation"] = self.evaluation.to_dict()
        data["seed_configs"] = [list(pair) for pair in self.seed_configs]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> StudySpec:
        data = dict(data)
        data["evaluation"] = EvaluationSettings.from_dict(data.get("evaluation", {}))
        data["objectives"] = tuple(data.get("objectives", ("top1", "tok_s_u")))
        data["seeds"] = tuple(data.get("seeds", DEFAULT_SEEDS))
        data["seed_configs"] = tuple((n, c) for n, c in data.get("seed_configs", ()))
        return cls(**data)

    def space_for(self, model_name: str, n_layers: int) -> SearchSpace:
        return SearchSpace.from_spec(model_preset(self.base, model_name, n_layers), self.space)

    def warm_starts(self, model_name: str, n_layers: int) -> list[tuple[str, ModelPrecision]]:
        """The first trials: the presets named in `seeds`, then the seed configs, without duplicates."""
        starts = [(name, model_preset(name, model_name, n_layers)) for name in self.seeds]
        for name, data in self.seed_configs:
            parsed = parse_decoder_config(data, lambda _name: hard_defaults(), source=name)
            for finding in parsed.findings(n_layers):
                if finding.level == "error":
                    raise ConfigError(f"{name}: {finding.message}")
            starts.append((name, parsed.fit(n_layers, hard_defaults())))
        seen: set[str] = set()
        unique = []
        for name, precision in starts:
            key = config_key(precision)
            if key not in seen:
                seen.add(key)
                unique.append((name, precision))
        return unique


def _storage(url: str) -> optuna.storages.BaseStorage:
    try:
        kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
        return optuna.storages.RDBStorage(url, engine_kwargs=kwargs)
    except Exception as exc:  # optuna wraps driver errors in several types
        raise TunelabError(
            f"cannot open the study database {_safe(url)}: {str(exc).splitlines()[0]}"
        ) from None


def create_study(spec: StudySpec, storage: str) -> optuna.Study:
    """A new study (an existing name is an error: run resumes it, delete removes it)."""
    rdb = _storage(storage)
    if spec.name in {s.study_name for s in optuna.get_all_study_summaries(rdb)}:
        raise TunelabError(
            f"study {spec.name!r} already exists in {_safe(storage)}: `tunelab study run {spec.name}` resumes it, "
            f"`tunelab study delete {spec.name}` removes it"
        )
    check_granularity(spec.space.get("granularity", "blocks:4"))
    SearchSpace.from_spec(
        ModelPrecision.uniform(hard_defaults(), 1), {**spec.space, "granularity": "uniform"}
    )
    directions = [o.direction for o in objectives(spec.objectives)]
    study = optuna.create_study(storage=rdb, study_name=spec.name, directions=directions)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    ResultStore(storage)
    return study


def load_spec(name: str, storage: str) -> tuple[optuna.Study, StudySpec]:
    rdb = _storage(storage)
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(rdb))
        known = f" (studies there: {', '.join(names)})" if names else " (it has no studies)"
        raise TunelabError(f"no study {name!r} in {_safe(storage)}{known}") from None
    data = study.user_attrs.get(SPEC_ATTR)
    if data is None:
        raise TunelabError(f"study {name!r} in {_safe(storage)} was not created by tunelab")
    return study, StudySpec.from_dict(data)


def list_studies(storage: str) -> list[dict[str, Any]]:
    rdb = _storage(storage)
    out = []
    for summary in optuna.get_all_study_summaries(rdb):
        spec = summary.user_attrs.get(SPEC_ATTR, {})
        out.append(
            {
                "name": summary.study_name,
                "trials": summary.n_trials,
                "model": spec.get("evaluation", {}).get("model"),
                "mesh_device": spec.get("evaluation", {}).get("mesh_device"),
                "sampler": spec.get("sampler"),
                "space": spec.get("space", {}).get("granularity"),
                "started": summary.datetime_start.isoformat(timespec="seconds")
                if summary.datetime_start
                else None,
            }
        )
    return out


def delete_study(name: str, storage: str) -> None:
    load_spec(name, storage)
    optuna.delete_study(study_name=name, storage=_storage(storage))
    ResultStore(storage).delete_study(name)


@dataclass(frozen=True)
class TrialRecord:
    """A finished trial as tunelab sees it: its config, search-time metrics and (if any) verified metrics."""

    number: int
    params: dict[str, str]
    metrics: Metrics
    config: dict[str, Any]
    preset: str | None
    description: str
    verified: Metrics | None = None
    flagged: bool = False

    @property
    def best(self) -> Metrics:
        """The most careful metrics known: verified when verified."""
        return self.verified or self.metrics


def trial_records(study: optuna.Study, store: ResultStore | None = None) -> list[TrialRecord]:
    """Every complete trial with tunelab metrics, in trial order."""
    verifications = store.verifications(study.study_name) if store is not None else {}
    records = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        if "metrics" not in t.user_attrs:
            continue
        verified, flagged = verifications.get(t.number, (None, False))
        records.append(
            TrialRecord(
                number=t.number,
                params=dict(t.params),
                metrics=Metrics.from_dict(t.user_attrs["metrics"]),
                config=t.user_attrs.get("config", {}),
                preset=t.user_attrs.get("preset"),
                description=t.user_attrs.get("description", ""),
                verified=verified,
                flagged=flagged,
            )
        )
    return records


@dataclass(frozen=True)
class FrontMember:
    record: TrialRecord
    values: dict[str, float]

    @property
    def verified(self) -> bool:
        return self.record.verified is not None


def front(records: Sequence[TrialRecord], spec: StudySpec) -> list[FrontMember]:
    """The feasible non-dominated trials, on their most careful metrics (verified where verified)."""
    objs = objectives(spec.objectives)
    feasible = [r for r in records if spec.constraints.satisfied(r.best)]
    points = [[o.value(r.best) for o in objs] for r in feasible]
    keep = nondominated(points, [o.maximise for o in objs]) if points else []
    members = [FrontMember(feasible[i], {o.name: points[i][j] for j, o in enumerate(objs)}) for i in keep]
    return sorted(members, key=lambda m: [m.values[o.name] * (-1 if o.maximise else 1) for o in objs[::-1]])


def hv_reference(records: Sequence[TrialRecord], objs: Sequence[Objective]) -> list[float] | None:
    """The hypervolume reference point: the warm starts' nadir (each objective's worst value among the presets
    and seed configs), so the hypervolume measures what the search finds beyond them. Without warm starts, the
    nadir of the first 10 trials."""
    base = [r for r in records if r.preset is not None and r.metrics.feasible] or [
        r for r in records[:10] if r.metrics.feasible
    ]
    if not base:
        return None
    return [(min if o.maximise else max)(o.value(r.metrics) for r in base) for o in objs]


class StudyRunner:
    """Runs a study's trials with one evaluator; refreshes the front and hypervolume tables after each."""

    def __init__(
        self,
        name: str,
        storage: str,
        evaluator: Evaluator | None = None,
        evaluator_factory: Callable[[EvaluationSettings], Evaluator] | None = None,
    ) -> None:
        self.study, self.spec = load_spec(name, storage)
        self.storage = storage
        self.store = ResultStore(storage)
        self._evaluator = evaluator
        self._factory = evaluator_factory
        self.objectives = objectives(self.spec.objectives)
        self.evaluation_seconds = 0.0  # inside the evaluator, for configs not in the cache
        self.run_seconds = 0.0  # inside `run`: evaluation plus sampling, storage and bookkeeping
        self._space: SearchSpace | None = None
        self._warm_starts: list[tuple[str, ModelPrecision]] | None = None

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            if self._factory is None:
                raise TunelabError("this study runner has no evaluator")
            self._evaluator = self._factory(self.spec.evaluation)
        return self._evaluator

    @property
    def model(self) -> Any:
        model = self.evaluator.model
        if model is None:
            raise TunelabError("the evaluator does not say which model it scores")
        return model

    @property
    def space(self) -> SearchSpace:
        """The study's search space for its model, without dominated choices unless the spec says `prune: exact`."""
        if self._space is None:
            space = self.spec.space_for(self.model.name, self.model.n_layers)
            if self.spec.space.get("prune", "dominated") == "dominated":
                costs = _cheap_costs(self.spec, self.evaluator)
                if costs is not None:
                    space = space.without_dominated(lambda params: costs(space.decode(params)))
            self._space = space
        return self._space

    def complete_trials(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))

    @property
    def warm_starts(self) -> list[tuple[str, ModelPrecision]]:
        """The study's warm starts for its model (computed once)."""
        if self._warm_starts is None:
            self._warm_starts = self.spec.warm_starts(self.model.name, self.model.n_layers)
        return self._warm_starts

    def enqueue_warm_starts(self) -> int:
        """Enqueue each warm start that has no complete or waiting trial yet; returns how many were enqueued."""
        space = self.space
        present = {
            t.user_attrs.get("seed_key")
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.WAITING))
        }
        enqueued = 0
        for name, precision in self.warm_starts:
            key = config_key(precision)
            if key in present:
                continue
            self.study.enqueue_trial(
                space.encode(precision),
                user_attrs={"preset": name, "seed_key": key, "seed_config": to_decoder_config(precision)},
                skip_if_exists=False,
            )
            enqueued += 1
        return enqueued

    def score(self, precision: ModelPrecision) -> tuple[Metrics, bool]:
        """(metrics, cache hit) of a config through the evaluation cache."""
        return self.score_with(self.evaluator, precision)

    def score_with(self, evaluator: Evaluator, precision: ModelPrecision) -> tuple[Metrics, bool]:
        """(metrics, cache hit) of a config scored by `evaluator`, through the evaluation cache."""
        identity = evaluator.identity
        fingerprint = str(identity.get("model_fingerprint", identity.get("model", "")))
        reference = str(identity.get("reference", ""))
        key = config_key(precision)
        cached = self.store.cached(fingerprint, reference, key, evaluator.key)
        if cached is not None:
            return cached, True
        start = time.perf_counter()
        metrics = evaluator.score(precision)
        self.evaluation_seconds += time.perf_counter() - start
        self.store.remember(fingerprint, reference, metrics)
        return metrics, False

    def objective(self, trial: optuna.Trial) -> tuple[float, ...]:
        space = self.space
        params = {
            name: trial.suggest_categorical(name, list(choices)) for name, choices in space.params.items()
        }
        seeded = trial.user_attrs.get("seed_config")
        if seeded is not None:
            parsed = parse_decoder_config(
                seeded, lambda _name: hard_defaults(), source=f"trial {trial.number}"
            )
            precision = parsed.precision
        else:
            precision = space.decode(params)
        metrics, hit = self.score(precision)
        trial.set_user_attr("metrics", metrics.to_dict())
        trial.set_user_attr("config_key", metrics.config_key)
        trial.set_user_attr("config", to_decoder_config(precision))
        trial.set_user_attr(
            "description", space.describe(params) if space.contains(precision) else "warm start"
        )
        trial.set_user_attr("cache_hit", hit)
        for name, value in self.spec.constraints.values(metrics).items():
            trial.set_constraint(name, value)
        return tuple(o.value(metrics) for o in self.objectives)

    def refresh(self) -> tuple[list[FrontMember], float | None]:
        """Recompute the study's front table and record the hypervolume after its latest trial."""
        records = trial_records(self.study, self.store)
        members = front(records, self.spec)
        self.store.replace_front(
            self.study.study_name,
            [
                {
                    "trial": m.record.number,
                    "config_key": m.record.metrics.config_key,
                    "values": m.values,
                    "preset": m.record.preset,
                    "verified": m.verified,
                }
                for m in members
            ],
        )
        ref = self.study.user_attrs.get(HV_REFERENCE_ATTR)
        warm = len(self.warm_starts) if self._evaluator else 0
        if ref is None and len(records) >= max(warm, 1):
            ref = hv_reference(records, self.objectives)
            if ref is not None:
                self.study.set_user_attr(HV_REFERENCE_ATTR, ref)
        volume = None
        if ref is not None and records:
            points = [list(m.values.values()) for m in members]
            volume = hypervolume(points, [o.maximise for o in self.objectives], ref) if points else 0.0
            self.store.record_hypervolume(self.study.study_name, records[-1].number, volume)
        return members, volume

    def run(
        self,
        trials: int,
        timeout: float | None = None,
        on_trial: Callable[[FrozenTrial, list[FrontMember], float | None], None] | None = None,
    ) -> int:
        """Run until the study has `trials` complete trials (or `timeout` seconds pass); returns trials run."""
        if trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {trials}")
        remaining = trials - self.complete_trials()
        if remaining <= 0:
            return 0
        self.enqueue_warm_starts()
        cheap = _cheap_objectives(self)
        self.study.sampler = make_sampler(self.spec.sampler, self.spec.seed, self.space, cheap)

        def callback(study: optuna.Study, trial: FrozenTrial) -> None:
            members, volume = self.refresh()
            if on_trial is not None:
                on_trial(trial, members, volume)

        before, start = self.complete_trials(), time.perf_counter()
        try:
            self.study.optimize(
                self.objective, n_trials=remaining, timeout=timeout, callbacks=[callback], catch=()
            )
        finally:
            self.run_seconds += time.perf_counter() - start
        return self.complete_trials() - before


def _cheap_costs(spec: StudySpec, evaluator: Evaluator) -> Callable[[ModelPrecision], list[float]] | None:
    """Costs (lower is better) of a config known without an accuracy run: the study's throughput objectives and
    the DRAM it constrains; None when there are none."""
    names = [o for o in objectives(spec.objectives) if o.name in ("tok_s_u", "ttft_ms")]
    if not names and spec.max_dram_gb is None:
        return None

    def costs(precision: ModelPrecision) -> list[float]:
        m = evaluator.speed(precision)
        values = [-o.value(m) if o.maximise else o.value(m) for o in names]
        if spec.max_dram_gb is not None:
            values.append(m.dram_bytes or 0.0)
        return values

    return costs


def _cheap_objectives(runner: StudyRunner) -> dict[int, Callable[[dict[str, str]], float]]:
    """Objectives known without running accuracy (from the throughput source), by index, for model-based samplers."""
    space = runner.space
    evaluator = runner.evaluator
    cheap = {}
    for i, o in enumerate(runner.objectives):
        if o.name in ("tok_s_u", "ttft_ms"):

            def value(params: dict[str, str], o: Objective = o) -> float:
                return o.value(evaluator.speed(space.decode(params)))

            cheap[i] = value
    return cheap


def performance_speed(records: Iterable[TrialRecord]) -> float | None:
    """tok/s/user of the performance preset's trial, if it ran."""
    for r in records:
        if r.preset == "performance" and r.metrics.tok_s_u is not None:
            return r.metrics.tok_s_u
    return None


def best_at_speed(records: Iterable[TrialRecord], speed: float | None) -> float | None:
    """The best top-1 among trials at least as fast as `speed`."""
    if speed is None:
        return None
    values = [
        r.metrics.top1 for r in records if r.metrics.top1 is not None and (r.metrics.tok_s_u or 0) >= speed
    ]
    return max(values) if values else None
