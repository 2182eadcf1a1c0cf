"""`tunelab study create|run|list|show|front|verify|export|plot|delete`: Pareto searches over per-decoder configs."""

from __future__ import annotations

import csv
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.options import (
    AccumulationOpt,
    CorpusOpt,
    JsonOutOpt,
    LayersOpt,
    LmHeadOpt,
    MeshDeviceOpt,
    ModelOpt,
    PrefillOpt,
    TorchDeviceOpt,
    WindowLenOpt,
    lm_head_format,
    mesh_device,
    torch_device,
)
from tunelab.cli.reference import note, option_given
from tunelab.errors import ConfigError, TunelabError

app = typer.Typer(help="Pareto searches over per-decoder configs (Optuna studies).", no_args_is_help=True)
err = Console(stderr=True)

NameArg = Annotated[str, typer.Argument(help="The study's name.")]
StorageOpt = Annotated[
    str | None,
    typer.Option(help="Study database: any SQLAlchemy URL (default: sqlite:///studies/NAME.db)."),
]
RefDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--reference-dir", help="Reference directory (default: $TUNELAB_REFERENCE_DIR or ./reference_logits)."
    ),
]


def _storage(name: str, storage: str | None, create: bool = False) -> str:
    """The study's database URL (default `studies/NAME.db`). Only `create` makes a new SQLite file: elsewhere a
    missing one is a mistyped name or path, said in one line, not an empty database left behind."""
    from tunelab.search.study import default_storage

    url = storage or default_storage(name, create=create)
    _existing_sqlite(url, create)
    return url


def _existing_sqlite(url: str, create: bool) -> None:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:
        return  # the storage layer says what is wrong with it
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    if create or database in (None, "", ":memory:"):
        return
    try:
        exists = Path(database).exists()
    except OSError as exc:  # a name too long for the file system
        raise TunelabError(f"{database}: cannot be a study database ({exc.strerror or exc})") from None
    if not exists:
        raise TunelabError(
            f"no study database {database} (`tunelab study create` makes one; --storage names another)"
        )
    _check_study_database(Path(database))


def _check_study_database(path: Path) -> None:
    """Refuse a SQLite file without Optuna's tables before Optuna opens it: Optuna would create them in it (an
    empty file, another program's database), changing a file that is not a study database."""
    import sqlite3
    from urllib.request import pathname2url

    if not path.is_file():
        raise TunelabError(f"{path}: is not a regular file, so not a study database")
    try:
        connection = sqlite3.connect(f"file:{pathname2url(str(path))}?mode=ro", uri=True)
        try:
            tables = {
                row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type='table'")
            }
        finally:
            connection.close()
    except sqlite3.Error as exc:
        raise TunelabError(f"cannot open the study database {path}: {exc}") from None
    if "studies" not in tables:
        raise TunelabError(
            f"{path}: not a study database (it has no Optuna tables; `tunelab study create` makes one)"
        )


def _csv_list(value: str | None) -> list[str] | None:
    return None if value is None else [v.strip() for v in value.split(",") if v.strip()]


def _evaluator_factory(reference_dir: Path | None):
    """A StudyRunner's evaluator factory: `check_model(fingerprint)` sees the model as soon as it is loaded."""
    from tunelab.evaluator import emulated_evaluator

    def factory(settings: Any, check_model: Any = None) -> Any:
        evaluator, _ = emulated_evaluator(
            settings,
            reference_dir=reference_dir,
            on_load=lambda source: note(f"loading {source} ..."),
            on_loaded=None if check_model is None else lambda loaded: check_model(loaded.fingerprint),
        )
        return evaluator

    return factory


@app.command()
def create(
    name: NameArg,
    model: ModelOpt = "smollm2-135m",
    mesh: MeshDeviceOpt = None,
    space: Annotated[
        str, typer.Option(help="Granularity: uniform, blocks:K, per-decoder, or groups like 0-3,4-27,28-29.")
    ] = "blocks:4",
    tensors: Annotated[
        str | None, typer.Option(help="Searched tensor groups (default FF1_FF3,FF2,WQKV,WO,KV_CACHE).")
    ] = None,
    ops: Annotated[
        str | None,
        typer.Option(help="Searched op groups (default the matmuls': LI_FF1_FF3,LI_FF2,LI_QKV_*,LI_O_*)."),
    ] = None,
    formats: Annotated[str | None, typer.Option(help="Formats offered (default BFP4,BFP8,BF16).")] = None,
    fidelities: Annotated[
        str | None, typer.Option(help="Fidelities offered (default LOFI,HIFI2_FP16,HIFI2,HIFI4).")
    ] = None,
    base: Annotated[str, typer.Option(help="Preset for everything not searched.")] = "defaults",
    sampler: Annotated[str, typer.Option(help="additive (default), tpe, nsga2, gp or random.")] = "additive",
    seed: Annotated[int, typer.Option(help="Sampler seed.")] = 0,
    objectives: Annotated[
        str, typer.Option(help="Objectives: top1, tok_s_u, top5, kl, ttft_ms (comma-separated).")
    ] = "top1,tok_s_u",
    min_top1: Annotated[float | None, typer.Option(help="Constraint: top-1 at least this fraction.")] = None,
    max_dram: Annotated[
        float | None, typer.Option(help="Constraint: weights + KV cache per chip at most this many GB.")
    ] = None,
    seeds: Annotated[str, typer.Option(help="Presets run first (comma-separated; '' for none).")] = (
        "defaults,performance,accuracy"
    ),
    seed_config: Annotated[
        list[Path] | None, typer.Option("--seed-config", help="A decoder_config JSON run first (repeatable).")
    ] = None,
    windows: Annotated[int, typer.Option(help="Reference windows per trial.")] = 2,
    accumulation: AccumulationOpt = "fast",
    lm_head: LmHeadOpt = "bfp8",
    device: TorchDeviceOpt = "cpu",
    corpus: CorpusOpt = "default",
    window_len: WindowLenOpt = 1024,
    prefill: PrefillOpt = 512,
    layers: LayersOpt = None,
    storage: StorageOpt = None,
    exist_ok: Annotated[
        bool, typer.Option("--exist-ok", help="Keep an existing study of the same name and settings.")
    ] = False,
) -> None:
    """Create a study: model, Tenstorrent system, search space, sampler, objectives and constraints."""
    from tunelab.evaluator import EvaluationSettings
    from tunelab.search.samplers import SAMPLERS
    from tunelab.search.study import StudySpec, create_study, list_studies, load_spec

    if sampler not in SAMPLERS:
        raise ConfigError(f"unknown --sampler {sampler!r} (expected one of {', '.join(SAMPLERS)})")
    if windows < 1:
        raise ConfigError(f"--windows must be >= 1, got {windows}")
    if accumulation not in ("fast", "exact"):
        raise ConfigError(f"unknown --accumulation {accumulation!r} (expected fast or exact)")
    lm_head_format(lm_head)
    from tunelab.perf import device as lookup_device

    target = lookup_device(mesh_device(mesh, None)).name
    seed_configs = []
    for path in seed_config or []:
        from tunelab.interop import read_decoder_config
        from tunelab.presets import hard_defaults

        read_decoder_config(path, lambda _n: hard_defaults())  # one-line errors for a bad file, now
        seed_configs.append((path.name, json.loads(path.read_text())))
    space_spec: dict[str, Any] = {"granularity": space}
    for key, value in (("tensors", tensors), ("ops", ops), ("formats", formats), ("fidelities", fidelities)):
        if value is not None:
            space_spec[key] = _csv_list(value)
    spec = StudySpec(
        name=name,
        evaluation=EvaluationSettings(
            model=model,
            mesh_device=target,
            windows=windows,
            accumulation=accumulation,
            lm_head=lm_head,
            device=torch_device(device),
            corpus=corpus,
            window_len=window_len,
            prefill_len=prefill,
            layers=layers,
        ),
        space=space_spec,
        base=base,
        sampler=sampler,
        seed=seed,
        objectives=tuple(_csv_list(objectives) or ()),
        min_top1=min_top1,
        max_dram_gb=max_dram,
        seeds=tuple(_csv_list(seeds) or ()),
        seed_configs=tuple(seed_configs),
    )
    url = _storage(name, storage, create=True)
    if exist_ok and name in {s["name"] for s in list_studies(url)}:
        _, existing = load_spec(name, url)
        if existing != spec:
            raise TunelabError(
                f"study {name} exists in {url} with other settings; delete it or pick another name"
            )
        typer.echo(f"study {name} exists in {url} with these settings: `tunelab study run {name}` resumes it")
        return
    create_study(spec, url)
    typer.echo(f"created study {name} ({model} on {target}, {space}, {sampler}) in {url}")


MAX_LOCAL_WORKERS = (
    64  # `study run --workers N`: processes on this machine, each with its own copy of the model
)
TrialsOpt = Annotated[int, typer.Option(help="Run until the study has this many complete trials.")]
TimeoutOpt = Annotated[float | None, typer.Option(help="Stop starting trials after this many seconds.")]
HeartbeatOpt = Annotated[
    float,
    typer.Option(
        help="Seconds between a running trial's heartbeats; a trial silent for 4x this (its worker was killed) "
        "is retried by another worker."
    ),
]


@app.command()
def run(
    name: NameArg,
    trials: TrialsOpt = 60,
    timeout: TimeoutOpt = None,
    storage: StorageOpt = None,
    reference_dir: RefDirOpt = None,
    workers: Annotated[
        int,
        typer.Option(
            help="Local worker processes sharing the study (each with cores/N threads); other machines join "
            "with `tunelab worker NAME --storage URL`. Several workers want PostgreSQL (SQLite works locally)."
        ),
    ] = 1,
    heartbeat: HeartbeatOpt = 15.0,
) -> None:
    """Run (or resume) a study; Ctrl-C keeps every finished trial and `run` resumes."""
    from tunelab.search.study import DEFAULT_HEARTBEAT, StudyRunner

    _check_run_options(trials, timeout, heartbeat)
    if not 1 <= workers <= MAX_LOCAL_WORKERS:
        raise ConfigError(
            f"--workers must be 1..{MAX_LOCAL_WORKERS} (each local worker is a process that loads the model), "
            f"got {workers}"
        )
    url = _storage(name, storage)
    runner = StudyRunner(name, url, evaluator_factory=_evaluator_factory(reference_dir), heartbeat=heartbeat)
    done = runner.complete_trials()
    if done >= trials:
        typer.echo(f"study {name} already has {done} complete trials (asked for {trials})")
        _print_front(runner)
        return
    if workers > 1:
        from tunelab.cli.workers import run_workers

        options = ["--trials", str(trials), "--storage", url]
        options += [] if timeout is None else ["--timeout", str(timeout)]
        options += [] if reference_dir is None else ["--reference-dir", str(reference_dir)]
        options += [] if heartbeat == DEFAULT_HEARTBEAT else ["--heartbeat", str(heartbeat)]
        run_workers(name, url, workers, options)
        _print_front(runner)
        return
    _run_here(runner, name, url, trials, timeout)
    _print_front(runner)


def _check_run_options(trials: int, timeout: float | None, heartbeat: float) -> None:
    if trials < 1:
        raise ConfigError(f"--trials must be >= 1, got {trials}")
    if timeout is not None and not 0 < timeout < float("inf"):
        raise ConfigError(f"--timeout must be a positive number of seconds, got {timeout}")
    if not 1 <= heartbeat <= 3600:
        raise ConfigError(f"--heartbeat must be 1..3600 seconds, got {heartbeat}")


def trial_line(trial: Any, volume: float | None) -> str:
    """One finished trial, as printed by `study run` and `tunelab worker`."""
    metrics = trial.user_attrs.get("metrics", {})
    label = trial.user_attrs.get("preset") or ""
    top1, speed = metrics.get("top1"), metrics.get("tok_s_u")
    return (
        f"trial {trial.number:3d} {label:12s} top-1 {'n/a' if top1 is None else f'{top1:.4f}'}  "
        f"{'n/a' if speed is None else f'{speed:.1f}'} tok/s/u"
        f"{'  (cached)' if trial.user_attrs.get('cache_hit') else ''}"
        f"{'' if volume is None else f'  hypervolume {volume:.4f}'}"
    )


def _run_here(runner: Any, name: str, url: str, trials: int, timeout: float | None, label: str = "") -> None:
    """Run trials in this process with a progress bar (or one line per trial when stderr is not a terminal)."""
    from tunelab.search.study import best_at_speed, performance_speed, trial_records

    _ = runner.evaluator  # load the model and reference before the clock starts
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    prefix = f"{label} " if label else ""
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[best]}"),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task(f"study {name}", total=trials, completed=runner.complete_trials(), best="")
    start = time.perf_counter()

    def on_trial(trial: Any, members: list, volume: float | None) -> None:
        records = trial_records(runner.study)
        best = best_at_speed(records, performance_speed(records))
        text = "" if best is None else f"best top-1 at >= performance speed: {best:.4f}"
        bar.update(task, completed=runner.complete_trials(), best=text)
        if not err.is_terminal and trial.user_attrs.get("metrics"):
            err.print(prefix + trial_line(trial, volume), soft_wrap=True, highlight=False)

    def on_wait(running: int) -> None:
        err.print(f"{prefix}waiting for {running} trial(s) running in other workers", highlight=False)

    try:
        with bar:
            ran = runner.run(trials, timeout, on_trial, on_wait)
    except KeyboardInterrupt:
        kept = runner.complete_trials()
        err.print(
            f"interrupted: {prefix}{kept} complete trials are kept in {_safe_url(url)}; a trial that was running "
            f"is marked failed; `tunelab study run {name}` resumes",
            soft_wrap=True,
            highlight=False,
        )
        sys.exit(130)
    elapsed = time.perf_counter() - start
    overhead = ""
    if runner.evaluation_seconds:
        share = (runner.run_seconds - runner.wait_seconds) / runner.evaluation_seconds - 1
        overhead = f" ({runner.evaluation_seconds:.0f} s scoring; sampling, storage and bookkeeping {100 * share:.1f}% on top)"
    err.print(f"{prefix}ran {ran} trials in {elapsed:.0f} s{overhead}", soft_wrap=True, highlight=False)


def _safe_url(url: str) -> str:
    from tunelab.search.storage import _safe

    return _safe(url)


def _front_rows(runner: Any) -> list[dict[str, Any]]:
    from tunelab.search.export import config_code
    from tunelab.search.study import front, trial_records

    rows = []
    for m in front(trial_records(runner.study, runner.store), runner.spec):
        best = m.record.best
        rows.append(
            {
                "trial": m.record.number,
                "top1": best.top1,
                "top1_ci": list(best.top1_ci) if best.top1_ci else None,
                "top5": best.top5,
                "kl": best.kl,
                "tok_s_u": best.tok_s_u,
                "ttft_ms": best.ttft_ms,
                "verified": m.verified,
                "flagged": m.record.flagged,
                "preset": m.record.preset,
                "config_key": best.config_key,
                "kind": best.kind,
                "n_windows": best.n_windows,
                "description": m.record.description,
                "code": config_code(m.record.config),
            }
        )
    return rows


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _print_front(runner: Any) -> None:
    from tunelab.search.export import CODE_LEGEND

    rows = _front_rows(runner)
    table = Table(title=f"front of {runner.study.study_name} ({len(rows)} members)", caption=CODE_LEGEND)
    for column in ("trial", "top-1", "95% interval", "top-5", "tok/s/u", "verified", "preset", "config"):
        table.add_column(column)
    for r in rows:
        ci = r["top1_ci"]
        table.add_row(
            str(r["trial"]),
            _fmt(r["top1"]),
            "" if ci is None else f"{ci[0]:.3f}..{ci[1]:.3f}",
            _fmt(r["top5"]),
            _fmt(r["tok_s_u"], 1),
            ("yes (flagged)" if r["flagged"] else "yes") if r["verified"] else "no",
            r["preset"] or "",
            r["code"],
        )
    Console(width=220).print(table)


@app.command("list")
def list_command(storage: StorageOpt = None, as_json: JsonOutOpt = False) -> None:
    """The studies in a database (default: every studies/*.db)."""
    from tunelab.search.study import list_studies

    urls = [storage] if storage else [f"sqlite:///{p}" for p in sorted(Path("studies").glob("*.db"))]
    for url in urls:
        _existing_sqlite(url, create=False)
    rows = [{**s, "storage": url} for url in urls for s in list_studies(url)]
    if as_json:
        typer.echo(json.dumps(rows))
        return
    if not rows:
        typer.echo("no studies" + (f" in {storage}" if storage else " under studies/"))
        return
    table = Table(title="studies")
    for column in ("name", "trials", "model", "mesh device", "sampler", "space", "started", "storage"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            r["name"], str(r["trials"]), str(r["model"]), str(r["mesh_device"]), str(r["sampler"]),
            str(r["space"]), str(r["started"]), r["storage"],
        )  # fmt: skip
    Console(width=220).print(table)


@app.command()
def show(name: NameArg, storage: StorageOpt = None, as_json: JsonOutOpt = False) -> None:
    """A study's settings, trial counts and front."""
    from optuna.trial import TrialState

    from tunelab.search.study import StudyRunner

    runner = StudyRunner(name, _storage(name, storage))
    states = {s.name.lower(): len(runner.study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    hv = runner.store.hypervolumes(name)
    info = {
        "spec": runner.spec.to_dict(),
        "trials": states,
        "hypervolume": hv[-1][1] if hv else None,
        "front": _front_rows(runner),
    }
    if as_json:
        typer.echo(json.dumps(info))
        return
    spec = runner.spec
    typer.echo(
        f"study {name}: {spec.evaluation.model} on {spec.evaluation.mesh_device}, space {spec.space}, "
        f"sampler {spec.sampler} (seed {spec.seed}), objectives {', '.join(spec.objectives)}, "
        f"{spec.evaluation.windows} windows, accumulation {spec.evaluation.accumulation}"
    )
    constraints = [f"top-1 >= {spec.min_top1}" if spec.min_top1 is not None else ""]
    constraints += [f"DRAM <= {spec.max_dram_gb} GB" if spec.max_dram_gb is not None else ""]
    typer.echo(f"constraints: fits on the device{''.join(', ' + c for c in constraints if c)}")
    typer.echo("trials: " + ", ".join(f"{k} {v}" for k, v in states.items() if v))
    if info["hypervolume"] is not None:
        typer.echo(f"hypervolume: {info['hypervolume']:.5f}")
    _print_front(runner)


@app.command("front")
def front_command(
    name: NameArg,
    storage: StorageOpt = None,
    as_json: JsonOutOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV.")] = False,
) -> None:
    """The feasible non-dominated trials (verified metrics where verified)."""
    from tunelab.search.study import StudyRunner

    if as_json and as_csv:
        raise ConfigError("give --json or --csv, not both")
    runner = StudyRunner(name, _storage(name, storage))
    rows = _front_rows(runner)
    if as_json:
        typer.echo(json.dumps(rows))
    elif as_csv:
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        for r in rows:
            writer.writerow(
                {**r, "top1_ci": "" if r["top1_ci"] is None else f"{r['top1_ci'][0]}..{r['top1_ci'][1]}"}
            )
        typer.echo(out.getvalue().rstrip("\n"))
    else:
        _print_front(runner)


@app.command()
def verify(
    name: NameArg,
    windows: Annotated[int | None, typer.Option(help="Windows (default: all the reference has, 8).")] = None,
    accumulation: AccumulationOpt = "exact",
    storage: StorageOpt = None,
    reference_dir: RefDirOpt = None,
) -> None:
    """Re-score the front on more windows with exact accumulation; flag top-1 outside its search interval."""
    from tunelab.evaluator import emulated_evaluator
    from tunelab.search.study import StudyRunner
    from tunelab.search.verify import verify_front

    runner = StudyRunner(name, _storage(name, storage))
    settings = replace(runner.spec.evaluation, windows=windows, accumulation=accumulation)
    evaluator, _ = emulated_evaluator(
        settings,
        reference_dir=reference_dir,
        on_load=lambda s: note(f"loading {s} ..."),
        on_loaded=lambda loaded: runner.check_model(loaded.fingerprint),
    )

    def on_member(v: Any) -> None:
        s, m = v.record.metrics, v.metrics
        flag = "  FLAGGED: outside the search interval" if v.flagged else ""
        err.print(
            f"trial {v.record.number:3d}: top-1 {_fmt(s.top1)} -> {_fmt(m.top1)} ({m.n_windows} windows, "
            f"{accumulation}){flag}",
            soft_wrap=True,
        )

    results = verify_front(runner, evaluator, on_member)
    flagged = sum(v.flagged for v in results)
    typer.echo(f"verified {len(results)} front members; {flagged} flagged")
    _print_front(runner)


@app.command()
def export(
    ctx: typer.Context,
    name: NameArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="The decoder_config JSON to write.")],
    trial: Annotated[int | None, typer.Option(help="Export this trial.")] = None,
    min_top1: Annotated[
        float | None, typer.Option(help="Export the fastest front member with at least this top-1.")
    ] = None,
    fastest: Annotated[bool, typer.Option("--fastest", help="Export the fastest front member.")] = False,
    as_fast_as: Annotated[
        str | None,
        typer.Option(
            help="Export the most accurate front member as fast as this warm start (a preset), within --tolerance."
        ),
    ] = None,
    tolerance: Annotated[
        float, typer.Option(help="Speed tolerance of --as-fast-as, a fraction (default 0.005: 99.5%).")
    ] = 0.005,
    storage: StorageOpt = None,
) -> None:
    """Write a trial's complete decoder_config JSON (validated) and print how tt-transformers runs it."""
    from tunelab.models.sources import ALIASES
    from tunelab.search.export import choose, export_trial
    from tunelab.search.study import StudyRunner, front, trial_records

    if not 0 <= tolerance < 1:
        raise ConfigError(f"--tolerance is a fraction in 0..1, got {tolerance}")
    if as_fast_as is None and option_given(ctx, "tolerance"):
        raise ConfigError(
            "--tolerance goes with --as-fast-as PRESET (it is the speed margin from that preset)"
        )
    if min_top1 is not None and not 0 <= min_top1 <= 1:
        raise ConfigError(f"--min-top1 is a fraction in 0..1, got {min_top1}")
    runner = StudyRunner(name, _storage(name, storage))
    records = trial_records(runner.study, runner.store)
    members = front(records, runner.spec)
    record = choose(
        records,
        members,
        trial=trial,
        min_top1=min_top1,
        fastest=fastest,
        as_fast_as=as_fast_as,
        tolerance=tolerance,
    )
    model = runner.spec.evaluation.model
    hf_model = ALIASES[model].hf_id if model in ALIASES else model
    n_layers = len(record.config.get("decoders", {}))
    result = export_trial(record, output, hf_model, runner.spec.evaluation.mesh_device, n_layers)
    best = record.best
    typer.echo(
        f"wrote {result.path} (trial {record.number}: top-1 {_fmt(best.top1)}, {_fmt(best.tok_s_u, 1)} tok/s/u, "
        f"{'verified' if record.verified else 'search-time'})"
    )
    if result.optimizations:
        typer.echo(f"--optimizations '{result.optimizations}'")
    typer.echo(f"run it from the tt-metal root: {result.command}")


@app.command()
def plot(
    name: NameArg,
    output: Annotated[Path, typer.Option("-o", "--output", help="Directory for the HTML figures.")] = Path(
        "studies/plots"
    ),
    storage: StorageOpt = None,
) -> None:
    """Plotly HTML figures: the front, per-decoder precision map, sensitivity heatmap, hypervolume per trial."""
    from tunelab.search.plots import write_study_plots
    from tunelab.search.study import StudyRunner

    runner = StudyRunner(name, _storage(name, storage))
    for path in write_study_plots(runner, output):
        typer.echo(f"wrote {path}")


@app.command()
def delete(
    name: NameArg,
    storage: StorageOpt = None,
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask.")] = False,
) -> None:
    """Delete a study and its fronts (cached evaluations stay: they serve other studies)."""
    from tunelab.search.study import delete_study

    url = _storage(name, storage)
    if not yes and sys.stdin.isatty() and not typer.confirm(f"delete study {name} from {url}?"):
        raise TunelabError("not deleted")
    delete_study(name, url)
    typer.echo(f"deleted study {name} from {url}")


@app.command()
def copy(
    name: NameArg,
    to: Annotated[str, typer.Option("--to", help="The database to copy the study into (SQLAlchemy URL).")],
    storage: StorageOpt = None,
) -> None:
    """Copy a study, its trials, front and cached evaluations into another database: the one command that moves a
    SQLite study to PostgreSQL so workers on other machines can join."""
    from tunelab.search.study import copy_study

    url = _storage(name, storage)
    trials = copy_study(name, url, to)
    typer.echo(
        f"copied study {name} ({trials} trials) from {_safe_url(url)} to {_safe_url(to)}; "
        f"run it there with `tunelab study run {name} --storage URL --workers N`"
    )
