"""tt-transformers' `--decoder_config_file` JSON: write complete files, read files with its exact semantics.

Reading reproduces `parse_decoder_json` in `tt/model_config.py`: the decoder count is the highest listed id + 1,
unlisted decoders get the default preset evaluated for the placeholder model name "model", and a listed decoder's
`precision_cfg` / `fidelity_cfg` overlays the hard defaults (not the preset) when present and takes the preset's
values when absent. `DecoderConfigFile.findings` reports where a file will not do what its author probably meant.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Literal

from tunelab.errors import ConfigError
from tunelab.precision import DecoderPrecision, MathFidelity, ModelPrecision, OpGroup, Precision, TensorGroup

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

    def findings(self, n_layers: int | None = None) -> list[Finding]:
        """What differs from a complete, explicit file for a model of `n_layers` decoders."""
        found: list[Finding] = []
        count = self.precision.n_layers
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
    """Write a complete decoder_config JSON file for `--decoder_config_file`."""
    text = json.dumps(to_decoder_config(precision), indent=2) + "\n"
    Path(path).write_text(text)


def read_decoder_config(
    path: str | Path, default: Callable[[str], DecoderPrecision], default_name: str = "performance"
) -> DecoderConfigFile:
    """Read a decoder_config JSON file; malformed content raises one-line `ConfigError`s naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path}: malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}"
        ) from None
    return parse_decoder_config(data, default, default_name, source=str(path))


def parse_decoder_config(
    data: object,
    default: Callable[[str], DecoderPrecision],
    default_name: str = "performance",
    source: str = "<decoder_config>",
) -> DecoderConfigFile:
    """Parse decoder_config content with tt-transformers' semantics; `default` is its `default_optimization`."""
    if not isinstance(data, dict) or "decoders" not in data:
        raise ConfigError(f'{source}: top level must be an object with a "decoders" key')
    entries = data["decoders"]
    if not isinstance(entries, dict) or not entries:
        raise ConfigError(f'{source}: "decoders" must be a non-empty object of decoder ids')
    parsed: dict[int, DecoderPrecision] = {}
    partial: dict[int, tuple[str, ...]] = {}
    preset = default(PLACEHOLDER_MODEL)
    for key, entry in entries.items():
        decoder_id = _decoder_id(key, source)
        where = f"{source}: decoder {decoder_id}"
        if decoder_id in parsed:
            raise ConfigError(f"{where}: listed twice")
        parsed[decoder_id], partial_sections = _parse_decoder(entry, preset, where)
        if partial_sections:
            partial[decoder_id] = partial_sections
    count = max(parsed) + 1
    decoders = tuple(parsed.get(i, preset) for i in range(count))
    return DecoderConfigFile(ModelPrecision(decoders), tuple(sorted(parsed)), partial, default_name)


def _decoder_id(key: str, source: str) -> int:
    try:
        decoder_id = int(key)
    except ValueError:
        raise ConfigError(f"{source}: decoder id {key!r} is not an integer") from None
    if decoder_id < 0:
        raise ConfigError(f"{source}: decoder id {key!r} is negative")
    return decoder_id


def _parse_decoder(
    entry: object, preset: DecoderPrecision, where: str
) -> tuple[DecoderPrecision, tuple[str, ...]]:
    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: must be an object with precision_cfg and/or fidelity_cfg")
    unknown = sorted(set(entry) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (expected precision_cfg, fidelity_cfg)")
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
        raise ConfigError(f"{where}: must be an object of {keys.__name__} names")
    result = {}
    for key, value in section.items():
        if key not in keys.__members__:
            raise ConfigError(f"{where}: unknown key {key!r} (expected one of {_names(tuple(keys))})")
        if not isinstance(value, str) or value not in values.__members__ or values[value] not in allowed:
            hint = "; omit ACTIVATION to keep it mixed" if value == "MIXED" or value == "mixed" else ""
            raise ConfigError(
                f"{where}: {key}: invalid value {value!r} (expected one of {_names(allowed)}){hint}"
            )
        result[keys[key]] = values[value]
    return result


def _names(members: tuple) -> str:
    return ", ".join(m.name for m in members)


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
