"""FP32 -> BF16 rounding as ttnn's host conversion does it: nearest, ties to even (numerics.md 1.3)."""

import numpy as np
import torch

try:
    from tunelab.numerics import packing_kernels
except ImportError:  # numba not installed: torch's cast plus a NaN fix-up
    packing_kernels = None


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to bf16 (RNE) and widen back: FLT_MAX -> inf, denormals are kept.

    Every NaN becomes the canonical quiet NaN 0x7FC00000, as in ttnn (torch's cast leaves device-specific bits).
    CPU float32 tensors outside autograd take a one-pass numba kernel; the rest take `round_bf16_reference`.
    """
    if packing_kernels is None or x.device.type != "cpu" or x.dtype != torch.float32 or x.requires_grad:
        return round_bf16_reference(x)
    x = x.contiguous()
    out = torch.empty_like(x)
    if x.numel():
        packing_kernels.round_bf16_nearest_even(
            x.numpy().reshape(-1).view(np.uint32), out.numpy().reshape(-1).view(np.uint32)
        )
    return out


def round_bf16_reference(x: torch.Tensor) -> torch.Tensor:
    """`round_bf16` through torch's cast (any device): cast, widen, then canonicalise NaNs."""
    y = x.to(torch.bfloat16).to(torch.float32)
    return y.masked_fill_(y.isnan(), float("nan"))
