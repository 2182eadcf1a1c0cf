"""`tunelab config ...`: convert between presets, decoder_config JSON and `--optimizations`; validate; show."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunelab.errors import ConfigError, ConfigWarning
from tunelab.interop import (
    parse_optimizations,
    read_decoder_config,
    to_decoder_config,
    to_optimizations,
)
from tunelab.model_presets import PRESETS, model_preset
from tunelab.precision import DecoderPrecision, ModelPrecision, OpGroup, TensorGroup
from tunelab.presets import generic_accuracy, generic_performance

app = typer.Typer(help="Convert, validate and show per-decoder precision configs.", no_args_is_help=True)

_DEFAULTS = {"performance": generic_performance, "accuracy": generic_accuracy}

PresetOpt = Annotated[
    str | None, typer.Option(help=f"Preset: {', '.join(PRESETS)} (needs --model, --layers).")
]
ModelOpt = Annotated[
    str, typer.Option(help="Model name as tt-transformers sees it (HF basename), for presets.")
]
LayersOpt = Annotated[int | None, typer.Option(help="Number of decoder layers of the model.")]
OptimizationsOpt = Annotated[str | None, typer.Option("--optimizations", help="An --optimizations string.")]
JsonOpt = Annotated[Path | None, typer.Option("--json", help="A decoder_config JSON file.")]
DefaultOpt = Annotated[
    str,
    typer.Option(help="Preset tt-transformers gives unlisted decoders of a JSON file: performance|accuracy."),
]


def load_config(
    preset: str | None,
    model: str,
    layers: int | None,
    optimizations: str | None,
    json_file: Path | None,
    default: str = "performance",
) -> ModelPrecision:
    """Resolve exactly one config source into a ModelPrecision (errors are one-line ConfigErrors)."""
    sources = {"--preset": preset, "--optimizations": optimizations, "--json": json_file}
    chosen = [name for name, value in sources.items() if value is not None]
    if len(chosen) != 1:
        raise ConfigError("give exactly one source: --preset, --optimizations or --json")
    if json_file is not None:
        parsed = read_decoder_config(json_file, _default_preset(default), default)
        for finding in parsed.findings(layers):
            if finding.level == "error":
                raise ConfigError(f"{json_file}: {finding.message}")
            if finding.level == "warning":
                warnings.warn(f"{json_file}: {finding.message}", ConfigWarning, 2)
        return parsed.precision if layers is None else parsed.fit(layers, parsed.precision[0])
    if layers is None:
        raise ConfigError(f"{chosen[0]} needs --layers (the model's decoder count)")
    if optimizations is not None:
        return ModelPrecision.uniform(parse_optimizations(optimizations), layers)
    return model_preset(preset, model, layers)


def _default_preset(name: str):
    if name not in _DEFAULTS:
        raise ConfigError(f"unknown --default {name!r} (expected performance or accuracy)")
    return _DEFAULTS[name]


@app.command()
def convert(
    preset: PresetOpt = None,
    model: ModelOpt = "model",
    layers: LayersOpt = None,
    optimizations: OptimizationsOpt = None,
    json_file: JsonOpt = None,
    default: DefaultOpt = "performance",
    to: Annotated[
        str, typer.Option(help="Output: json (complete decoder_config) or optimizations.")
    ] = "json",
    output: Annotated[
        Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Write a config as a complete decoder_config JSON or as an --optimizations string."""
    config = load_config(preset, model, layers, optimizations, json_file, default)
    if to == "json":
        text = json.dumps(to_decoder_config(config), indent=2) + "\n"
    elif to == "optimizations":
        if not config.is_uniform:
            first = next(i for i, d in enumerate(config) if d != config[0])
            raise ConfigError(
                f"decoder {first} differs from decoder 0: an --optimizations string sets every decoder alike; "
                "use --to json"
            )
        text = to_optimizations(config[0]) + "\n"
    else:
        raise ConfigError(f"unknown --to {to!r} (expected json or optimizations)")
    if output is None:
        typer.echo(text, nl=False)
    else:
        output.write_text(text)
        typer.echo(f"wrote {output} ({config.n_layers} decoders)", err=True)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="decoder_config JSON file.")],
    layers: LayersOpt = None,
    default: DefaultOpt = "performance",
) -> None:
    """Check a decoder_config file as tt-transformers reads it; exit 2 on an error."""
    parsed = read_decoder_config(file, _default_preset(default), default)
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
    preset: PresetOpt = None,
    model: ModelOpt = "model",
    layers: LayersOpt = None,
    optimizations: OptimizationsOpt = None,
    default: DefaultOpt = "performance",
) -> None:
    """Print a per-decoder table; values that differ from the hard defaults are highlighted."""
    config = load_config(preset, model, layers, optimizations, file, default)
    Console(width=200).print(config_table(config))


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
