"""tt-transformers' `--decoder_config_file` JSON: write complete files, read files with its exact semantics.

Reading reproduces `parse_decoder_json` in `tt/model_config.py`: the decoder count is the highest listed id + 1,
unlisted decoders get the default preset evaluated for the placeholder model name "model", and a listed decoder's
`precision_cfg` / `fidelity_cfg` overlays the hard defaults (not the preset) when present and takes the preset's
values when absent. `DecoderConfigFile.findings` reports where a file will not do what its author probably meant.
What tt-transformers would silently accept but is almost surely a mistake (a repeated key, a stray key, an id written
as " 1") is refused in one line that says what it would have done; sizes are bounded by MAX_DECODERS.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal, NoReturn

from tunelab.errors import ConfigError, TunelabError
from tunelab.files import atomic_write, read_text, shown
from tunelab.precision import (
    MAX_DECODERS,
    DecoderPrecision,
    MathFidelity,
    ModelPrecision,
    OpGroup,
    Precision,
    TensorGroup,
)

__all__ = [
    "DecoderConfigFile",
    "Finding",
    "parse_decoder_config",
    "read_decoder_config",
    "to_decoder_config",
    "write_decoder_config",
]

PLACEHOLDER_MODEL = "model"
_SECTIONS = ("precision_cfg", "fidelity_cfg")
_JSON_PRECISIONS = tuple(p for p in Precision if p is not Precision.MIXED)
# A complete file for MAX_DECODERS decoders is about 0.7 MB; anything far larger is not a decoder_config.
MAX_FILE_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class Finding:
    """Something a reader of a decoder_config file should know: an error makes the file unusable for the model."""

    level: Literal["error", "warning", "note"]
    message: str


@dataclass(frozen=True)
class DecoderConfigFile:
    """A parsed decoder_config: `precision` has exactly the decoders tt-transformers would build (max id + 1)."""

    precision: ModelPrecision
    listed: tuple[int, ...]
    partial: Mapping[int, tuple[str, ...]]
    default_name: str
    without_precision: tuple[int, ...] = ()

    def findings(self, n_layers: int | None = None) -> list[Finding]:
        """What differs from a complete, explicit file for a model of `n_layers` decoders."""
        found: list[Finding] = []
        count = self.precision.n_layers
        if self.without_precision:
            found.append(
                Finding(
                    "error",
                    f"{_listed(self.without_precision)} no precision_cfg: tt-transformers "
                    "substitutes the preset's, whose ACTIVATION is None, and raises ValueError "
                    "(give each listed decoder a precision_cfg, {} for the hard defaults)",
                )
            )
        if n_layers is not None and count < n_layers:
            found.append(
                Finding(
                    "error",
                    f"covers decoders 0..{count - 1} but the model has {n_layers}: tt-transformers raises "
                    f"KeyError for decoders {count}..{n_layers - 1}",
                )
            )
        if n_layers is not None and count > n_layers:
            beyond = [i for i in self.listed if i >= n_layers]
            found.append(
                Finding(
                    "warning",
                    f"decoder ids {_ranges(beyond)} are beyond the model's {n_layers} decoders and are never used",
                )
            )
        unlisted = sorted(set(range(min(count, n_layers or count))) - set(self.listed))
        if unlisted:
            found.append(
                Finding(
                    "note",
                    f"decoders {_ranges(unlisted)} are not listed: they get the generic {self.default_name} preset "
                    f"(no model-specific branch applies)",
                )
            )
        for decoder_id, sections in sorted(self.partial.items()):
            for section in sections:
                found.append(
                    Finding(
                        "note",
                        f"decoder {decoder_id}: {section} is partial: unlisted groups take the hard defaults, "
                        f"not the {self.default_name} preset",
                    )
                )
        return found

    def fit(self, n_layers: int, fill: DecoderPrecision) -> ModelPrecision:
        """Exactly `n_layers` decoders: missing ones become `fill`, ids beyond the model are dropped."""
        decoders = self.precision.decoders[:n_layers]
        return ModelPrecision(decoders + (fill,) * (n_layers - len(decoders)))


def to_decoder_config(precision: ModelPrecision) -> dict:
    """A complete decoder_config dict: every decoder and every group (ACTIVATION omitted when mixed)."""
    decoders = {}
    for index, decoder in enumerate(precision):
        tensors = {g.name: p.name for g, p in decoder.precisions.items() if p is not Precision.MIXED}
        ops = {op.name: f.name for op, f in decoder.fidelities.items()}
        decoders[str(index)] = {"precision_cfg": tensors, "fidelity_cfg": ops}
    return {"decoders": decoders}


def write_decoder_config(precision: ModelPrecision, path: str | Path) -> None:
    """Write a complete decoder_config JSON file for `--decoder_config_file`, atomically."""
    atomic_write(path, json.dumps(to_decoder_config(precision), indent=2) + "\n")


def read_decoder_config(
    path: str | Path, default: Callable[[str], DecoderPrecision], default_name: str = "performance"
) -> DecoderConfigFile:
    """Read a decoder_config JSON file; malformed content raises one-line `ConfigError`s naming the file."""
    try:
        text = read_text(path, "a decoder_config JSON file", MAX_FILE_BYTES)
    except TunelabError as exc:
        raise ConfigError(str(exc)) from None
    if not text.strip():
        raise ConfigError(f"{path}: is empty (expected a decoder_config JSON object)")
    try:
        data = _load_json(text)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_decoder_config(data, default, default_name, source=str(path))


def _load_json(text: str) -> object:
    """JSON as tt-transformers' `json.load` reads it, refusing what it would silently accept (repeated keys)."""
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_constant=_no_constant)
    except RecursionError:
        raise ConfigError("nested too deeply (a decoder_config is 4 levels deep)") from None
    except json.JSONDecodeError as exc:
        ends_early = exc.pos >= len(text.rstrip())
        hint = " (the file ends early: is it truncated?)" if ends_early else ""
        raise ConfigError(
            f"malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}{hint}"
        ) from None
    except ValueError:  # an integer with more digits than Python converts (4300)
        raise ConfigError("malformed JSON: a number has too many digits") from None


def _unique_keys(pairs: list[tuple[str, object]]) -> dict:
    seen: dict[str, object] = {}
    for key, value in pairs:
        if key in seen:
            raise ConfigError(
                f"key {shown(key)} appears twice in one object (tt-transformers would silently keep the last)"
            )
        seen[key] = value
    return seen


def _no_constant(name: str) -> NoReturn:
    raise ConfigError(f"malformed JSON: {name} is not a JSON value")


def parse_decoder_config(
    data: object,
    default: Callable[[str], DecoderPrecision],
    default_name: str = "performance",
    source: str = "<decoder_config>",
) -> DecoderConfigFile:
    """Parse decoder_config content with tt-transformers' semantics; `default` is its `default_optimization`."""
    entries = _decoder_entries(data, source)
    parsed: dict[int, DecoderPrecision] = {}
    partial: dict[int, tuple[str, ...]] = {}
    missing: list[int] = []
    preset = default(PLACEHOLDER_MODEL)
    for key, entry in entries.items():
        decoder_id = _decoder_id(str(key), source)
        where = f"{source}: decoder {decoder_id}"
        if decoder_id in parsed:
            raise ConfigError(f"{where}: listed twice (tt-transformers would keep the last)")
        parsed[decoder_id], partial_sections = _parse_decoder(entry, preset, where)
        if partial_sections:
            partial[decoder_id] = partial_sections
        if "precision_cfg" not in entry:
            missing.append(decoder_id)
    count = max(parsed) + 1
    decoders = tuple(parsed.get(i, preset) for i in range(count))
    return DecoderConfigFile(
        ModelPrecision(decoders), tuple(sorted(parsed)), partial, default_name, tuple(sorted(missing))
    )


def _decoder_entries(data: object, source: str) -> dict:
    if not isinstance(data, dict) or "decoders" not in data:
        found = f"an object with keys {_keys(data)}" if isinstance(data, dict) else shown(data)
        raise ConfigError(f'{source}: top level must be an object with a "decoders" key, found {found}')
    extra = [key for key in data if key != "decoders"]
    if extra:
        raise ConfigError(
            f'{source}: unknown top-level key {shown(extra[0])} (expected only "decoders"; '
            "tt-transformers would ignore it)"
        )
    entries = data["decoders"]
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(
            f'{source}: "decoders" must be a non-empty object of decoder ids, found {shown(entries)}'
        )
    return entries


def _keys(data: dict) -> str:
    names = ", ".join(shown(key, 20) for key in list(data)[:3])
    return f"{names}, ..." if len(data) > 3 else names or "none"


def _decoder_id(key: str, source: str) -> int:
    """A decoder id written as tunelab writes it: ASCII digits, below MAX_DECODERS."""
    if key.isascii() and key.isdigit():
        if len(key.lstrip("0")) > len(str(MAX_DECODERS)) or int(key) >= MAX_DECODERS:
            raise ConfigError(
                f"{source}: decoder id {shown(key)} is beyond the {MAX_DECODERS} decoders tunelab supports "
                "(the largest supported model has 126)"
            )
        return int(key)
    try:
        as_read = int(key) if len(key) <= 40 else None
    except ValueError:
        as_read = None
    if as_read is None:
        raise ConfigError(f"{source}: decoder id {shown(key)} is not an integer")
    what = "negative" if as_read < 0 else "not written as plain digits"
    raise ConfigError(
        f"{source}: decoder id {shown(key)} is {what} (tt-transformers would accept it as decoder {as_read})"
    )


def _parse_decoder(
    entry: object, preset: DecoderPrecision, where: str
) -> tuple[DecoderPrecision, tuple[str, ...]]:
    if not isinstance(entry, dict):
        raise ConfigError(
            f"{where}: must be an object with precision_cfg and/or fidelity_cfg, found {shown(entry)}"
        )
    unknown = [key for key in entry if key not in _SECTIONS]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key {shown(unknown[0])} (expected precision_cfg, fidelity_cfg; "
            "tt-transformers would ignore it)"
        )
    decoder = DecoderPrecision()
    partial: list[str] = []
    if "precision_cfg" in entry:
        tensors = _section(
            entry["precision_cfg"], TensorGroup, Precision, _JSON_PRECISIONS, f"{where}: precision_cfg"
        )
        decoder = decoder.overlay(precisions=tensors)
        if not set(TensorGroup) - {TensorGroup.ACTIVATION} <= set(tensors):
            partial.append("precision_cfg")
    else:
        decoder = decoder.overlay(precisions=preset.precisions)
    if "fidelity_cfg" in entry:
        ops = _section(
            entry["fidelity_cfg"], OpGroup, MathFidelity, tuple(MathFidelity), f"{where}: fidelity_cfg"
        )
        decoder = decoder.overlay(fidelities=ops)
        if set(ops) != set(OpGroup):
            partial.append("fidelity_cfg")
    else:
        decoder = decoder.overlay(fidelities=preset.fidelities)
    return decoder, tuple(partial)


def _section(section: object, keys: type[Enum], values: type[Enum], allowed: tuple, where: str) -> dict:
    if not isinstance(section, dict):
        raise ConfigError(f"{where}: must be an object of {keys.__name__} names, found {shown(section)}")
    result = {}
    for key, value in section.items():
        if key not in keys.__members__:
            raise ConfigError(
                f"{where}: unknown key {shown(key)} "
                f"(expected one of {_names(tuple(keys))}{_case_hint(key, keys.__members__)})"
            )
        if not isinstance(value, str) or value not in values.__members__ or values[value] not in allowed:
            raise ConfigError(f"{where}: {key}: invalid value {shown(value)}{_value_hint(value, allowed)}")
        result[keys[key]] = values[value]
    return result


def _case_hint(name: object, members: Mapping) -> str:
    return "; JSON uses upper-case names" if isinstance(name, str) and name.upper() in members else ""


def _value_hint(value: object, allowed: tuple) -> str:
    expected = f" (expected one of {_names(allowed)})"
    if value in ("MIXED", "mixed"):
        return f"{expected}; omit ACTIVATION to keep it mixed"
    if isinstance(value, str) and value.upper() in {m.name for m in allowed}:
        return f"{expected}; JSON uses upper-case names"
    return expected


def _names(members: tuple) -> str:
    return ", ".join(m.name for m in members)


def _listed(ids: tuple[int, ...]) -> str:
    """`decoder 3 has` or `decoders 0-2, 5 have`."""
    return f"decoder {ids[0]} has" if len(ids) == 1 else f"decoders {_ranges(list(ids))} have"


def _ranges(ids: list[int]) -> str:
    """Compact "0-3, 7, 9-10" rendering of sorted ids."""
    parts: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        parts.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(parts)
