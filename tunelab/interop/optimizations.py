"""tt-transformers' `--optimizations` string: one uniform config as a diff over the hard defaults.

Format (lower-case enum values, both sections required and non-empty):
`precision_cfg = {ff1_3: bfp4, ...}, fidelity_cfg = {li_ff1_3: lofi, ...}`; `activation: mixed` keeps the default.
"""

from __future__ import annotations

import re
from enum import Enum

from tunelab.errors import ConfigError
from tunelab.files import shown
from tunelab.precision import DecoderPrecision, MathFidelity, OpGroup, Precision, TensorGroup

__all__ = ["parse_optimizations", "to_optimizations"]

_SECTIONS = ("precision_cfg", "fidelity_cfg")
_SPACE = re.compile(r"\s*")
_HEAD = re.compile(r"(\w+)\s*=?\s*")  # a section name and its optional "="
_BODY = re.compile(r"\{([^{}]*)\}\s*")
_SEPARATOR = re.compile(r"\s*(,\s*)?")
_OUTSIDE = "tt-transformers ignores text outside its two sections"


def to_optimizations(decoder: DecoderPrecision) -> str:
    """The full string tt-transformers prints as a config's name (`_full_name`); it parses back unchanged."""
    tensors = ", ".join(f"{g.value}: {p.value}" for g, p in decoder.precisions.items())
    ops = ", ".join(f"{op.value}: {f.value}" for op, f in decoder.fidelities.items())
    return f"precision_cfg = {{{tensors}}}, fidelity_cfg = {{{ops}}}"


def parse_optimizations(text: str) -> DecoderPrecision:
    """Parse like tt-transformers' `parse_optimizations`: the listed groups overlay the hard defaults.

    Stricter than tt-transformers, which finds each section name anywhere in the text and ignores the rest: here the
    string must be exactly the two sections, each once, with each key once; such errors say what it would do.
    """
    sections = _sections(text)
    tensors = _pairs(sections, "precision_cfg", TensorGroup, Precision)
    for group, precision in tensors.items():
        if precision is Precision.MIXED and group is not TensorGroup.ACTIVATION:
            raise ConfigError(
                f"--optimizations: precision_cfg: {group.value}: 'mixed' is only valid for activation"
            )
    ops = _pairs(sections, "fidelity_cfg", OpGroup, MathFidelity)
    return DecoderPrecision().overlay(tensors, ops)


def _sections(text: str) -> dict[str, str]:
    """Section name -> the text between its braces, for `NAME = {...}` sections separated by commas."""
    sections: dict[str, str] = {}
    pos = _SPACE.match(text).end()
    while pos < len(text):
        head = _HEAD.match(text, pos)
        if head is None:
            raise ConfigError(
                f"--optimizations: unexpected text {shown(text[pos:])} at column {pos + 1} (expected "
                f"precision_cfg = {{...}}, fidelity_cfg = {{...}}; {_OUTSIDE})"
            )
        name = head.group(1)
        _check_section_name(name, sections)
        body = _BODY.match(text, head.end())
        if body is None:
            raise ConfigError(f"--optimizations: expected '{{...}}' after {name}")
        sections[name] = body.group(1)
        pos = _SEPARATOR.match(text, body.end()).end()
    return sections


def _check_section_name(name: str, sections: dict[str, str]) -> None:
    if name in sections:
        raise ConfigError(
            f"--optimizations: {name} is given twice (tt-transformers would accept it and use the first)"
        )
    if name not in _SECTIONS:
        inside = next((s for s in _SECTIONS if s in name), None)
        would = f"tt-transformers would accept it as {inside}" if inside else _OUTSIDE
        raise ConfigError(
            f"--optimizations: unknown section {shown(name)} (expected precision_cfg and fidelity_cfg; {would})"
        )


def _pairs(sections: dict[str, str], section: str, keys: type[Enum], values: type[Enum]) -> dict:
    where = f"--optimizations: {section}"
    if section not in sections:
        raise ConfigError(f"{where} is missing (both precision_cfg and fidelity_cfg are required)")
    body = sections[section]
    if not body.strip():
        raise ConfigError(f"{where} is empty (tt-transformers needs at least one 'key: value' pair)")
    result = {}
    for pair in body.split(","):
        key, value = _pair(pair, where)
        valid_keys = [m.value for m in keys]
        if key not in valid_keys:
            raise ConfigError(f"{where}: unknown key {shown(key)} (expected one of {', '.join(valid_keys)})")
        valid_values = [m.value for m in values]
        if value not in valid_values:
            raise ConfigError(
                f"{where}: {key}: invalid value {shown(value)} (expected one of {', '.join(valid_values)})"
            )
        if keys(key) in result:
            raise ConfigError(
                f"{where}: {key} is given twice (tt-transformers would accept it and keep the last, {value})"
            )
        result[keys(key)] = values(value)
    return result


def _pair(pair: str, where: str) -> tuple[str, str]:
    parts = pair.split(":")
    if len(parts) != 2:
        raise ConfigError(f"{where}: {shown(pair.strip())} is not a 'key: value' pair")
    key, value = (p.strip() for p in parts)
    return key, value
