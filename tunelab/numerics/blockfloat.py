"""Host block-float conversion (bfp8_b, bfp4_b) bit-exact with ttnn 0.81.1 `ttnn.Tensor(x, dtype, TILE_LAYOUT)`.

A block is 16 consecutive elements along the last dimension; the last dimension is zero-padded to a multiple of
16 (zero pads never raise a shared exponent, so this equals ttnn's padding to 32). Rules: numerics.md section 1.1.
"""

import torch
import torch.nn.functional as F

from tunelab.numerics.bits import EXPONENT_MASK, HIDDEN_BIT, MANTISSA_MASK, bits_float, float_bits

BLOCK = 16
MANTISSA_BITS = {"bfp8": 7, "bfp4": 3}

_CPU_CHUNK_BLOCKS = 1 << 14  # 256K elements (1 MiB) per pass: keeps the fast path's working set in cache
_FAST_MIN_SHARED = 24  # below this shared exponent field the fast path's scalings leave fp32's normal range
_FAST_MAX_SHARED = 254  # 255 marks a block holding inf/NaN


def to_blocks(x: torch.Tensor) -> torch.Tensor:
    """View a contiguous float32 tensor as [n_blocks, 16], zero-padding the last dim to a multiple of 16."""
    pad = -x.shape[-1] % BLOCK
    return (F.pad(x, (0, pad)) if pad else x).reshape(-1, BLOCK)


def from_blocks(blocks: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Inverse of `to_blocks`: restore `shape`, dropping the padding."""
    width = shape[-1] + (-shape[-1] % BLOCK)
    padded = blocks.reshape(*shape[:-1], width)
    return padded if width == shape[-1] else padded[..., : shape[-1]].contiguous()


def quantize_bfp_reference(blocks: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Encode and decode [n, 16] float32 blocks step by step as numerics.md 1.1 states (slow, for checking)."""
    u = float_bits(blocks).to(torch.int64) & 0xFFFFFFFF
    sign = u >> 31
    exponent = (u >> 23) & 0xFF
    shared = exponent.amax(-1, keepdim=True)
    significand = torch.where(exponent == 0, 0, (u & MANTISSA_MASK) | HIDDEN_BIT)
    aligned = significand >> (shared - exponent).clamp(max=32)  # truncating; a shift of 32 or more gives 0
    dropped = 24 - mantissa_bits
    kept, rest, half = aligned >> dropped, aligned & ((1 << dropped) - 1), 1 << (dropped - 1)
    round_up = (rest > half) | ((rest == half) & ((kept & 1) == 1))  # nearest, ties to even
    magnitude = (kept + round_up.long()).clamp(max=(1 << mantissa_bits) - 1)  # saturate, never bump
    return decode_bfp(sign, magnitude, shared, mantissa_bits)


def decode_bfp(
    sign: torch.Tensor, magnitude: torch.Tensor, shared: torch.Tensor, mantissa_bits: int
) -> torch.Tensor:
    """Build the float32 bit pattern of (-1)^sign * magnitude * 2^(shared - 127 - (M-1)) by normalising magnitude.

    This is tt-metal's unpacker: the top set bit of the magnitude becomes the hidden bit and the exponent is
    lowered by the shift; a magnitude of 0 decodes to +0 (no -0). The exponent cannot underflow: a non-zero
    code never decodes below its source element's own exponent (ttnn agrees for shared exponents 1..13).
    """
    top_bit = sum((magnitude >= (1 << j)).long() for j in range(1, mantissa_bits))
    exponent = shared - (mantissa_bits - 1) + top_bit
    mantissa = (magnitude << (23 - top_bit)) & MANTISSA_MASK
    bits = (exponent << 23) | mantissa
    bits = torch.where(magnitude == 0, 0, bits - (sign << 31))  # int64 -> int32: the sign bit as 2^31 wraps
    return bits_float(bits.to(torch.int32))


def quantize_bfp_blocks(blocks: torch.Tensor, mantissa_bits: int) -> torch.Tensor:
    """Fast path of `quantize_bfp_reference`, bit-identical: a few in-cache float passes per chunk of blocks.

    With q = 2^(shared - 150) (the aligned significand's LSB), an element's code is
    RNE(trunc(x / q) / 2^D) with D = 24 - M; trunc, the magic-constant RNE and the power-of-two scalings are all
    exact while 24 <= shared <= 254 (or the block is all zeros/denormals). The remaining rare blocks (shared
    exponent 1..23, or inf/NaN) are redone by the reference.
    """
    out = torch.empty_like(blocks)
    shared = torch.empty(blocks.shape[0], 1, dtype=torch.int32, device=blocks.device)
    step = _CPU_CHUNK_BLOCKS if blocks.device.type == "cpu" else max(blocks.shape[0], 1)
    scratch = torch.empty(min(step, blocks.shape[0]), BLOCK, dtype=torch.int32, device=blocks.device)
    for start in range(0, blocks.shape[0], step):
        rows = slice(start, start + step)
        _fast_chunk(blocks[rows], mantissa_bits, out[rows], shared[rows], scratch[: out[rows].shape[0]])
    field = shared.squeeze(1) >> 23
    special = ((field > 0) & (field < _FAST_MIN_SHARED)) | (field > _FAST_MAX_SHARED)
    if special.any():
        index = special.nonzero().squeeze(1)
        out[index] = quantize_bfp_reference(blocks[index], mantissa_bits)
    return out


def _fast_chunk(
    x: torch.Tensor, mantissa_bits: int, out: torch.Tensor, shared: torch.Tensor, scratch: torch.Tensor
) -> None:
    """Quantise one chunk of [n, 16] blocks into `out` and store each block's shared exponent bits in `shared`."""
    dropped = 24 - mantissa_bits
    torch.bitwise_and(float_bits(x), EXPONENT_MASK, out=scratch)
    torch.amax(scratch, dim=-1, keepdim=True, out=shared)
    exp_bits = shared.clamp(_FAST_MIN_SHARED << 23, _FAST_MAX_SHARED << 23)
    to_lsb_units = bits_float((277 << 23) - exp_bits)  # 2^(150 - shared)
    from_lsb_units = bits_float(exp_bits - (23 << 23))  # 2^(shared - 150)
    magic = 1.5 * 2.0 ** (23 + dropped)  # x + magic - magic rounds to a multiple of 2^dropped, ties to even
    limit = float(((1 << mantissa_bits) - 1) << dropped)
    torch.mul(x, to_lsb_units, out=out)
    out.trunc_()  # drop the bits shifted out below the shared exponent's LSB
    out.add_(magic).sub_(magic)  # round to M bits; also turns -0 into +0
    out.clamp_(-limit, limit)  # saturate
    out.mul_(from_lsb_units)
