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
    OptimizationsOpt,
    OutputOpt,
    PresetOpt,
    config_file,
)
from tunelab.errors import ConfigError
from tunelab.files import atomic_write, shown
from tunelab.interop import (
    default_preset,
    read_decoder_config,
    resolve_config,
    to_decoder_config,
    to_optimizations,
)
from tunelab.model_presets import checked_model_name
from tunelab.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from tunelab.models.shapes import UnknownModel, model_shape
from tunelab.precision import DecoderPrecision, ModelPrecision, OpGroup, TensorGroup, check_decoder_count

app = typer.Typer(help="Convert, validate and show per-decoder precision configs.", no_args_is_help=True)

ModelOpt = Annotated[
    str,
    typer.Option(
        help="Model: the name tt-transformers sees (HF basename), a known model, or a config.json or model "
        "directory; a model tunelab knows bounds --layers and, for a causal LM, is its default."
    ),
]


@app.command()
def convert(
    preset: PresetOpt = None,
    model: ModelOpt = "model",
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
    if to not in ("json", "optimizations"):
        raise ConfigError(f"unknown --to {shown(to)} (expected json or optimizations)")
    model, layers = model_layers(model, layers)
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
    if output is None:
        typer.echo(text, nl=False)
    else:
        _write(output, text)
        typer.echo(f"wrote {output} ({precision.n_layers} decoders)", err=True)


@app.command()
def validate(
    file: Annotated[Path, typer.Argument(help="decoder_config JSON file.")],
    layers: LayersOpt = None,
    model: ModelOpt = "model",
    default: DefaultOpt = "performance",
) -> None:
    """Check a decoder_config file as tt-transformers reads it for the model; exit 2 on an error."""
    _, layers = model_layers(model, layers)
    parsed = read_decoder_config(file, default_preset(default), default)
    findings = parsed.findings(layers)
    errors = [f for f in findings if f.level == "error"]
    if errors:
        raise ConfigError(f"{file}: {errors[0].message}")
    for finding in findings:
        typer.echo(f"{finding.level}: {file}: {finding.message}", err=True)
    typer.echo(f"ok: {file}: {parsed.precision.n_layers} decoders")


@app.command()
def show(
    file: Annotated[
        Path | None, typer.Argument(help="decoder_config JSON file (or use a source option).")
    ] = None,
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    model: ModelOpt = "model",
    layers: LayersOpt = None,
    optimizations: OptimizationsOpt = None,
    default: DefaultOpt = "performance",
) -> None:
    """Print a per-decoder table; values that differ from the hard defaults are highlighted."""
    if file is not None and config is not None:
        raise ConfigError("give the file once: FILE or --config FILE")
    model, layers = model_layers(model, layers)
    precision = resolve_config(
        preset=preset,
        optimizations=optimizations,
        config_file=config or file,
        model=model,
        layers=layers,
        default=default,
    )
    Console(width=200).print(config_table(precision))


def model_layers(spec: str, layers: int | None) -> tuple[str, int | None]:
    """The model name tt-transformers sees and the decoder count: `--layers`, checked against the model when
    tunelab knows it (a config.json, its directory or a known name), which also gives the default for a causal LM."""
    if layers is not None:
        check_decoder_count(layers, "--layers")
    path = _existing(spec)
    spec = str(path or spec)
    model = _known_model(spec, path is not None)
    if model is None:
        return checked_model_name(spec), layers
    if layers is None:
        return model.name, model.n_layers if model.architecture in SUPPORTED_ARCHITECTURES else None
    if layers > model.n_layers:
        raise ConfigError(
            f"--layers {layers} does not match the model: {model.name} has {model.n_layers} decoders"
        )
    return model.name, layers


def _existing(spec: str) -> Path | None:
    """`spec` as an absolute path if it names an existing file or directory (so that `.` has a name)."""
    try:
        path = Path(spec)
        return path.resolve() if path.exists() else None
    except OSError:  # e.g. a name too long to be a path
        return None


def _known_model(spec: str, is_path: bool) -> ModelConfig | None:
    """The model `spec` names if tunelab knows it; a config.json that cannot be used is a one-line error."""
    checked_model_name(spec)
    if is_path and Path(spec).is_dir() and not (Path(spec) / "config.json").is_file():
        return None  # a checkpoint directory without a config.json: only its name matters here
    try:
        return model_shape(spec)
    except UnknownModel:
        if is_path:
            raise
        return None


def _write(output: Path, text: str) -> None:
    """Write `text` to `output` atomically; never replace something that is not a regular file."""
    try:
        if output.exists() and not output.is_file() and not output.is_dir():
            raise ConfigError(f"{output}: not a regular file (omit -o to print to standard output)")
        atomic_write(output, text)
    except OSError as exc:
        raise ConfigError(f"{output}: cannot write: {exc.strerror or exc}") from None


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
