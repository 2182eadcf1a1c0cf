"""What tt-transformers refuses or adjusts per (model, device): its prefill-chunk table and MLP padding defaults.

Data in `data/tt_transformers.json` (tt_transformers.md sections 6.1-6.2), keyed by base model name.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

from tunelab.errors import TunelabError
from tunelab.models.config import ModelConfig
from tunelab.perf.devices import Device
from tunelab.presets import base_model_name

__all__ = ["Unsupported", "check_supported", "max_prefill_chunk", "padded_hidden_dim"]


class Unsupported(TunelabError):
    """A model tt-transformers refuses to run on a device."""


@cache
def _table() -> dict:
    return json.loads(resources.files("tunelab.perf").joinpath("data/tt_transformers.json").read_text())


def _entry(section: dict, model_name: str):
    """The table entry for a model: keyed by base name, or a prefix of the HF basename (e.g. Phi-3-mini-128k)."""
    base = base_model_name(model_name)
    for key, value in section.items():
        if key in (base, model_name) or model_name.startswith(key + "-"):
            return value
    return None


def max_prefill_chunk(model_name: str, device: Device) -> int | None:
    """Largest prefill chunk in tokens; None where tt-transformers asserts the model is unsupported on the device."""
    row = _entry(_table()["max_prefill_chunk_div1024"], model_name) or {}
    value = row.get(device.name, _table()["default_max_prefill_chunk_div1024"])
    return None if value is None else value * 1024


def padded_hidden_dim(model: ModelConfig, device: Device) -> int:
    """The MLP hidden size tt-transformers allocates: PAD_MLP_CORES rounds it up to cores x 32 x chips."""
    cores = _entry(_table()["pad_mlp_cores"], model.name) or 0
    if not cores:
        return model.hidden_dim
    multiple = cores * 32 * device.chips
    return -(-model.hidden_dim // multiple) * multiple


def check_supported(model: ModelConfig, device: Device) -> None:
    """Raise `Unsupported` (one line) where tt-transformers would refuse the model on the device."""
    if max_prefill_chunk(model.name, device) is None:
        raise Unsupported(
            f"tt-transformers does not run {model.name} on {device.name} "
            "(its MAX_PREFILL_CHUNK_SIZES_DIV1024 entry is None: 'unsupported model on device')"
        )
    head_split = max(device.mesh)
    if model.n_heads % head_split:
        raise Unsupported(
            f"tt-transformers splits attention heads over chips: {model.name}'s {model.n_heads} heads "
            f"do not divide over {head_split} chips of {device.name}"
        )
