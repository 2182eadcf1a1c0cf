"""tt-transformers' `--optimizations` string: one uniform config as a diff over the hard defaults.

Format (lower-case enum values, both sections required and non-empty):
`precision_cfg = {ff1_3: bfp4, ...}, fidelity_cfg = {li_ff1_3: lofi, ...}`; `activation: mixed` keeps the default.
"""

from __future__ import annotations

from enum import Enum

from tunelab.errors import ConfigError
from tunelab.precision import DecoderPrecision, MathFidelity, OpGroup, Precision, TensorGroup

__all__ = ["parse_optimizations", "to_optimizations"]


def to_optimizations(decoder: DecoderPrecision) -> str:
    """The full string tt-transformers prints as a config's name (`_full_name`); it parses back unchanged."""
    tensors = ", ".join(f"{g.value}: {p.value}" for g, p in decoder.precisions.items())
    ops = ", ".join(f"{op.value}: {f.value}" for op, f in decoder.fidelities.items())
    return f"precision_cfg = {{{tensors}}}, fidelity_cfg = {{{ops}}}"


def parse_optimizations(text: str) -> DecoderPrecision:
    """Parse like tt-transformers' `parse_optimizations`: the listed groups overlay the hard defaults."""
    tensors = _pairs(text, "precision_cfg", TensorGroup, Precision)
    for group, precision in tensors.items():
        if precision is Precision.MIXED and group is not TensorGroup.ACTIVATION:
            raise ConfigError(
                f"--optimizations: precision_cfg: {group.value}: 'mixed' is only valid for activation"
            )
    ops = _pairs(text, "fidelity_cfg", OpGroup, MathFidelity)
    return DecoderPrecision().overlay(tensors, ops)


def _pairs(text: str, section: str, keys: type[Enum], values: type[Enum]) -> dict:
    where = f"--optimizations: {section}"
    start = text.find(section)
    if start < 0:
        raise ConfigError(f"{where} is missing (both precision_cfg and fidelity_cfg are required)")
    open_brace = text.find("{", start)
    close_brace = text.find("}", open_brace)
    if open_brace < 0 or close_brace < 0:
        raise ConfigError(f"{where}: expected '{{...}}' after {section}")
    body = text[open_brace + 1 : close_brace]
    if not body.strip():
        raise ConfigError(f"{where} is empty (tt-transformers needs at least one 'key: value' pair)")
    result = {}
    for pair in body.split(","):
        parts = pair.split(":")
        if len(parts) != 2:
            raise ConfigError(f"{where}: {pair.strip()!r} is not a 'key: value' pair")
        key, value = (p.strip() for p in parts)
        valid_keys = [m.value for m in keys]
        if key not in valid_keys:
            raise ConfigError(f"{where}: unknown key {key!r} (expected one of {', '.join(valid_keys)})")
        valid_values = [m.value for m in values]
        if value not in valid_values:
            raise ConfigError(
                f"{where}: {key}: invalid value {value!r} (expected one of {', '.join(valid_values)})"
            )
        result[keys(key)] = values(value)
    return result
