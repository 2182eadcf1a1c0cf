"""Bit-level views of float32 tensors, the raw material of every format emulation in this package."""

import torch

SIGN_BIT = -0x80000000  # 0x80000000 as a signed int32
EXPONENT_MASK = 0x7F800000
MANTISSA_MASK = 0x007FFFFF
HIDDEN_BIT = 0x00800000

_WIDENED_EXACTLY = (torch.float32, torch.bfloat16, torch.float16)


def int32_mask(mask: int) -> int:
    """Return a 32-bit hex mask such as 0xFFFE0000 as the signed int32 value torch bit ops accept."""
    return mask - (1 << 32) if mask >= 1 << 31 else mask


def as_float32(x: torch.Tensor) -> torch.Tensor:
    """Detached, contiguous float32 copy or view of a float32/bf16/fp16 tensor (exact; other dtypes rejected)."""
    if x.dtype not in _WIDENED_EXACTLY:
        raise TypeError(f"expected a float32, bfloat16 or float16 tensor, got {x.dtype}")
    return x.detach().to(torch.float32).contiguous()


def float_bits(x: torch.Tensor) -> torch.Tensor:
    """Reinterpret a float32 tensor as its int32 bit patterns (no copy)."""
    return x.view(torch.int32)


def bits_float(u: torch.Tensor) -> torch.Tensor:
    """Reinterpret int32 bit patterns as float32 (no copy)."""
    return u.view(torch.float32)


def flush_denormals(x: torch.Tensor) -> torch.Tensor:
    """Replace float32 denormals by zero of the same sign, as the Tensix FPU and packers do."""
    u = float_bits(x)
    return bits_float(torch.where((u & EXPONENT_MASK) == 0, u & SIGN_BIT, u))
