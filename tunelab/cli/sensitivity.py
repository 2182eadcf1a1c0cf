"""`tunelab sensitivity`: a study's per-(decoder, group) sensitivity profile, and a ladder of configs built on it."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.options import (
    JsonOutOpt,
    LayersOpt,
    MeshDeviceOpt,
    TorchDeviceOpt,
    mesh_device,
    torch_device,
)
from tunelab.cli.study import RefDirOpt, _evaluator_factory, _storage
from tunelab.errors import ConfigError, TunelabError

err = Console(stderr=True)


def _study_for_model(
    model: str, mesh: str | None, device: str, layers: int | None, storage: str | None
) -> tuple:
    """(name, storage URL) of `sensitivity-<model basename>`, created (random sampler, per-decoder) if missing.
    The options are checked before `studies/` is made, and the model before a database is."""
    from tunelab.evaluator import EvaluationSettings
    from tunelab.perf import device as lookup_device
    from tunelab.search.study import StudySpec, create_study, list_studies

    name = f"sensitivity-{Path(model.rstrip('/')).name}"
    target = lookup_device(mesh_device(mesh, None)).name
    evaluation = EvaluationSettings(
        model=model, mesh_device=target, windows=1, device=torch_device(device), layers=layers
    )
    spec = StudySpec(name=name, evaluation=evaluation, space={"granularity": "per-decoder"}, sampler="random")
    url = _storage(name, storage, create=True)
    existing = {s["name"]: s for s in list_studies(url)} if _database_exists(url) else {}
    if name not in existing:
        create_study(spec, url)
        err.print(f"created study {name} in {url}")
    elif existing[name]["mesh_device"] != target:
        raise TunelabError(
            f"study {name} in {url} is for {existing[name]['mesh_device']}, not {target}: "
            f"use --study {name} or another --storage"
        )
    return name, url


def _database_exists(url: str) -> bool:
    """False for a SQLite file that is not there yet (listing it would create it)."""
    from sqlalchemy.engine import make_url

    parsed = make_url(url)
    database = parsed.database if parsed.get_backend_name() == "sqlite" else None
    return database in (None, "", ":memory:") or Path(database).exists()


def sensitivity_command(
    study: Annotated[str | None, typer.Option(help="The study whose settings score the profile.")] = None,
    model: Annotated[
        str | None, typer.Option(help="Without --study: profile this model in the study sensitivity-<model>.")
    ] = None,
    mesh: MeshDeviceOpt = None,
    storage: Annotated[
        str | None,
        typer.Option(help="Study database: any SQLAlchemy URL (default: sqlite:///studies/NAME.db)."),
    ] = None,
    windows: Annotated[int, typer.Option(help="Reference windows per profiled config.")] = 1,
    ladder: Annotated[
        int, typer.Option(help="Enqueue this many ladder configs into the study (0: none).")
    ] = 0,
    top: Annotated[int, typer.Option(help="Rows shown, most sensitive first.")] = 10,
    device: TorchDeviceOpt = "cpu",
    layers: LayersOpt = None,
    reference_dir: RefDirOpt = None,
    as_json: JsonOutOpt = False,
) -> None:
    """KL and top-1 change of lowering one (decoder, tensor group) at a time from a high-precision baseline.

    The profile is stored in the study database (an interrupted one resumes) and named in the study's user attributes. With --ladder N, an additive model over it proposes N configs (least predicted KL per throughput budget) that `tunelab study run NAME` evaluates first.
    """
    from tunelab.evaluator import config_key
    from tunelab.search.sensitivity import (
        MAX_LADDER,
        PROFILE_ATTR,
        AdditiveModel,
        Profile,
        baseline_params,
        default_levels,
        enqueue_ladder,
        ladder_rungs,
        profile_key,
        rank_correlation,
        run_profile,
    )
    from tunelab.search.space import SearchSpace
    from tunelab.search.study import StudyRunner, front, load_spec, trial_records

    if windows < 1:
        raise ConfigError(f"--windows must be >= 1, got {windows}")
    if not 0 <= ladder <= MAX_LADDER:
        raise ConfigError(f"--ladder must be 0..{MAX_LADDER}, got {ladder}")
    if top < 0:
        raise ConfigError(f"--top must be >= 0, got {top}")
    if study is not None and model is not None:
        raise ConfigError("give --study NAME or --model MODEL, not both")
    if study is not None and (mesh is not None or layers is not None):
        raise ConfigError("--mesh-device and --layers describe a new study: --study NAME uses that study's")
    if study is None:
        name, url = _study_for_model(model or "smollm2-135m", mesh, device, layers, storage)
    else:
        name, url = study, _storage(study, storage)
    _, spec = load_spec(name, url)
    settings = replace(spec.evaluation, windows=windows)
    runner = StudyRunner(name, url, evaluator=_evaluator_factory(reference_dir)(settings))
    # Stored trials that cannot be read fail now, before the profile runs.
    trial_records(runner.study, runner.store)
    evaluator, loaded_model = runner.evaluator, runner.model
    space = SearchSpace.from_spec(
        spec.space_for(loaded_model.name, loaded_model.n_layers).base,
        {**spec.space, "granularity": "per-decoder"},
    )
    base, levels = baseline_params(space), default_levels(space)
    key = profile_key(evaluator.key, config_key(space.decode(base)), levels)
    runner.study.set_user_attr(PROFILE_ATTR, key)

    total = sum(len(levels[k.tensor.name]) for k in space.knobs) * len(space.groups)
    already = len(runner.store.sensitivity(key))
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task(f"sensitivity {name}", total=total, completed=already)
    start = time.perf_counter()

    last = next(
        ((k.tensor.name, levels[k.tensor.name][-1]) for k in space.knobs[::-1] if levels[k.tensor.name]), None
    )

    def on_step(done: int, total: int, row: Any) -> None:
        bar.update(task, completed=done)
        if not err.is_terminal and (row.tensor, row.lowered) == last:
            err.print(f"{done}/{total} rows ({time.perf_counter() - start:.0f} s): decoder {row.layer} done")

    try:
        with bar:
            run_profile(lambda p: runner.score(p)[0], space, base, levels, runner.store, key, on_step)
    except KeyboardInterrupt:
        err.print(
            f"interrupted: the profile's finished rows are kept in {url}; run the same command to resume"
        )
        raise typer.Exit(130) from None
    elapsed = time.perf_counter() - start
    profile = Profile.load(runner.store, key)
    additive = AdditiveModel.from_rows(profile.rows, space)
    result: dict[str, Any] = {
        "study": name,
        "profile": key,
        "rows": len(profile.rows),
        "new_rows": len(profile.rows) - already,
        "seconds": elapsed,
        "baseline": {"kl": profile.baseline.kl, "top1": profile.baseline.top1} if profile.baseline else None,
        "most_sensitive": [
            {
                "decoder": r.layer,
                "tensor": r.tensor,
                "lowered": r.lowered,
                "kl_increase": r.kl_increase,
                "top1_drop": r.top1_drop,
            }
            for r in profile.most_sensitive(top)
        ],
        "means": [
            {"tensor": t, "lowered": lv, "kl_increase": k, "top1_drop": d}
            for (t, lv), (k, d) in profile.means().items()
        ],
    }
    rungs = []
    if ladder:
        rungs = ladder_rungs(additive, space, lambda p: evaluator.speed(p).tok_s_u, ladder)
        enqueued = enqueue_ladder(runner, [r.precision for r in rungs], tag=key)
        result["ladder"] = [
            {"tok_s_u": r.tok_s_u, "budget": r.budget, "kl_increase": r.kl_increase, "top1_drop": r.top1_drop,
             "config_key": config_key(r.precision)}
            for r in rungs
        ]  # fmt: skip
        result["enqueued"] = enqueued
    records = trial_records(runner.study, runner.store)
    members = [m.record for m in front(records, spec)] if records else []
    rho = rank_correlation(additive, members) if members else math.nan
    result["front_rank_correlation"] = None if math.isnan(rho) else rho
    result["front_size"] = len(members)
    if as_json:
        typer.echo(json.dumps(_finite(result)))
        return
    _print(result, profile, rungs, top, name)


def _print(result: dict[str, Any], profile: Any, rungs: list, top: int, name: str) -> None:
    baseline = result["baseline"] or {}
    typer.echo(
        f"profile {result['profile']} of study {name}: {result['rows']} rows ({result['new_rows']} new) in "
        f"{result['seconds']:.0f} s; baseline KL {_fmt(baseline.get('kl'), 5)}, top-1 {_fmt(baseline.get('top1'))}"
    )
    table = Table(title=f"the {top} most sensitive (decoder, group, level)")
    for column in ("decoder", "group", "level", "KL increase", "top-1 drop"):
        table.add_column(column, justify="right" if column != "group" else "left")
    for r in profile.most_sensitive(top):
        table.add_row(str(r.layer), r.tensor, r.lowered, _fmt(r.kl_increase, 5), _fmt(r.top1_drop))
    console = Console(width=160)
    console.print(table)
    means = Table(title="mean over decoders")
    for column in ("group", "level", "KL increase", "top-1 drop"):
        means.add_column(column)
    for m in sorted(result["means"], key=lambda m: -m["kl_increase"]):
        means.add_row(m["tensor"], m["lowered"], _fmt(m["kl_increase"], 6), _fmt(m["top1_drop"], 5))
    console.print(means)
    if rungs:
        typer.echo(
            f"ladder: {len(rungs)} configs, {result['enqueued']} enqueued, {len(rungs) - result['enqueued']} "
            f"already trials; `tunelab study run {name} --trials T` evaluates them first"
        )
        for r in rungs:
            typer.echo(
                f"  {r.tok_s_u:8.2f} tok/s/u (budget {r.budget:.2f})  predicted KL {r.kl_increase:+.5f}, "
                f"top-1 {-r.top1_drop:+.4f}"
            )
    rho = result["front_rank_correlation"]
    if result["front_size"]:
        typer.echo(
            f"additive prediction vs measured KL on the front ({result['front_size']} trials): Spearman "
            f"{'n/a' if rho is None else f'{rho:.3f}'}"
        )


def _finite(x: Any) -> Any:
    """JSON-safe: infinite or NaN numbers (an infeasible row) become null."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_finite(v) for v in x]
    return None if isinstance(x, float) and not math.isfinite(x) else x


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.{digits}f}"
