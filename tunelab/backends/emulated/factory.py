"""The emulator of a loaded checkpoint: its canonical weights and the reference model's RoPE."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.backends.emulated.model import EmulatedModel

if TYPE_CHECKING:
    import torch

    from tunelab.backends.emulated.ops import EmulatorOptions
    from tunelab.models.loader import LoadedModel

__all__ = ["emulator_for"]


def emulator_for(
    loaded: LoadedModel, options: EmulatorOptions | None = None, device: str | torch.device = "cpu"
) -> EmulatedModel:
    """An `EmulatedModel` of `loaded` (from `tunelab.models.load_model`) with `options` on `device`."""
    return EmulatedModel(loaded.config, loaded.weights, loaded.hf_model.model.rotary_emb, options, device)
