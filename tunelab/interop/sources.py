"""One config source -> a `ModelPrecision`: a decoder_config file, a preset name or an `--optimizations` string.

Every command that takes a config accepts exactly one of the three; `resolve_config` is that rule, so a notebook
reading a config gets the same checks, warnings and one-line errors as the command line.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from tunelab.errors import ConfigError, ConfigWarning
from tunelab.files import shown
from tunelab.interop.decoder_json import read_decoder_config
from tunelab.interop.optimizations import parse_optimizations
from tunelab.precision import DecoderPrecision, ModelPrecision, check_decoder_count
from tunelab.presets import generic_accuracy, generic_performance

__all__ = ["config_source", "default_preset", "resolve_config"]

_DEFAULTS = {"performance": generic_performance, "accuracy": generic_accuracy}


def default_preset(name: str) -> DecoderPrecision:
    """The generic preset tt-transformers gives decoders a decoder_config file does not list."""
    if name not in _DEFAULTS:
        raise ConfigError(f"unknown --default {shown(name)} (expected performance or accuracy)")
    return _DEFAULTS[name]


def config_source(*, preset: str | None, optimizations: str | None, config_file: Path | None) -> str:
    """The one source given, described as 'preset NAME', 'config FILE' or "optimizations '...'"; none or several
    raise a one-line ConfigError (a command checks this before it loads a model)."""
    given = sum(value is not None for value in (preset, optimizations, config_file))
    if given != 1:
        raise ConfigError("give exactly one config: --config FILE, --preset NAME or --optimizations '...'")
    if preset is not None:
        return f"preset {preset}"
    if config_file is not None:
        return f"config {config_file}"
    return f"optimizations {optimizations!r}"


def resolve_config(
    *,
    preset: str | None,
    optimizations: str | None,
    config_file: Path | None,
    model: str,
    layers: int | None,
    default: str = "performance",
) -> ModelPrecision:
    """Exactly one config source as a ModelPrecision for a `layers`-decoder `model` (errors: one-line ConfigErrors).

    A file is read as tt-transformers reads it (`default` fills unlisted decoders) and fitted to `layers` when
    given; its warnings become `ConfigWarning`s. A preset or an --optimizations string needs `layers`.
    """
    config_source(preset=preset, optimizations=optimizations, config_file=config_file)
    if layers is not None:
        check_decoder_count(layers, "--layers")
    if config_file is not None:
        parsed = read_decoder_config(config_file, default_preset(default), default)
        for finding in parsed.findings(layers):
            if finding.level == "error":
                raise ConfigError(f"{config_file}: {finding.message}")
            if finding.level == "warning":
                warnings.warn(f"{config_file}: {finding.message}", ConfigWarning, 2)
        return parsed.precision if layers is None else parsed.fit(layers, parsed.precision[0])
    if layers is None:
        option = "--preset" if preset is not None else "--optimizations"
        raise ConfigError(f"{option} needs --layers (the model's decoder count)")
    if optimizations is not None:
        return ModelPrecision.uniform(parse_optimizations(optimizations), layers)
    # Imported here: model_presets reads tt-transformers' override files through this package.
    from tunelab.model_presets import model_preset

    return model_preset(preset, model, layers)
