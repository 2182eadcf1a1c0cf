"""Bit-exact emulation of Tenstorrent number formats, packers and FPU matmul fidelity (numerics.md)."""

from tunelab.numerics import numba_setup  # noqa: F401  (first: configures numba before kernel modules import it)
from tunelab.numerics.device_packing import pack_on_device
from tunelab.numerics.fidelity import (
    FIDELITY_PHASES,
    SrcA,
    fidelity_matmul,
    fidelity_matmul_reference,
    phase_sum,
    split_phases,
)
from tunelab.numerics.host import FORMATS, quantize

__all__ = [
    "FIDELITY_PHASES",
    "FORMATS",
    "SrcA",
    "fidelity_matmul",
    "fidelity_matmul_reference",
    "pack_on_device",
    "phase_sum",
    "quantize",
    "split_phases",
]
