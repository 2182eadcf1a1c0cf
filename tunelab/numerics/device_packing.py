"""On-device packer model: how an op writes bf16 / bfp8_b / bfp4_b outputs (and KV-cache entries) from Dst.

Documented but UNVERIFIED (no chip was available): tt-isa-documentation `Packers/FormatConversion.md`, summarised
in numerics.md 1.5. It differs from the host conversion in `quantize`: rounding is to nearest with ties AWAY from
zero, denormals are flushed, NaN becomes inf, BFP8 is made from the bf16-rounded value and BFP4 by truncating
the BFP8 magnitude (so it is biased toward zero).

`pack_on_device` runs a single-pass numba kernel on CPU tensors (`packing_kernels`) and the torch model
`pack_on_device_reference` elsewhere (CUDA) or when numba is missing; both give the same bits.
"""

import numpy as np
import torch

from tunelab.numerics.bits import EXPONENT_MASK, SIGN_BIT, as_float32, bits_float, float_bits, int32_mask
from tunelab.numerics.blockfloat import from_blocks, to_blocks
from tunelab.numerics.host import check_format

try:
    from tunelab.numerics import packing_kernels
except ImportError:  # numba not installed: the torch model does all the work
    packing_kernels = None

_BFP8_MAGNITUDE_MAX = 127
_MAGNITUDE_MASKS = {"bfp8": 0x7F, "bfp4": 0x70}  # bfp4 keeps the top 3 of bfp8's 7 magnitude bits


def pack_on_device(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Return the float32 values the Tensix packer would store for x in `fmt` (same shape; unverified model).

    bf16: ties-away rounding of fp32. bfp8: that bf16 value aligned to the shared exponent of its 16-element
    block (last dim) and rounded to 7 magnitude bits, ties away, saturating. bfp4: the bfp8 magnitude truncated
    to its top 3 bits (mag4 = mag7 >> 4). CPU tensors take the numba kernels, others the torch reference.
    """
    _check_args(x, fmt)
    if packing_kernels is None or x.device.type != "cpu":
        return pack_on_device_reference(x, fmt)
    return _pack_on_cpu(as_float32(x), fmt)


def pack_on_device_reference(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """`pack_on_device` as a few whole-tensor torch passes (any device; the model the CPU kernels must match)."""
    _check_args(x, fmt)
    x = round_bf16_ties_away(as_float32(x))
    if fmt == "bf16":
        return x
    return from_blocks(_pack_bfp8_blocks(to_blocks(x), _MAGNITUDE_MASKS[fmt]), x.shape)


def _check_args(x: torch.Tensor, fmt: str) -> None:
    check_format(fmt)
    if x.dim() == 0:
        raise ValueError("pack_on_device needs a tensor of rank >= 1 (blocks run along the last dimension)")


def _pack_on_cpu(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """Run the numba kernel for `fmt` on a contiguous float32 CPU tensor, reading its bits in place."""
    out = torch.empty_like(x)
    if x.numel() == 0:
        return out
    src = x.numpy().reshape(-1).view(np.uint32)
    dst = out.numpy().reshape(-1)
    if fmt == "bf16":
        packing_kernels.pack_bf16(src, dst.view(np.uint32))
    else:
        packing_kernels.pack_bfp(src, dst, x.shape[-1], _MAGNITUDE_MASKS[fmt])
    return out


def round_bf16_ties_away(x: torch.Tensor) -> torch.Tensor:
    """FP32 -> BF16 as the packer rounds: nearest, ties away from zero; denormals -> ±0, NaN -> ±inf."""
    u = float_bits(x)
    exponent = u & EXPONENT_MASK
    rounded = (u + 0x8000) & int32_mask(0xFFFF0000)  # sign-magnitude: adding half an ulp rounds |x| ties-away
    out = torch.where(exponent == 0, u & SIGN_BIT, rounded)
    out = torch.where(exponent == EXPONENT_MASK, (u & SIGN_BIT) | EXPONENT_MASK, out)
    return bits_float(out)


def _pack_bfp8_blocks(blocks: torch.Tensor, magnitude_mask: int) -> torch.Tensor:
    """Pack [n, 16] bf16-valued blocks to BFP8 codes (ties away, saturating), keep `magnitude_mask` bits, decode."""
    u = float_bits(blocks)
    exponent = (u >> 23) & 0xFF
    significand = torch.where(exponent == 0, 0, ((u >> 16) & 0x7F) | 0x80)  # 8 bits: hidden 1 + bf16 mantissa
    shared = exponent.amax(-1, keepdim=True)
    shift = (shared - exponent).clamp(max=16) + 1  # code unit is 2^(shared-133): one bit below the hidden 1
    magnitude = ((significand + (1 << (shift - 1))) >> shift).clamp(max=_BFP8_MAGNITUDE_MAX) & magnitude_mask
    signed = torch.where(u < 0, -magnitude, magnitude).to(torch.float64)
    return (signed * torch.exp2((shared - 133).to(torch.float64))).to(torch.float32)  # 2^128 and up -> inf
