"""`quantize`: the float32 values ttnn's host conversion `ttnn.Tensor(x, dtype, TILE_LAYOUT)` stores."""

import torch

from tunelab.numerics.bf16 import round_bf16
from tunelab.numerics.bits import as_float32
from tunelab.numerics.blockfloat import MANTISSA_BITS, from_blocks, quantize_bfp_blocks, to_blocks

FORMATS = ("bf16", "bfp8", "bfp4")


def check_format(fmt: str) -> None:
    """Raise ValueError unless `fmt` is one of FORMATS."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")


def quantize(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Return x (rank >= 1, float32/bf16/fp16) as stored by ttnn 0.81.1 in `fmt`, as float32 of the same shape.

    Bit-exact with the host conversion: bf16 rounds to nearest-even; bfp8_b / bfp4_b share one exponent per 16
    consecutive elements of the last dimension (numerics.md 1.1 and 1.3).
    """
    check_format(fmt)
    if x.dim() == 0:
        raise ValueError("quantize needs a tensor of rank >= 1 (blocks run along the last dimension)")
    x = as_float32(x)
    if fmt == "bf16":
        return round_bf16(x)
    return from_blocks(quantize_bfp_blocks(to_blocks(x), MANTISSA_BITS[fmt]), x.shape)
