"""The emulated backend: tt-transformers' decoder dataflow with Tenstorrent numerics, on CPU or CUDA."""

from tunelab.backends.emulated.factory import emulator_for
from tunelab.backends.emulated.model import EmulatedModel
from tunelab.backends.emulated.ops import EmulatorOptions

__all__ = ["EmulatedModel", "EmulatorOptions", "emulator_for"]
