"""`tunelab perf ...`: modelled or measured decode speed and TTFT of a config; refit the model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.options import (
    BatchOpt,
    ConfigOpt,
    DeprecatedDeviceOpt,
    JsonOutOpt,
    LmHeadOpt,
    MeshDeviceOpt,
    OptimizationsOpt,
    PresetOpt,
    ShapeModelOpt,
    lm_head_format,
    mesh_device,
)
from tunelab.errors import TunelabError
from tunelab.files import writable
from tunelab.interop import config_source, resolve_config
from tunelab.models.config import ModelConfig
from tunelab.models.shapes import model_shape
from tunelab.perf import device, load_params, predict
from tunelab.perf.calibration import (
    PACKAGED_DATA,
    cross_validate,
    fit,
    load_calibration,
    summary,
    write_params,
)
from tunelab.precision import ModelPrecision

DEFAULT_OUTPUT = "perf_params.json"

app = typer.Typer(help="Predict decode tokens/s/user and TTFT on Tenstorrent devices.", no_args_is_help=True)


@app.command("predict")
def predict_command(
    model: ShapeModelOpt,
    mesh_device_name: MeshDeviceOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    optimizations: OptimizationsOpt = None,
    batch: BatchOpt = 1,
    seq_len: Annotated[int, typer.Option(help="Prompt tokens, and the decode context.")] = 512,
    lm_head: LmHeadOpt = "bfp8",
    params: Annotated[
        Path | None, typer.Option(help="Fitted parameters (default: the packaged fit).")
    ] = None,
    as_json: JsonOutOpt = False,
    deprecated_device: DeprecatedDeviceOpt = None,
) -> None:
    """Modelled tokens/s/user and TTFT for a model, config and Tenstorrent system."""
    head = lm_head_format(lm_head)
    source = config_source(preset=preset, optimizations=optimizations, config_file=config)
    name = mesh_device(mesh_device_name, deprecated_device)
    shapes = model_shape(model)
    target = device(name)
    precision = _precision(shapes, preset, optimizations, config)
    result = predict(shapes, precision, target, batch, seq_len, params=load_params(params), lm_head=head)
    if as_json:
        inputs = {
            "model": model,
            "device": name,
            "preset": preset,
            "config": config and str(config),
            "optimizations": optimizations,
            "lm_head": head.value,
        }
        typer.echo(json.dumps({**result.to_dict(), "inputs": inputs}))
        return
    described = f"{preset} preset" if preset else str(config) if config else source
    head_note = "" if head.value == "bfp8" else f", {head.value} LM head"
    terms = ", ".join(f"{k} {v:.2f}" for k, v in result.breakdown_ms.items())
    typer.echo(
        f"{result.model} on {result.device}, {described}{head_note}, batch {batch}, {seq_len} tokens "
        f"({result.kind})"
    )
    typer.echo(f"decode  {result.tok_s_u:.1f} tok/s/user  ({1e3 / result.tok_s_u:.2f} ms/token: {terms})")
    typer.echo(f"TTFT    {result.ttft_ms:.1f} ms")


@app.command()
def measure(
    model: Annotated[
        str,
        typer.Option(
            help="HF_MODEL for tt-transformers: an HF id or a local checkpoint path (with config.json)."
        ),
    ],
    mesh_device_name: MeshDeviceOpt = None,
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    optimizations: OptimizationsOpt = None,
    batch: BatchOpt = 1,
    workdir: Annotated[Path, typer.Option(help="Where configs and run logs go.")] = Path("tt_runs"),
    as_json: JsonOutOpt = False,
    deprecated_device: DeprecatedDeviceOpt = None,
) -> None:
    """Measured tokens/s/user, TTFT, top-1 and top-5 on a Tenstorrent system through tt-transformers."""
    from tunelab.backends.tt_hardware import TTHardware

    config_source(preset=preset, optimizations=optimizations, config_file=config)
    if batch < 1:
        raise TunelabError(f"--batch must be at least 1, got {batch}")
    target = device(mesh_device(mesh_device_name, deprecated_device))
    shapes = model_shape(model)
    precision = _precision(shapes, preset, optimizations, config)
    result = TTHardware(model, target, workdir).evaluate(precision, batch)
    measured = result.throughput
    if as_json:
        typer.echo(json.dumps({**measured.to_dict(), "top1": result.top1, "top5": result.top5}))
        return
    typer.echo(f"{measured.model} on {measured.device}, batch {batch} ({measured.kind})")
    ttft = "n/a" if measured.ttft_ms is None else f"{measured.ttft_ms:.1f} ms"
    typer.echo(f"decode  {measured.tok_s_u:.1f} tok/s/user   TTFT {ttft}")
    typer.echo(
        f"top-1   {result.top1:.1f}%   top-5 {result.top5:.1f}%   logs: {', '.join(map(str, result.logs))}"
    )


@app.command()
def calibrate(
    data: Annotated[
        Path | None, typer.Option(help="Calibration CSV (default: the packaged PERF.md rows).")
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option("-o", "--output", help=f"Where to write the parameters (default: ./{DEFAULT_OUTPUT})."),
    ] = None,
    cv: Annotated[bool, typer.Option("--cv", help="Also print leave-one-model-out errors.")] = False,
) -> None:
    """Refit the model's free parameters, write them with the fit error, and print it.

    The packaged fit is never overwritten: `perf predict --params FILE` uses the new one."""
    target = output or Path(DEFAULT_OUTPUT)
    writable(target)
    rows = load_calibration(data)
    result = fit(rows)
    write_params(result, target, str(data) if data else PACKAGED_DATA)
    where = "" if output else " (in the current directory; the packaged fit is unchanged)"
    typer.echo(f"wrote {target}{where}; use it with `tunelab perf predict --params {target}`", err=True)
    for name, value in asdict(result.params).items():
        typer.echo(f"{name:20s} {value:.4g}")
    for metric, err in summary(result.errors).items():
        typer.echo(
            f"fit {metric}: median {err['median_abs_pct']:.1f}%, max {err['max_abs_pct']:.1f}% abs error"
        )
    if cv:
        for metric, err in summary(cross_validate(rows)).items():
            typer.echo(
                f"leave-one-model-out {metric}: median {err['median_abs_pct']:.1f}%, max {err['max_abs_pct']:.1f}%"
            )


def _precision(
    model: ModelConfig, preset: str | None, optimizations: str | None, config: Path | None
) -> ModelPrecision:
    """The per-decoder config from its one source, checked against the model's decoder count."""
    return resolve_config(
        preset=preset,
        optimizations=optimizations,
        config_file=config,
        model=model.name,
        layers=model.n_layers,
    )
