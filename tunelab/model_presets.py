"""Whole-model presets as tt-transformers resolves them (`DecodersPrecision.performance/accuracy`).

A preset is the per-decoder preset on every layer, unless tt-transformers ships an override file
`model_params/<model_name>/<preset>_decoder_config.json`; then that file is read with decoder_config semantics.
Override files come from the installed tt-metal (`$TT_METAL_HOME/models/tt_transformers/model_params`) when there is
one, since they change between versions, else from the snapshot bundled in `tunelab/model_params`.
Besides tt-transformers' `performance`, `accuracy` and hard `defaults`, `bf16` is tunelab's accuracy ceiling
(everything BF16 at HIFI4_FP32), a config tt-transformers also accepts.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

from tunelab.errors import ConfigError, ConfigWarning
from tunelab.files import shown
from tunelab.interop.decoder_json import read_decoder_config
from tunelab.precision import DecoderPrecision, ModelPrecision, check_decoder_count
from tunelab.presets import (
    full_precision,
    generic_accuracy,
    generic_performance,
    hard_defaults,
    model_basename,
)

__all__ = ["PRESETS", "checked_model_name", "model_preset", "override_file", "override_root"]

BUNDLED_MODEL_PARAMS = Path(__file__).parent / "model_params"
_GENERIC: dict[str, Callable[[str], DecoderPrecision]] = {
    "performance": generic_performance,
    "accuracy": generic_accuracy,
    "defaults": lambda _model_name: hard_defaults(),
    "bf16": lambda _model_name: full_precision(),
}
PRESETS = tuple(_GENERIC)
_MAX_NAME = 255  # a directory name: tt-transformers takes model_name from HF_MODEL's last component


def override_root() -> Path:
    """Where override files are read from: the installed tt-metal's model_params, else the bundled snapshot."""
    tt_metal_home = os.environ.get("TT_METAL_HOME")
    if tt_metal_home:
        installed = Path(tt_metal_home) / "models" / "tt_transformers" / "model_params"
        if installed.is_dir():
            return installed
    return BUNDLED_MODEL_PARAMS


def override_file(model_name: str, preset: str) -> Path | None:
    """tt-transformers' per-model override file for `preset`, if one exists (`model_name` = HF basename)."""
    if preset not in ("performance", "accuracy"):
        return None
    path = override_root() / checked_model_name(model_name) / f"{preset}_decoder_config.json"
    return path if path.is_file() else None


def checked_model_name(model_name: str) -> str:
    """The HF basename tt-transformers uses as model_name; one that cannot name a model is a ConfigError."""
    name = model_basename(model_name)
    if not name or name in (".", "..") or len(name) > _MAX_NAME or not name.isprintable():
        raise ConfigError(
            f"model name {shown(name)} cannot name a model (expected a Hugging Face model name or its "
            f"directory name, at most {_MAX_NAME} printable characters)"
        )
    return name


def model_preset(preset: str, model_name: str, n_layers: int) -> ModelPrecision:
    """The per-decoder config tt-transformers builds for `preset` on a model of `n_layers` decoders."""
    if preset not in _GENERIC:
        raise ConfigError(f"unknown preset {shown(preset)} (expected one of {', '.join(PRESETS)})")
    check_decoder_count(n_layers, "--layers")
    generic = _GENERIC[preset]
    path = override_file(model_name, preset)
    if path is None:
        return ModelPrecision.uniform(generic(model_name), n_layers)
    parsed = read_decoder_config(path, generic, preset)
    for finding in parsed.findings(n_layers):
        if finding.level != "note":
            warnings.warn(f"{path}: {finding.message}; using {n_layers} decoders", ConfigWarning, 2)
    # Decoders the file lacks would crash tt-transformers; the file's author meant the model's own preset there.
    return parsed.fit(n_layers, generic(model_name))
