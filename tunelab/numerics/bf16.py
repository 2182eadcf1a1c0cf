"""FP32 -> BF16 rounding as ttnn's host conversion does it: nearest, ties to even (numerics.md 1.3)."""

import torch


def round_bf16(x: torch.Tensor) -> torch.Tensor:
    """Round float32 values to bf16 (RNE) and widen back: FLT_MAX -> inf, denormals are kept.

    Every NaN becomes the canonical quiet NaN 0x7FC00000, as in ttnn (torch's cast leaves device-specific bits).
    """
    y = x.to(torch.bfloat16).to(torch.float32)
    return y.masked_fill_(y.isnan(), float("nan"))
