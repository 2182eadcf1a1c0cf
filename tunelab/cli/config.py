"""`tunelab config ...`: convert between presets, decoder_config JSON and `--optimizations`; validate; show."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.options import (
    ConfigOpt,
    DefaultOpt,
    DeprecatedJsonFileOpt,
    LayersOpt,
    ModelNameOpt,
    OptimizationsOpt,
    OutputOpt,
    PresetOpt,
    config_file,
)
from tunelab.errors import ConfigError
from tunelab.interop import (
    default_preset,
    read_decoder_config,
    resolve_config,
    to_decoder_config,
    to_optimizations,
)
from tunelab.precision import DecoderPrecision, ModelPrecision, OpGroup, TensorGroup

app = typer.Typer(help="Convert, validate and show per-decoder precision configs.", no_args_is_help=True)


@app.command()
def convert(
    preset: PresetOpt = None,
    model: ModelNameOpt = "model",
    layers: LayersOpt = None,
    optimizations: OptimizationsOpt = None,
    config: ConfigOpt = None,
    json_file: DeprecatedJsonFileOpt = None,
    default: DefaultOpt = "performance",
    to: Annotated[
        str, typer.Option(help="Output: json (complete decoder_config) or optimizations.")
    ] = "json",
    output: OutputOpt = None,
) -> None:
    """Write a config as a complete decoder_config JSON or as an --optimizations string."""
    precision = resolve_config(
        preset=preset,
        optimizations=optimizations,
        config_file=config_file(config, json_file),
        model=model,
        layers=layers,
        default=default,
    )
    if to == "json":
        text = json.dumps(to_decoder_config(precision), indent=2) + "\n"
    elif to == "optimizations":
        if not precision.is_uniform:
            first = next(i for i, d in enumerate(precision) if d != precision[0])
            raise ConfigError(
                f"decoder {first} differs from decoder 0: an --optimizations string sets every decoder alike; "
                "use --to json"
            )
        text = to_optimizations(precision[0]) + "\n"
    else:
        raise ConfigError(f"unknown --to {to!r} (expected json or optimizations)")
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output} ({precision.n_layers} decoders)", err=True)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="decoder_config JSON file.")],
    layers: LayersOpt = None,
    default: DefaultOpt = "performance",
) -> None:
    """Check a decoder_config file as tt-transformers reads it; exit 2 on an error."""
    parsed = read_decoder_config(file, default_preset(default), default)
    findings = parsed.findings(layers)
    for finding in findings:
        typer.echo(f"{finding.level}: {file}: {finding.message}", err=True)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        raise typer.Exit(2)
    typer.echo(f"ok: {file}: {parsed.precision.n_layers} decoders")


@app.command()
def show(
    file: Annotated[
        Path | None, typer.Argument(help="decoder_config JSON file (or use a source option).")
    ] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    model: ModelNameOpt = "model",
    layers: LayersOpt = None,
    optimizations: OptimizationsOpt = None,
    default: DefaultOpt = "performance",
) -> None:
    """Print a per-decoder table; values that differ from the hard defaults are highlighted."""
    if file is not None and config is not None:
        raise ConfigError("give the file once: FILE or --config FILE")
    precision = resolve_config(
        preset=preset,
        optimizations=optimizations,
        config_file=config or file,
        model=model,
        layers=layers,
        default=default,
    )
    Console(width=200).print(config_table(precision))


def config_table(config: ModelPrecision) -> Table:
    """A rich table with one row per decoder and one column per tensor and op group."""
    defaults = DecoderPrecision()
    table = Table(title=f"{config.n_layers} decoders (bold = differs from the hard defaults)")
    table.add_column("decoder", justify="right")
    for group in TensorGroup:
        table.add_column(group.name)
    for op in OpGroup:
        table.add_column(op.name)
    for index, decoder in enumerate(config):
        cells = [
            _cell(decoder.precision(g).value, decoder.precision(g) != defaults.precision(g))
            for g in TensorGroup
        ]
        cells += [
            _cell(decoder.fidelity(op).value, decoder.fidelity(op) != defaults.fidelity(op)) for op in OpGroup
        ]
        table.add_row(str(index), *cells)
    return table


def _cell(text: str, highlight: bool) -> str:
    return f"[bold]{text}[/bold]" if highlight else text
