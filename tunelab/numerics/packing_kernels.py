"""Numba CPU kernels for the bf16 / bfp packers: one pass over float32 bits, bit-identical to the torch models.

Inputs are flat uint32 views of contiguous float32 data; outputs are flat arrays of the same size. A bfp block is
16 consecutive elements of a row (the last dimension); a short last block acts as if zero-padded. Importing this
module needs numba: callers fall back to the torch implementations when it is missing.

A full block whose shared exponent field lies in [16, 254] (nearly every block) is packed by 16-lane SIMD code
written as LLVM vector IR (`_pack_block_lanes`): LLVM's auto-vectoriser handles neither the per-block max
reduction nor the short per-block loop well. Other blocks (inf/NaN, tiny values, a row's short last block) take
`_pack_block_exact`, a scalar transcription of the torch reference.

The kernels are single-threaded on purpose: numba's OpenMP layer and torch's OpenMP pool spin against each other
(`numba_setup`), and the work-queue layer costs tens of microseconds a call for no speed-up on 2 busy cores.
"""

import numpy as np
from llvmlite import ir
from numba import njit, types, uint64
from numba.core.base import BaseContext
from numba.extending import intrinsic

BLOCK = 16
_SIGN = 0x80000000
_EXPONENT = 0x7F800000
_BFP8_MAGNITUDE_MAX = 127
_BFP_UNITS = np.array([2.0 ** (shared - 133) for shared in range(256)])  # value of one bfp8 code step
_FAST_MIN_SHARED = 16  # from here up no bf16 denormal reaches half a code step, and all scales are normal
_FAST_MAX_SHARED = 254  # 255: the block holds inf (or NaN, which became inf)

_I32 = ir.IntType(32)
_LANES_I32 = ir.VectorType(_I32, BLOCK)
_LANES_F32 = ir.VectorType(ir.FloatType(), BLOCK)


# ---------------------------------------------------------------- scalar rounding


@njit(cache=True)
def _bf16_ties_away_bits(u: int) -> int:
    """Bits of fp32 `u` rounded to bf16 as the packer does: nearest, ties away; denormals -> ±0, NaN -> ±inf."""
    exponent = u & _EXPONENT
    if exponent == 0:
        return u & _SIGN
    if exponent == _EXPONENT:
        return (u & _SIGN) | _EXPONENT
    return (u + 0x8000) & 0xFFFF0000  # sign-magnitude: adding half an ulp rounds |x| ties-away


@njit(cache=True)
def _bf16_nearest_even_bits(u: int) -> int:
    """Bits of fp32 `u` rounded to bf16 as ttnn's host does: nearest-even, denormals kept, NaN -> 0x7FC00000."""
    if u & 0x7FFFFFFF > _EXPONENT:
        return 0x7FC00000
    return (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000


# ---------------------------------------------------------------- 16-lane block (LLVM vector IR)


def _lanes(value: int) -> ir.Constant:
    """Integer constant with `value` in all 16 lanes."""
    return ir.Constant(_LANES_I32, [value] * BLOCK)


def _block_pointer(
    context: BaseContext,
    builder: ir.IRBuilder,
    array_type: types.Array,
    array: ir.Value,
    start: ir.Value,
    lanes_type: ir.VectorType,
) -> ir.Value:
    """Pointer to array[start] as a pointer to 16 lanes."""
    data = context.make_array(array_type)(context, builder, array).data
    return builder.bitcast(builder.gep(data, [start]), lanes_type.as_pointer())


def _max_in_every_lane(builder: ir.IRBuilder, lanes: ir.Value) -> ir.Value:
    """Unsigned max of the 16 lanes, broadcast to all of them (butterfly: 4 shuffles and maxima)."""
    for distance in (8, 4, 2, 1):
        swapped = builder.shuffle_vector(
            lanes, lanes, ir.Constant(_LANES_I32, [i ^ distance for i in range(16)])
        )
        lanes = builder.select(builder.icmp_unsigned(">", lanes, swapped), lanes, swapped)
    return lanes


def _power_of_two_lanes(builder: ir.IRBuilder, exponent_field: ir.Value) -> ir.Value:
    """float32 lanes 2^(field - 127) from integer lanes holding a normal exponent field."""
    return builder.bitcast(builder.shl(exponent_field, _lanes(23)), _LANES_F32)


def _codes(builder: ir.IRBuilder, bits: ir.Value, shared: ir.Value, mask: ir.Value) -> ir.Value:
    """bfp8 codes (signed, magnitude masked) of the fp32 `bits` lanes in a block of `shared` in [16, 254].

    With the bf16 value v (ties away; no inf/NaN here, and a denormal stays below half a code step), the code is
    min(trunc(|v| / unit + 0.5), 127) & mask with unit = 2^(shared - 133), equal to the reference's integer
    shift-and-round: |v| / unit is exact while it matters (a scaled bf16 significand), and so is the + 0.5
    unless |v| / unit < 2^-9.
    """
    # |bf16 value| bits: adding half an ulp never carries into the sign bit below the inf exponent
    magnitude = builder.and_(builder.add(bits, _lanes(0x8000)), _lanes(0x7FFF0000))
    to_units = _power_of_two_lanes(builder, builder.sub(_lanes(260), shared))  # 2^(133 - shared)
    in_units = builder.fmul(builder.bitcast(magnitude, _LANES_F32), to_units)
    code = builder.fptosi(builder.fadd(in_units, ir.Constant(_LANES_F32, [0.5] * BLOCK)), _LANES_I32)
    code = builder.and_(builder.select(builder.icmp_signed("<", code, _lanes(127)), code, _lanes(127)), mask)
    return builder.select(builder.icmp_signed("<", bits, _lanes(0)), builder.neg(code), code)


@intrinsic
def _pack_block_lanes(typingctx, src, out, start, magnitude_mask):
    """Pack the full block src[start : start + 16] into out[...] if its shared exponent is in the SIMD range.

    Returns whether it did; the caller packs the block otherwise. bf16 rounding is monotonic in |bits|, so the
    shared exponent is that of the rounded largest magnitude, (max |bits| + 0x8000) >> 23 (out of range for
    inf/NaN and all-denormal blocks). Both arrays must be C-contiguous (the block is read as one vector).
    """
    if src.layout != "C" or out.layout != "C":
        return None

    def codegen(context, builder, signature, args):
        src_value, out_value, start_value, mask_value = args
        src_ptr = _block_pointer(context, builder, signature.args[0], src_value, start_value, _LANES_I32)
        bits = builder.load(src_ptr, align=4)
        largest = _max_in_every_lane(builder, builder.and_(bits, _lanes(0x7FFFFFFF)))
        shared = builder.lshr(builder.add(largest, _lanes(0x8000)), _lanes(23))
        first_lane = builder.extract_element(shared, ir.Constant(_I32, 0))
        offset = builder.sub(first_lane, ir.Constant(_I32, _FAST_MIN_SHARED))  # unsigned: below 16 wraps high
        in_range = builder.icmp_unsigned("<=", offset, ir.Constant(_I32, _FAST_MAX_SHARED - _FAST_MIN_SHARED))
        with builder.if_then(in_range, likely=True):
            mask = builder.insert_element(_lanes(0), builder.trunc(mask_value, _I32), ir.Constant(_I32, 0))
            mask = builder.shuffle_vector(mask, mask, _lanes(0))
            codes = builder.sitofp(_codes(builder, bits, shared, mask), _LANES_F32)
            unit = _power_of_two_lanes(builder, builder.sub(shared, _lanes(6)))  # 2^(shared - 133)
            out_ptr = _block_pointer(context, builder, signature.args[1], out_value, start_value, _LANES_F32)
            builder.store(builder.fmul(codes, unit), out_ptr, align=4)
        return in_range

    return types.boolean(src, out, start, magnitude_mask), codegen


# ---------------------------------------------------------------- blocks


@njit(cache=True, inline="always")
def _pack_block_exact(src: np.ndarray, out: np.ndarray, start: int, stop: int, magnitude_mask: int) -> None:
    """Pack src[start:stop] (one block, possibly short) into out[start:stop]: the reference's integer steps."""
    shared = 0
    for i in range(start, stop):
        shared = max(shared, (_bf16_ties_away_bits(np.int64(src[i])) >> 23) & 0xFF)
    unit = _BFP_UNITS[shared]
    for i in range(start, stop):
        bits = _bf16_ties_away_bits(np.int64(src[i]))
        exponent = (bits >> 23) & 0xFF
        significand = ((bits >> 16) & 0x7F) | 0x80 if exponent else 0  # hidden 1 + 7 bf16 mantissa bits
        shift = min(shared - exponent, 16) + 1  # code unit: one bit below the hidden 1 of the shared exponent
        magnitude = min((significand + (1 << (shift - 1))) >> shift, _BFP8_MAGNITUDE_MAX) & magnitude_mask
        signed = -magnitude if bits & _SIGN else magnitude  # a zero magnitude stays +0
        out[i] = np.float32(signed * unit)  # exact, or inf from 2^128 up


@njit(cache=True, inline="always")
def _pack_block(src: np.ndarray, out: np.ndarray, start: int, magnitude_mask: int) -> None:
    """Pack the full block src[start : start + 16] into out[...]."""
    if not _pack_block_lanes(src, out, uint64(start), magnitude_mask):
        _pack_block_exact(src, out, start, start + BLOCK, magnitude_mask)


# ---------------------------------------------------------------- kernels


@njit(cache=True)
def pack_bf16(src: np.ndarray, out: np.ndarray) -> None:
    """out[i] = packer bf16 rounding of the fp32 bits src[i] (uint32 in, uint32 out)."""
    for i in range(src.size):
        out[i] = _bf16_ties_away_bits(np.int64(src[i]))


@njit(cache=True)
def round_bf16_nearest_even(src: np.ndarray, out: np.ndarray) -> None:
    """out[i] = host (ttnn) bf16 rounding of the fp32 bits src[i] (uint32 in, uint32 out)."""
    for i in range(src.size):
        out[i] = _bf16_nearest_even_bits(np.int64(src[i]))


@njit(cache=True)
def pack_bfp(src: np.ndarray, out: np.ndarray, cols: int, magnitude_mask: int) -> None:
    """Pack rows of `cols` fp32 bits (flat uint32 `src`, not empty) to bfp8 codes and decode them to fp32 `out`.

    The magnitude keeps `magnitude_mask` bits: 0x7F for bfp8, 0x70 for bfp4 (bfp8's top 3 bits, truncated).
    """
    if cols % BLOCK == 0:
        cols = src.size  # whole blocks back to back: one long row
    full = cols // BLOCK
    for base in range(0, src.size, cols):
        for b in range(full):
            _pack_block(src, out, base + b * BLOCK, magnitude_mask)
        if cols % BLOCK:
            _pack_block_exact(src, out, base + full * BLOCK, base + cols, magnitude_mask)
