"""A one-pass numba kernel that prepares FPU operands on the CPU: flush denormals, keep the masked bits."""

import numpy as np
import torch
from numba import njit

from tunelab.numerics.bits import as_float32


@njit(cache=True)
def _flush_and_mask(src: np.ndarray, out: np.ndarray, mask: int) -> None:
    for i in range(src.size):
        u = src[i]
        out[i] = (u & 0x80000000) if u & 0x7F800000 == 0 else (u & mask)


def flush_and_mask(x: torch.Tensor, mask: int) -> torch.Tensor:
    """x & mask of a CPU float tensor after flushing denormals to signed zero, in one pass (float32 out)."""
    x = as_float32(x)
    out = torch.empty_like(x)
    _flush_and_mask(_u32(x), _u32(out), np.uint32(mask))
    return out


def _u32(t: torch.Tensor) -> np.ndarray:
    return t.view(torch.int32).numpy().view(np.uint32).reshape(-1)
