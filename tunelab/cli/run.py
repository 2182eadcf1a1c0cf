"""`tunelab run`: emulate a config on a text and show its next-token predictions beside the references."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli.options import (
    AccumulationOpt,
    ConfigOpt,
    DeprecatedJsonFileOpt,
    LayersOpt,
    ModelOpt,
    OptimizationsOpt,
    PresetOpt,
    TorchDeviceOpt,
    config_file,
    emulator_options,
    torch_device,
)
from tunelab.errors import TunelabError
from tunelab.models.config import ModelConfig

DEFAULT_TEXT = (
    "The old lighthouse keeper climbed the spiral stairs every evening, counting each step as his father had "
    "taught him, and when he reached the lamp room he wiped the salt from the glass before lighting the wick."
)


def run(
    model: ModelOpt = "smollm2-135m",
    preset: PresetOpt = None,
    config: ConfigOpt = None,
    json_file: DeprecatedJsonFileOpt = None,
    optimizations: OptimizationsOpt = None,
    text: Annotated[str, typer.Option(help="Text to run teacher-forced.")] = DEFAULT_TEXT,
    prefill: Annotated[int | None, typer.Option(help="Prefill tokens (default: half the text).")] = None,
    accumulation: AccumulationOpt = "fast",
    device: TorchDeviceOpt = "cpu",
    layers: LayersOpt = None,
) -> None:
    """Next-token predictions of the emulated config beside the all-bf16 emulation and the HF fp32 reference.

    With no config, the performance preset."""
    import torch

    from tunelab.backends.emulated import emulator_for
    from tunelab.interop import resolve_config
    from tunelab.model_presets import model_preset
    from tunelab.models import load_model

    options = emulator_options(accumulation)
    torch_device(device)
    for name, value in (("--prefill", prefill), ("--layers", layers)):
        if value is not None and value < 1:
            raise TunelabError(f"{name} must be at least 1, got {value}")
    _check_utf8(text)
    config = config_file(config, json_file)
    if preset is None and config is None and optimizations is None:
        preset = "performance"
    loaded = load_model(model, n_layers=layers)
    n_layers = loaded.config.n_layers
    precision = resolve_config(
        preset=preset,
        optimizations=optimizations,
        config_file=config,
        model=loaded.config.name,
        layers=n_layers,
    )
    tokens = torch.tensor(loaded.tokenizer.encode(text), dtype=torch.long)
    prefill_len = _prefill_length(len(tokens), prefill, loaded.config)
    emulator = emulator_for(loaded, options, device)
    emulated = emulator.teacher_forced(tokens, prefill_len, precision).argmax(-1).cpu()
    ceiling = (
        emulator.teacher_forced(tokens, prefill_len, model_preset("bf16", "", n_layers)).argmax(-1).cpu()
    )
    with torch.no_grad():
        reference = loaded.hf_model(tokens[None]).logits[0, prefill_len:].argmax(-1)
    _print(loaded.tokenizer, tokens, prefill_len, emulated, ceiling, reference, _source_name(preset, config))


def _check_utf8(text: str) -> None:
    """`--text` as the tokenizer needs it: bytes that are not UTF-8 (they reach Python as lone surrogates) are a
    one-line error, not a tokenizer TypeError."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TunelabError(
            f"--text is not UTF-8 text (an undecodable byte at character {exc.start})"
        ) from None


def _prefill_length(n_tokens: int, prefill: int | None, model: ModelConfig) -> int:
    """`--prefill` (default: half the text), checked against the text's tokens and the model's context."""
    limit = model.max_position_embeddings
    if limit and n_tokens > limit:
        raise TunelabError(
            f"--text is {n_tokens} tokens, more than {model.name}'s context of {limit} (max_position_embeddings)"
        )
    if n_tokens < 2:
        length = "1 token" if n_tokens == 1 else f"{n_tokens} tokens"
        raise TunelabError(f"--text is {length}; it needs at least 2 (a prefill and a token to predict)")
    prefill_len = n_tokens // 2 if prefill is None else prefill
    if prefill_len >= n_tokens:
        raise TunelabError(f"--prefill {prefill_len} must be less than the text's {n_tokens} tokens")
    return prefill_len


def _source_name(preset: str | None, config: Path | None) -> str:
    return preset or (config.name if config else "--optimizations")


def _print(tokenizer, tokens, prefill_len, emulated, ceiling, reference, source: str) -> None:
    table = Table(title=f"teacher-forced next-token predictions ({prefill_len} prefill tokens)")
    for column in ("pos", "input", "HF fp32", "emulated bf16", f"emulated {source}"):
        table.add_column(column)
    show = tokenizer.convert_ids_to_tokens
    for row, position in enumerate(range(prefill_len, len(tokens))):
        mark = "" if emulated[row] == reference[row] else "[red]"
        table.add_row(
            str(position),
            repr(show(int(tokens[position]))),
            repr(show(int(reference[row]))),
            repr(show(int(ceiling[row]))),
            f"{mark}{show(int(emulated[row]))!r}",
        )
    console = Console(width=160)
    console.print(table)
    n = len(reference)
    console.print(
        f"top-1 agreement with HF fp32 over {n} decode positions: emulated {source} "
        f"{(emulated == reference).float().mean():.3f}, emulated bf16 {(ceiling == reference).float().mean():.3f}"
    )
