"""`tunelab perf ...`: modelled or measured decode speed and TTFT of a config; refit the model."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer

from tunelab.cli.config import load_config
from tunelab.errors import ConfigError
from tunelab.eval.devices import DEVICES, device
from tunelab.eval.perf_calibration import (
    PACKAGED_DATA,
    cross_validate,
    fit,
    load_calibration,
    summary,
    write_params,
)
from tunelab.eval.shapes import model_shape
from tunelab.eval.throughput import PARAMS_FILE, load_params, predict
from tunelab.model_presets import PRESETS
from tunelab.models.config import ModelConfig
from tunelab.precision import ModelPrecision

app = typer.Typer(help="Predict decode tokens/s/user and TTFT on Tenstorrent devices.", no_args_is_help=True)


@app.command("predict")
def predict_command(
    model: Annotated[
        str, typer.Option(help="HF id or basename of a known model, or a path to a config.json.")
    ],
    device_name: Annotated[str, typer.Option("--device", help=f"One of {', '.join(DEVICES)}.")],
    preset: Annotated[str | None, typer.Option(help=f"Preset: {', '.join(PRESETS)}.")] = None,
    config: Annotated[Path | None, typer.Option(help="A decoder_config JSON file.")] = None,
    batch: Annotated[int, typer.Option(help="Users decoded together.")] = 1,
    seq_len: Annotated[int, typer.Option(help="Prompt tokens, and the decode context.")] = 512,
    params: Annotated[
        Path | None, typer.Option(help="Fitted parameters (default: the packaged fit).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Modelled tokens/s/user and TTFT for a model, config and device."""
    shapes = model_shape(model)
    target = device(device_name)
    precision = _precision(shapes, preset, config)
    result = predict(shapes, precision, target, batch, seq_len, params=load_params(params))
    if as_json:
        inputs = {"model": model, "device": device_name, "preset": preset, "config": config and str(config)}
        typer.echo(json.dumps({**result.to_dict(), "inputs": inputs}))
        return
    source = f"{preset} preset" if preset else str(config)
    terms = ", ".join(f"{k} {v:.2f}" for k, v in result.breakdown_ms.items())
    typer.echo(
        f"{result.model} on {result.device}, {source}, batch {batch}, {seq_len} tokens ({result.kind})"
    )
    typer.echo(f"decode  {result.tok_s_u:.1f} tok/s/user  ({1e3 / result.tok_s_u:.2f} ms/token: {terms})")
    typer.echo(f"TTFT    {result.ttft_ms:.1f} ms")


@app.command()
def measure(
    model: Annotated[
        str, typer.Option(help="HF_MODEL for tt-transformers: an HF id or a local checkpoint path.")
    ],
    device_name: Annotated[str, typer.Option("--device", help=f"One of {', '.join(DEVICES)}.")],
    preset: Annotated[str | None, typer.Option(help=f"Preset: {', '.join(PRESETS)}.")] = None,
    config: Annotated[Path | None, typer.Option(help="A decoder_config JSON file.")] = None,
    batch: Annotated[int, typer.Option(help="Users decoded together.")] = 1,
    workdir: Annotated[Path, typer.Option(help="Where configs and run logs go.")] = Path("tt_runs"),
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Measured tokens/s/user, TTFT, top-1 and top-5 on a Tenstorrent device through tt-transformers."""
    from tunelab.backends.tt_hardware import TTHardware

    hardware = TTHardware(model, device(device_name), workdir)
    shapes = model_shape(model)
    result = hardware.evaluate(_precision(shapes, preset, config), batch)
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
        Path, typer.Option("-o", "--output", help="Where to write the parameters.")
    ] = PARAMS_FILE,
    cv: Annotated[bool, typer.Option("--cv", help="Also print leave-one-model-out errors.")] = False,
) -> None:
    """Refit the model's free parameters, write them with the fit error, and print it."""
    rows = load_calibration(data)
    result = fit(rows)
    write_params(result, output, str(data) if data else PACKAGED_DATA)
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
    typer.echo(f"wrote {output}", err=True)


def _precision(model: ModelConfig, preset: str | None, config: Path | None) -> ModelPrecision:
    """The per-decoder config from exactly one of a preset or a decoder_config file, checked against the model."""
    if (preset is None) == (config is None):
        raise ConfigError("give exactly one of --preset or --config")
    return load_config(preset, model.name, model.n_layers, None, config)
