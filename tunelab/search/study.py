"""Optuna studies over per-decoder configs: create, run (resumable), and read back.

A study's settings (`StudySpec`) live in the Optuna study's user attributes, so `tunelab study run NAME` needs
only the name and the storage URL. Every trial records its metrics (with the config key), complete decoder_config and a
description as user attributes (optuna-dashboard shows them) and its constraints through `Trial.set_constraint`.
Scores go through the evaluation cache (`ResultStore`): a config scored before by the same evaluator, in any
study, costs one database read. After every trial the study's front and hypervolume tables are refreshed.

Warm starts (tt-transformers' presets and `--seed-config` files) are enqueued with their exact configs before the
sampler proposes anything; a warm start whose trial was interrupted is enqueued again on the next run.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from tunelab.errors import ConfigError, TunelabError
from tunelab.evaluator import EvaluationSettings, Evaluator, Metrics, config_key
from tunelab.files import shown
from tunelab.interop import to_decoder_config
from tunelab.interop.decoder_json import parse_decoder_config
from tunelab.model_presets import PRESETS, model_preset
from tunelab.precision import ModelPrecision
from tunelab.presets import hard_defaults
from tunelab.search.locks import study_lock
from tunelab.search.objectives import Constraints, Objective, objectives
from tunelab.search.pareto import hypervolume, nondominated
from tunelab.search.samplers import HV_REFERENCE_ATTR, make_sampler, stored_hv_reference
from tunelab.search.space import SearchSpace, check_granularity
from tunelab.search.storage import ResultStore, _first_line, _safe, normalise_url

__all__ = [
    "DEFAULT_HEARTBEAT",
    "DEFAULT_SEEDS",
    "FrontMember",
    "StudyRunner",
    "StudySpec",
    "TrialRecord",
    "copy_study",
    "create_study",
    "default_storage",
    "delete_study",
    "front",
    "list_studies",
    "load_spec",
    "open_storage",
    "trial_records",
]

SPEC_ATTR = "tunelab"
STUDY_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SEED_RANGE = 2**32  # NumPy's: Optuna's samplers seed a RandomState
DEFAULT_SEEDS = ("defaults", "performance", "accuracy")
optuna.logging.set_verbosity(optuna.logging.WARNING)


class _ReportedByCaller(logging.Filter):
    """Drops Optuna's two log records of a trial that failed with a `TunelabError` (the error with its traceback,
    then "Trial N failed with value None"): the runner raises the error on to its caller, which reports it (the
    CLI in one line), so the log would only repeat it."""

    def __init__(self) -> None:
        super().__init__()
        self._dropped = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], TunelabError):
            self._dropped.trial = record.getMessage().partition(" failed with ")[0]  # "Trial 4"
            return False
        trial = getattr(self._dropped, "trial", None)
        self._dropped.trial = None
        return trial is None or not record.getMessage().startswith(f"{trial} failed with value ")


for _handler in logging.getLogger("optuna").handlers:
    _handler.addFilter(_ReportedByCaller())


def default_storage(name: str, directory: str | Path = "studies", create: bool = True) -> str:
    """One SQLite file per study under `studies/` (the directory is made when `create`)."""
    path = Path(directory)
    if create:
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
        if not STUDY_NAME.fullmatch(self.name):
            raise ConfigError(
                f"study name {self.name[:80]!r} is not usable: 1-128 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit (it names the study's default database file)"
            )
        objectives(self.objectives)
        unknown = [s for s in (*self.seeds, self.base) if s not in PRESETS]
        if unknown:
            raise ConfigError(f"unknown preset {unknown[0]!r} (expected one of {', '.join(PRESETS)})")
        if self.min_top1 is not None and not 0 <= self.min_top1 <= 1:
            raise ConfigError(f"--min-top1 is a fraction in 0..1, got {self.min_top1}")
        if self.max_dram_gb is not None and not 0 < self.max_dram_gb < math.inf:
            raise ConfigError(f"--max-dram is a positive number of GB, got {self.max_dram_gb}")
        if not 0 <= self.seed < SEED_RANGE:
            raise ConfigError(
                f"--seed must be in 0..{SEED_RANGE - 1} (the samplers' seed range), got {self.seed}"
            )

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
        """The spec a study stores (`to_dict`); stored settings that cannot be a spec are a one-line ConfigError."""
        problem = _spec_problem(data)
        if problem is not None:
            raise ConfigError(problem)
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


def _is_text_list(value: object) -> bool:
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)


def _is_number(value: object) -> bool:
    return value is None or (isinstance(value, int | float) and not isinstance(value, bool))


def _is_seed_configs(value: object) -> bool:
    """A list of [file name, decoder_config object] pairs."""
    pairs = value if isinstance(value, list | tuple) else [None]
    return all(
        isinstance(p, list | tuple) and len(p) == 2 and isinstance(p[0], str) and isinstance(p[1], dict)
        for p in pairs
    )


_SPEC_FIELDS: dict[str, tuple[Callable[[object], bool], str]] = {
    "name": (lambda v: isinstance(v, str), "a string"),
    "evaluation": (
        lambda v: isinstance(v, dict) and {"model", "mesh_device"} <= set(v),
        "an object with a model and a mesh_device",
    ),
    "space": (
        lambda v: isinstance(v, dict) and all(isinstance(x, str) or _is_text_list(x) for x in v.values()),
        "an object of strings and lists of strings",
    ),
    "base": (lambda v: isinstance(v, str), "a string"),
    "sampler": (lambda v: isinstance(v, str), "a string"),
    "seed": (lambda v: type(v) is int, "an integer"),
    "objectives": (_is_text_list, "a list of strings"),
    "min_top1": (_is_number, "a number or null"),
    "max_dram_gb": (_is_number, "a number or null"),
    "seeds": (_is_text_list, "a list of strings"),
    "seed_configs": (
        _is_seed_configs,
        "a list of [file name, decoder_config] pairs",
    ),
}


def _spec_problem(data: object) -> str | None:
    """What makes stored settings unusable as a `StudySpec`: not an object, an unknown or missing key, a value of
    the wrong JSON type (values are checked further when the spec is made), or None."""
    if not isinstance(data, dict):
        return f"expected a JSON object, found {shown(data)}"
    unknown = sorted(set(data) - set(_SPEC_FIELDS))
    if unknown:
        return f"unknown key {shown(unknown[0])}"
    missing = [key for key in ("name", "evaluation") if key not in data]
    if missing:
        return f"{missing[0]} is missing"
    for key, value in data.items():
        check, expected = _SPEC_FIELDS[key]
        if not check(value):
            return f"{key} must be {expected}, found {shown(value)}"
    return None


DEFAULT_HEARTBEAT = (
    15.0  # seconds between a running trial's heartbeats; a trial silent for 4x this is retried
)
MAX_RETRIES = 3  # a trial whose worker died is retried this many times (each retry is a new trial)


def open_storage(url: str, heartbeat: float = DEFAULT_HEARTBEAT) -> optuna.storages.RDBStorage:
    """Optuna's RDB storage for `url` with heartbeats: a trial whose worker stops beating (killed, machine lost)
    is marked failed by the next worker that looks, and re-run with the same parameters."""
    from tunelab.search.storage import engine_options, serialise_sqlite

    url = normalise_url(url)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            rdb = optuna.storages.RDBStorage(
                url,
                engine_kwargs=engine_options(url),
                heartbeat_interval=max(1, round(heartbeat)),
                grace_period=max(2, round(4 * heartbeat)),
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(MAX_RETRIES),
            )
    except Exception as exc:  # optuna wraps driver errors in several types
        raise TunelabError(f"cannot open the study database {_safe(url)}: {_first_line(exc)}") from None
    serialise_sqlite(rdb.engine)
    return rdb


def _storage(storage: str | optuna.storages.RDBStorage) -> optuna.storages.RDBStorage:
    return open_storage(storage) if isinstance(storage, str) else storage


def create_study(spec: StudySpec, storage: str | optuna.storages.RDBStorage) -> optuna.Study:
    """A new study (an existing name is an error: run resumes it, delete removes it). Everything the study needs
    is checked before the database is opened, so a refused study leaves no new database file behind."""
    check_granularity(spec.space.get("granularity", "blocks:4"))
    SearchSpace.from_spec(
        ModelPrecision.uniform(hard_defaults(), 1), {**spec.space, "granularity": "uniform"}
    )
    _check_model(spec)
    _check_corpus(spec.evaluation.corpus)
    rdb = _storage(storage)
    if spec.name in _study_names(rdb):
        raise TunelabError(
            f"study {spec.name!r} already exists in {_safe(rdb.url)}: `tunelab study run {spec.name}` resumes it, "
            f"`tunelab study delete {spec.name}` removes it"
        )
    directions = [o.direction for o in objectives(spec.objectives)]
    study = optuna.create_study(storage=rdb, study_name=spec.name, directions=directions)
    study.set_user_attr(SPEC_ATTR, spec.to_dict())
    ResultStore(rdb.url, engine=rdb.engine)
    return study


def _check_model(spec: StudySpec) -> None:
    """Refuse, before the study exists, what its model cannot run: a missing or unsupported model, more layers
    than it has, windows longer than its context, a space or seed config that does not fit its decoders."""
    from tunelab.models import load_model_config

    settings = spec.evaluation
    config = load_model_config(settings.model, n_layers=settings.layers)
    if settings.window_len > config.max_position_embeddings:
        raise ConfigError(
            f"--window-len {settings.window_len} is beyond {config.name}'s context of "
            f"{config.max_position_embeddings} tokens"
        )
    spec.space_for(config.name, config.n_layers)
    spec.warm_starts(config.name, config.n_layers)


def _check_corpus(corpus: str) -> None:
    """A corpus that cannot be found or read is refused when the study is created, not at its first trial (a hub
    dataset is fetched only when the reference is built)."""
    from tunelab.eval.corpus import iter_documents, resolve_corpus

    _, spec = resolve_corpus(corpus)
    if spec.kind != "datasets":
        for _ in iter_documents(spec):
            pass


def _study_names(rdb: optuna.storages.RDBStorage) -> list[str]:
    return sorted(optuna.get_all_study_names(rdb))


def _tunelab_study(name: str, rdb: optuna.storages.RDBStorage) -> tuple[optuna.Study, object]:
    """A study tunelab created, with its stored settings as stored (not yet checked)."""
    where = f"study {name!r} in {_safe(rdb.url)}"
    try:
        study = optuna.load_study(study_name=name, storage=rdb)
        data = study.user_attrs.get(SPEC_ATTR)
    except KeyError:
        names = _study_names(rdb)
        listed = ", ".join(names[:10]) + (f" and {len(names) - 10} more" if len(names) > 10 else "")
        known = f" (studies there: {listed})" if names else " (it has no studies)"
        raise TunelabError(f"no study {name!r} in {_safe(rdb.url)}{known}") from None
    except ValueError:  # Optuna stores attributes as JSON text
        raise TunelabError(f"{where}: its stored attributes are not JSON (the database is corrupt)") from None
    if data is None:
        raise TunelabError(f"{where} was not created by tunelab")
    return study, data


def load_spec(name: str, storage: str | optuna.storages.RDBStorage) -> tuple[optuna.Study, StudySpec]:
    """The study and its settings; stored settings that are not a usable spec of this study are one line."""
    rdb = _storage(storage)
    study, data = _tunelab_study(name, rdb)
    where = f"study {name!r} in {_safe(rdb.url)}"
    try:
        spec = StudySpec.from_dict(data)  # type: ignore[arg-type]  # checked by from_dict
    except TunelabError as exc:
        raise TunelabError(
            f"{where}: its stored settings (user attribute {SPEC_ATTR!r}) are corrupt: {exc}"
        ) from None
    if spec.name != name:
        raise TunelabError(
            f"{where}: its stored settings are those of study {spec.name!r} (an edited database?)"
        )
    return study, spec


def list_studies(storage: str) -> list[dict[str, Any]]:
    """A row per study; one whose stored settings are corrupt is listed with what can be read of them (`study
    show NAME` says what is wrong)."""
    rdb = _storage(storage)
    try:
        summaries = optuna.get_all_study_summaries(rdb)
    except ValueError:  # Optuna stores attributes as JSON text
        raise TunelabError(
            f"{_safe(rdb.url)}: a study's stored attributes are not JSON (the database is corrupt)"
        ) from None
    out = []
    for summary in summaries:
        spec = _mapping(summary.user_attrs.get(SPEC_ATTR))
        evaluation, space = _mapping(spec.get("evaluation")), _mapping(spec.get("space"))
        out.append(
            {
                "name": summary.study_name,
                "trials": summary.n_trials,
                "model": evaluation.get("model"),
                "mesh_device": evaluation.get("mesh_device"),
                "sampler": spec.get("sampler"),
                "space": space.get("granularity"),
                "started": summary.datetime_start.isoformat(timespec="seconds")
                if summary.datetime_start
                else None,
            }
        )
    return out


def _mapping(value: object) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def delete_study(name: str, storage: str) -> None:
    """Delete a study tunelab created, even one whose stored settings are corrupt."""
    rdb = _storage(storage)
    _tunelab_study(name, rdb)
    optuna.delete_study(study_name=name, storage=rdb)
    ResultStore(rdb.url, engine=rdb.engine).delete_study(name)


def copy_study(name: str, source: str, target: str) -> int:
    """Copy a study with its trials and tunelab's rows into another database (e.g. from SQLite to PostgreSQL
    when more workers join); returns the trials copied. The source is left as it was."""
    rdb = _storage(source)
    study, _ = load_spec(name, rdb)  # before the destination is opened (and maybe created)
    destination = _storage(target)
    if name in _study_names(destination):
        raise TunelabError(f"study {name!r} already exists in {_safe(destination.url)}")
    optuna.copy_study(from_study_name=name, from_storage=rdb, to_storage=destination)
    source_store = ResultStore(rdb.url, engine=rdb.engine)
    source_store.copy_to(ResultStore(destination.url, engine=destination.engine), name)
    return len(study.trials)


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
                metrics=_stored_metrics(study, t),
                config=_stored_config(study, t),
                preset=t.user_attrs.get("preset"),
                description=t.user_attrs.get("description", ""),
                verified=verified,
                flagged=flagged,
            )
        )
    return records


def _stored_metrics(study: optuna.Study, trial: FrozenTrial) -> Metrics:
    try:
        return Metrics.from_dict(trial.user_attrs["metrics"])
    except TunelabError as exc:
        raise TunelabError(
            f"study {study.study_name!r}, trial {trial.number}: corrupt stored {exc}"
        ) from None


def _stored_config(study: optuna.Study, trial: FrozenTrial) -> dict[str, Any]:
    config = trial.user_attrs.get("config", {})
    if not isinstance(config, dict) or not isinstance(config.get("decoders", {}), dict):
        raise TunelabError(
            f"study {study.study_name!r}, trial {trial.number}: corrupt stored config (expected a decoder_config "
            f"object, found {shown(config)})"
        )
    return config


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
    """Runs a study's trials with one evaluator; refreshes the front and hypervolume tables after each.

    Any number of runners (processes, machines) may run one study at once: each starts a trial only while the
    study has fewer complete or running trials than asked for, under the study lock, so together they finish
    with exactly that many complete trials. A runner whose trial stops beating (killed) has that trial retried.
    """

    def __init__(
        self,
        name: str,
        storage: str | optuna.storages.RDBStorage,
        evaluator: Evaluator | None = None,
        evaluator_factory: Callable[[EvaluationSettings, Callable[[str], None]], Evaluator] | None = None,
        heartbeat: float = DEFAULT_HEARTBEAT,
        poll: float = 1.0,
        worker: int = 0,
    ) -> None:
        self.worker = worker  # offsets the sampler's seed: workers sharing a study must not propose alike
        self.rdb = open_storage(storage, heartbeat) if isinstance(storage, str) else storage
        self.study, self.spec = load_spec(name, self.rdb)
        self.storage = self.rdb.url
        self.store = ResultStore(self.rdb.url, engine=self.rdb.engine)
        self.lock = study_lock(self.rdb.engine, name)
        self.poll = poll
        self._evaluator = evaluator
        self._factory = evaluator_factory
        self.objectives = objectives(self.spec.objectives)
        self.evaluation_seconds = 0.0  # inside the evaluator, for configs not in the cache
        self.run_seconds = 0.0  # inside `run`: evaluation plus sampling, storage and bookkeeping, and waiting
        self.wait_seconds = 0.0  # inside `run`, waiting for other workers' last trials
        self._space: SearchSpace | None = None
        self._warm_starts: list[tuple[str, ModelPrecision]] | None = None
        self._hv_reference: list[float] | None = None

    @property
    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            if self._factory is None:
                raise TunelabError("this study runner has no evaluator")
            self._evaluator = self._factory(self.spec.evaluation, self.check_model)
        return self._evaluator

    def check_model(self, fingerprint: str) -> None:
        """Refuse a model other than the one the study's trials were scored on (its checkpoint's weights or
        tokenizer changed since): new trials would not be comparable with the stored ones. The factory calls
        this as soon as the model is loaded, before any reference is built for it."""
        keys = {r.metrics.evaluator for r in trial_records(self.study)}
        known = self.store.model_fingerprints(keys)
        if known and fingerprint not in known:
            raise TunelabError(
                f"study {self.study.study_name}'s trials were scored on model fingerprint {min(known)}, but "
                f"{self.spec.evaluation.model} now has {fingerprint} (its weights or tokenizer changed): create a "
                "new study for it"
            )

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

    def _counts(self, fail_stale: bool = True) -> tuple[int, int]:
        """(complete, running) trials, after failing the running trials whose workers stopped beating (each
        failed one is re-enqueued by the storage's retry callback) when `fail_stale`."""
        if fail_stale:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                optuna.storages.fail_stale_trials(self.study)
        trials = self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
        complete = sum(t.state is TrialState.COMPLETE for t in trials)
        return complete, len(trials) - complete

    @property
    def warm_starts(self) -> list[tuple[str, ModelPrecision]]:
        """The study's warm starts for its model (computed once)."""
        if self._warm_starts is None:
            self._warm_starts = self.spec.warm_starts(self.model.name, self.model.n_layers)
        return self._warm_starts

    def enqueue_warm_starts(self) -> int:
        """Enqueue each warm start that has no complete, running or waiting trial yet (under the study lock, so
        workers starting together enqueue each once); returns how many were enqueued."""
        space = self.space
        with self.lock:
            return self._enqueue_missing(space)

    def _enqueue_missing(self, space: SearchSpace) -> int:
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        present = {t.user_attrs.get("seed_key") for t in self.study.get_trials(deepcopy=False, states=states)}
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

    def _suggest(self, trial: optuna.Trial) -> tuple[dict[str, str], ModelPrecision]:
        """The trial's parameters (stored, so other workers' samplers see them) and its config."""
        space = self.space
        params = {
            name: trial.suggest_categorical(name, list(choices)) for name, choices in space.params.items()
        }
        seeded = trial.user_attrs.get("seed_config")
        if seeded is None:
            return params, space.decode(params)
        parsed = parse_decoder_config(seeded, lambda _name: hard_defaults(), source=f"trial {trial.number}")
        return params, parsed.precision

    def _score_trial(
        self, trial: optuna.Trial, params: dict[str, str], precision: ModelPrecision
    ) -> tuple[float, ...]:
        space = self.space
        metrics, hit = self.score(precision)
        trial.set_user_attr("metrics", metrics.to_dict())
        trial.set_user_attr("config", to_decoder_config(precision))
        trial.set_user_attr(
            "description", space.describe(params) if space.contains(precision) else "warm start"
        )
        trial.set_user_attr("cache_hit", hit)
        for name, value in self.spec.constraints.values(metrics).items():
            trial.set_constraint(name, value)
        return tuple(o.value(metrics) for o in self.objectives)

    def refresh(self) -> tuple[list[FrontMember], float | None]:
        """Recompute the study's front table and record the hypervolume after its latest trial (under the study
        lock: two workers rewriting the front at once would interleave their rows)."""
        with self.lock:
            return self._refresh()

    def _refresh(self) -> tuple[list[FrontMember], float | None]:
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
        ref = self._hv_reference or stored_hv_reference(self.study, len(self.objectives))
        warm = len(self.warm_starts) if self._evaluator else 0
        if ref is None and len(records) >= max(warm, 1):
            ref = hv_reference(records, self.objectives)
            if ref is not None:
                self.study.set_user_attr(HV_REFERENCE_ATTR, ref)
        self._hv_reference = ref  # fixed once set
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
        on_wait: Callable[[int], None] | None = None,
    ) -> int:
        """Run trials until the study has `trials` complete ones (or `timeout` seconds pass); returns how many
        this runner completed. While the rest are running in other workers it waits (`on_wait(running)` once per
        wait): if one of them dies, its trial is retried here."""
        if trials < 1:
            raise ConfigError(f"--trials must be >= 1, got {trials}")
        if self.complete_trials() >= trials:
            return 0
        # Stored trials and cached scores that cannot be read fail now, before a new trial is stored.
        trial_records(self.study, self.store)
        self.store.check_cached(self.evaluator.key)
        self.enqueue_warm_starts()
        cheap = _cheap_objectives(self)
        self.study.sampler = make_sampler(
            self.spec.sampler, (self.spec.seed + self.worker) % SEED_RANGE, self.space, cheap
        )
        deadline = None if timeout is None else time.monotonic() + timeout
        ran, waiting, start = 0, False, time.perf_counter()
        try:
            while deadline is None or time.monotonic() < deadline:
                started = self._start_one(trials, on_trial)
                if started is None:
                    break
                if started:
                    ran, waiting = ran + 1, False
                    continue
                if on_wait is not None and not waiting:
                    on_wait(self._counts()[1])
                waiting, slept = True, time.perf_counter()
                time.sleep(self.poll)
                self.wait_seconds += time.perf_counter() - slept
        finally:
            self.run_seconds += time.perf_counter() - start
        return ran

    def _start_one(
        self, trials: int, on_trial: Callable[[FrozenTrial, list[FrontMember], float | None], None] | None
    ) -> bool | None:
        """Run one trial if the study needs one: True when one ran, False when the rest are running elsewhere,
        None when the study is done. The study lock is held from counting until the trial's parameters are
        stored, so concurrent workers neither overshoot `trials` nor propose the same config."""
        with ExitStack() as held:
            held.enter_context(self.lock)
            # Stale trials only matter when they would make this worker wait: otherwise Optuna fails them (and
            # the retry callback re-enqueues them) just before it starts the next trial.
            complete, running = self._counts(fail_stale=False)
            if complete < trials <= complete + running:
                complete, running = self._counts()
            if complete >= trials:
                return None
            if complete + running >= trials:
                return False

            def objective(trial: optuna.Trial) -> tuple[float, ...]:
                suggested = self._suggest(trial)
                held.close()  # parameters stored: other workers may start theirs
                return self._score_trial(trial, *suggested)

            def callback(study: optuna.Study, trial: FrozenTrial) -> None:
                members, volume = self.refresh()
                if on_trial is not None:
                    on_trial(trial, members, volume)

            self.study.optimize(objective, n_trials=1, callbacks=[callback], catch=())
        return True


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
