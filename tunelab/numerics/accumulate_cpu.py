"""Exact bf16-Dst matmul on CPU: numba kernels bit-identical to `fidelity_matmul_reference` (bf16 Dst).

Semantics (fidelity.py): for each 32-wide K tile, each fidelity phase, each 16-wide K face,
    partial = fp32_RNE(float64 sum of the 16 products, in k order)
    Dst     = bf16_RNE(fp32(Dst + partial))
A product of two masked parts (float32 values) is exact in float64, so a fused multiply-add gives the same bits
as the reference's multiply-then-add and the compiler may contract them.

Two paths compute a face's partial, chosen per (row, face, block of COLS columns):
- fp32 (16 SIMD lanes), when the fp32 chain is provably exact. Let b_k (k = 0..15) be the row's parts and a_k a
  column's, Lb and La the exponents of the lowest set bit over the nonzero b_k and a_k. Every product is an
  integer multiple of 2^(Lb+La), and every prefix sum of them is at most S = sum|b_k| * max|a_k| in magnitude,
  so it is n * 2^(Lb+La) with |n| <= S / 2^(Lb+La). If that is below 2^24, S < 2^127 (no overflow) and
  Lb + La >= -126 (no denormals, so no flush-to-zero setting matters), every fp32 product and addition is exact:
  the fp32 chain is the exact sum, which is also the float64 chain's value. The test runs in log2 terms on
  per-(row, face) and per-(column block, face) bounds made once with the operand split. On randn data with bf16
  activations it passes for 99% of the (row, face, block) triples at LoFi with bfp4 weights, 88% / 99.6% for
  the two HiFi2 phases with bfp8 weights, 0% / 7% / 82% / 94% for the four HiFi4 phases with bf16 weights.
- float64 (8 lanes), in k order, otherwise. An in-order fp32 chain is no substitute: on randn data it differs
  from fp32_RNE(exact sum) in 2e-5 (bfp4, LoFi) to 5e-3 (bf16 weights) of the partials. The float64 chain is exact
  whenever the 16 products lie within 2^37 of each other (12-bit products, 4 carry bits, 53-bit significand);
  beyond that the in-order float64 sum is the definition, shared with the reference.

Layout: x is split on each call into float32 phase parts [parts, M, Kp] with per-(row, face) bounds. w is split
once into `Panels` (`split_weights`; a SrcA keeps them across calls): uint16 column panels [parts, N / COLS, Kp,
COLS], plane 0 the high and plane 1 the low 16 bits of w's masked (`all`) bits, with per-(panel, face) bounds (2
bytes per element for LoFi, 4 for more phases; bf16 patterns of hi and lo would not hold every lo part exactly).
The high part needs plane 0 only (its mask keeps no low bits), lo = all - hi both. A job widens one face of a
panel, a contiguous 16 x COLS block, into a float32 buffer that its ROWS rows then read from one base register (a
[K, N] row stride that is a multiple of 4 KiB would also alias in L1); the float64 path widens on load. Each job
owns ROWS x COLS outputs and walks all of K; the inner loop runs over the COLS columns of one row (SIMD across
columns changes no result: columns are independent).

Compiled code is cached (numba cache=True: `__pycache__` next to this file, or numba's user-wide cache dir when
that is read-only; NUMBA_CACHE_DIR overrides both). Threads follow torch.get_num_threads().
"""

from typing import NamedTuple

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types, uintp
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

ROWS, COLS = 128, 64  # outputs per job; tuned on a 2-core AMD EPYC (Zen 4) for the SmolLM2 MLP shapes
K_TILE, K_FACE = 32, 16
_R1, _R2, _R3, _R4, _R5, _R6, _R7, _R8, _R9, _R10, _R11, _R12, _R13, _R14, _R15 = (
    uintp(k * COLS) for k in range(1, 16)
)
_EXPONENT, _SIGN, _ABS = np.uint32(0x7F800000), np.uint32(0x80000000), np.uint32(0x7FFFFFFF)
_INF, _QNAN, _HIDDEN = np.uint32(0x7F800000), np.uint32(0x7FC00000), np.uint32(0x00800000)
_HALF_MINUS_ONE, _BF16_KEEP, _LOW_HALF = np.uint32(0x7FFF), np.uint32(0xFFFF0000), np.uint32(0xFFFF)
_SIXTEEN, _ONE = np.uint32(16), np.uint32(1)
# fp32-path bounds per face: (log2 magnitude - lowest set bit, log2 magnitude, lowest set bit); +inf forces
# float64, an empty face never limits
_BITS, _MAGNITUDE, _LOWEST = 0, 1, 2
_NO_BIT, _U23, _U255 = np.uint32(1 << 20), np.uint32(23), np.uint32(255)  # _NO_BIT: above every `_measure`
_SIGNIFICAND_BITS, _LOG2_LIMIT, _LOWEST_LIMIT = 24.0, 127.0, -126.0


class Panels(NamedTuple):
    """Weights w [K, N] split for the kernel (module docstring): `halves` uint16 [parts, ceil(N / COLS), Kp,
    COLS], `bounds` [parts, panels, Kp / K_FACE, 3], made with `masks` (hi, all)."""

    halves: np.ndarray
    bounds: np.ndarray
    k: int
    n: int
    masks: tuple[int, int]

    def serves(self, phases: int) -> bool:
        """Whether these panels hold the parts that `phases` phases read."""
        return self.halves.shape[0] >= _weight_parts(phases)


def _weight_parts(phases: int) -> int:
    """Parts of w that `phases` phases read: hi for LoFi, hi and lo beyond."""
    return 2 if phases > 1 else 1


@intrinsic
def _bits_f32(typingctx, bits):
    """Reinterpret a uint32 as float32."""
    return types.float32(types.uint32), lambda context, builder, sig, args: builder.bitcast(
        args[0], ir.FloatType()
    )


@intrinsic
def _f32_bits(typingctx, value):
    """Reinterpret a float32 as uint32."""
    return types.uint32(types.float32), lambda context, builder, sig, args: builder.bitcast(
        args[0], ir.IntType(32)
    )


@njit(inline="always")
def _masked(u, mask):
    """The bits of float32 bits u under mask, a denormal flushed to signed zero."""
    return (u & _SIGN) if (u & _EXPONENT) == 0 else (u & mask)


@njit(inline="always")
def _measure(u):
    """The lowest set bit + 150 of float32 bits u (v = m * 2^e, 24-bit m: e + 150 + trailing zeros of m), or
    _NO_BIT for a zero and 0 for a denormal, inf or NaN (the fp32 path's bounds measure normal values only)."""
    magnitude = u & _ABS
    exponent = magnitude >> _U23
    if magnitude == 0:
        return _NO_BIT
    return np.uint32(0) if exponent == 0 or exponent == _U255 else exponent + trailing_zeros(u | _HIDDEN)


@njit(inline="always")
def _face_bounds(magnitude, lowest_bit):
    """(log2 magnitude - lowest, log2 magnitude, lowest) of a face's values from their sum or max |v| and the
    least `_measure`; a special value forces float64."""
    if lowest_bit == 0:
        return np.inf, np.inf, -np.inf
    lowest = np.inf if lowest_bit == _NO_BIT else np.float64(lowest_bit) - 150.0
    log2 = np.log2(magnitude)
    return log2 - lowest, log2, lowest


@njit(inline="always")
def _store(bounds, a, b, c, face):
    """bounds[a, b, c] = a `_face_bounds` triple."""
    bounds[a, b, c, _BITS], bounds[a, b, c, _MAGNITUDE], bounds[a, b, c, _LOWEST] = face


@njit(inline="always")
def _merge(bounds, a, b, c, face):
    """Widen bounds[a, b, c] to cover a `_face_bounds` triple too."""
    bounds[a, b, c, _BITS] = max(bounds[a, b, c, _BITS], face[0])
    bounds[a, b, c, _MAGNITUDE] = max(bounds[a, b, c, _MAGNITUDE], face[1])
    bounds[a, b, c, _LOWEST] = min(bounds[a, b, c, _LOWEST], face[2])


@njit(parallel=True, cache=True)
def _split_rows(x_bits, parts, k_pad, hi_mask, all_mask):
    """x bits [M, K] -> float32 parts [parts, M, k_pad] (0 hi, 1 lo; zero past K) and per-face bounds
    [parts, M, faces, 3] from the sum of |b| (the rows' side of the module docstring's bound). Per row, loops
    that vectorise split and measure the values, then each face sums its |b| in k order."""
    m, k = x_bits.shape
    out = np.empty((parts, m, k_pad), np.float32)
    bounds = np.empty((parts, m, k_pad // K_FACE, 3))
    for i in prange(m):
        magnitude, lowest = np.empty((parts, k_pad)), np.empty((parts, k_pad), np.uint32)
        for j in range(k):
            hi_bits = _masked(x_bits[i, j], all_mask) & hi_mask
            out[0, i, j] = _bits_f32(hi_bits)
            magnitude[0, j], lowest[0, j] = abs(np.float64(_bits_f32(hi_bits))), _measure(hi_bits)
        if parts == 2:  # a loop of its own: one loop doing both parts under a mask runs slower
            for j in range(k):
                lo = _bits_f32(_masked(x_bits[i, j], all_mask)) - out[0, i, j]
                out[1, i, j] = lo
                magnitude[1, j], lowest[1, j] = abs(np.float64(lo)), _measure(_f32_bits(lo))
        for part in range(parts):
            for j in range(k, k_pad):
                out[part, i, j], magnitude[part, j], lowest[part, j] = 0.0, 0.0, _NO_BIT
        for part in range(parts):  # after all the splitting: faster than in the loop above
            for f in range(k_pad // K_FACE):
                total, low = 0.0, _NO_BIT
                for j in range(f * K_FACE, f * K_FACE + K_FACE):
                    total += magnitude[part, j]
                    low = min(low, lowest[part, j])
                _store(bounds, part, i, f, _face_bounds(total, low))
    return out, bounds


@njit(parallel=True, cache=True)
def _split_panels(w_bits, parts, k_pad, hi_mask, all_mask):
    """w bits [K, N] -> uint16 halves of the masked bits in column panels [parts, ceil(N / COLS), k_pad, COLS]
    (zero past K and N) and per-(panel, face) bounds [parts, panels, faces, 3] of the hi and lo parts from each
    column's max |a|: the largest first two and the smallest lowest bit over the panel's columns."""
    k, n = w_bits.shape
    panels = (n + COLS - 1) // COLS
    out = np.zeros((parts, panels, k_pad, COLS), np.uint16)
    bounds = np.empty((parts, panels, k_pad // K_FACE, 3))
    for jb in prange(panels):
        for f in range(k_pad // K_FACE):
            for part in range(parts):
                _store(bounds, part, jb, f, _face_bounds(0.0, _NO_BIT))
            for c in range(min(COLS, n - jb * COLS)):
                hi_max, hi_lowest, lo_max, lo_lowest = 0.0, _NO_BIT, 0.0, _NO_BIT
                for i in range(f * K_FACE, min(k, f * K_FACE + K_FACE)):
                    every = _masked(w_bits[i, jb * COLS + c], all_mask)
                    hi = _bits_f32(every & hi_mask)
                    out[0, jb, i, c] = np.uint16(every >> _SIXTEEN)
                    hi_max = max(hi_max, abs(np.float64(hi)))
                    hi_lowest = min(hi_lowest, _measure(_f32_bits(hi)))
                    if parts == 2:
                        lo = _bits_f32(every) - hi
                        out[1, jb, i, c] = np.uint16(every & _LOW_HALF)
                        lo_max = max(lo_max, abs(np.float64(lo)))
                        lo_lowest = min(lo_lowest, _measure(_f32_bits(lo)))
                _merge(bounds, 0, jb, f, _face_bounds(hi_max, hi_lowest))
                if parts == 2:
                    _merge(bounds, 1, jb, f, _face_bounds(lo_max, lo_lowest))
    return out, bounds


@njit(inline="always")
def _in_order_sum(b, a, i, zero):
    """Sum of b[k] * a[i + k * COLS] for k = 0..15 in k order, in zero's precision (a: a flat panel array; the
    offsets are constants, so one base register addresses all 16 rows)."""
    s = zero + b[0] * a[i] + b[1] * a[i + _R1] + b[2] * a[i + _R2] + b[3] * a[i + _R3]
    s = s + b[4] * a[i + _R4] + b[5] * a[i + _R5] + b[6] * a[i + _R6] + b[7] * a[i + _R7]
    s = s + b[8] * a[i + _R8] + b[9] * a[i + _R9] + b[10] * a[i + _R10] + b[11] * a[i + _R11]
    return s + b[12] * a[i + _R12] + b[13] * a[i + _R13] + b[14] * a[i + _R14] + b[15] * a[i + _R15]


@njit(inline="always")
def _any_order_sum(b, a, i, zero):
    """The same sum as four interleaved chains: only for faces whose every partial sum is exact (the fp32 path),
    where the order cannot matter; the chains are four times shorter than one."""
    s0 = zero + b[0] * a[i] + b[4] * a[i + _R4] + b[8] * a[i + _R8] + b[12] * a[i + _R12]
    s1 = zero + b[1] * a[i + _R1] + b[5] * a[i + _R5] + b[9] * a[i + _R9] + b[13] * a[i + _R13]
    s2 = zero + b[2] * a[i + _R2] + b[6] * a[i + _R6] + b[10] * a[i + _R10] + b[14] * a[i + _R14]
    s3 = zero + b[3] * a[i + _R3] + b[7] * a[i + _R7] + b[11] * a[i + _R11] + b[15] * a[i + _R15]
    return (s0 + s1) + (s2 + s3)


@njit(inline="always")
def _bf16_add(dst, r, c, partial):
    """dst[r, c] = bf16_RNE(fp32(dst + fp32(partial))) on uint32 bits; NaN becomes 0x7FC00000."""
    u = _f32_bits(_bits_f32(dst[r, c]) + np.float32(partial))
    rounded = (u + _HALF_MINUS_ONE + ((u >> _SIXTEEN) & _ONE)) & _BF16_KEEP  # RNE for finite values and inf
    dst[r, c] = _QNAN if (u & _ABS) > _INF else rounded


@njit(inline="always")
def _add_face(b_flat, b_base, a_flat, a_base, dst, r, zero, exact_any_order):
    """Add one face's partial to row r of the job's Dst for all COLS columns: b_flat[b_base:][:16] are the row's
    parts, a_flat[a_base:] the face's 16 x COLS block. In zero's precision: fp32 only when every partial sum is
    exact, so that any order gives the same sum."""
    widen = -zero  # x + -0.0 == x exactly: converts to zero's type at no cost
    b = (widen + b_flat[b_base], widen + b_flat[b_base + 1], widen + b_flat[b_base + 2],
         widen + b_flat[b_base + 3], widen + b_flat[b_base + 4], widen + b_flat[b_base + 5],
         widen + b_flat[b_base + 6], widen + b_flat[b_base + 7], widen + b_flat[b_base + 8],
         widen + b_flat[b_base + 9], widen + b_flat[b_base + 10], widen + b_flat[b_base + 11],
         widen + b_flat[b_base + 12], widen + b_flat[b_base + 13], widen + b_flat[b_base + 14],
         widen + b_flat[b_base + 15])  # fmt: skip
    for j in range(COLS):
        c = uintp(j)  # unsigned indices: no negative-index wraparound, so LLVM vectorises the loop
        if exact_any_order:  # a constant at each call site: the branch folds away
            _bf16_add(dst, r, c, _any_order_sum(b, a_flat, a_base + c, zero))
        else:
            _bf16_add(dst, r, c, _in_order_sum(b, a_flat, a_base + c, zero))


@njit(parallel=True, cache=True, fastmath={"contract"})  # FMA is exact here: see the module docstring
def _accumulate(rows, row_bounds, halves, panel_bounds, hi_mask, phases, out):
    """out [M, N] (uint32 bits of the bf16-valued fp32 Dst) from the phase parts, in hardware order."""
    m, n = out.shape
    k_pad = rows.shape[2]
    row_blocks, col_blocks = (m + ROWS - 1) // ROWS, halves.shape[1]
    plane = uintp(col_blocks * k_pad * COLS)
    b_flat, a_flat = rows.reshape(-1), halves.reshape(-1)
    for job in prange(row_blocks * col_blocks):
        m0, jb = (job // col_blocks) * ROWS, job % col_blocks
        height = min(ROWS, m - m0)
        dst = np.zeros((ROWS, COLS), np.uint32)
        face = np.empty(K_FACE * COLS, np.float32)
        for t in range(0, k_pad, K_TILE):
            for p in range(phases):  # (B_hi, A_hi), (B_hi, A_lo), (B_lo, A_hi), (B_lo, A_lo)
                bi, ai = p >> 1, p & 1
                for f in range(t, t + K_TILE, K_FACE):
                    fi = f // K_FACE
                    bits = _SIGNIFICAND_BITS - panel_bounds[ai, jb, fi, _BITS]
                    log2 = _LOG2_LIMIT - panel_bounds[ai, jb, fi, _MAGNITUDE]
                    lowest = _LOWEST_LIMIT - panel_bounds[ai, jb, fi, _LOWEST]
                    base = uintp((jb * k_pad + f) * COLS)
                    if ai == 0:  # unsigned indices (no wraparound checks), so the loops vectorise
                        for q in range(K_FACE * COLS):
                            i = base + uintp(q)
                            face[q] = _bits_f32((np.uint32(a_flat[i]) << _SIXTEEN) & hi_mask)
                    else:
                        for q in range(K_FACE * COLS):
                            i = base + uintp(q)
                            every = (np.uint32(a_flat[i]) << _SIXTEEN) | np.uint32(a_flat[plane + i])
                            face[q] = _bits_f32(every) - _bits_f32(every & hi_mask)
                    for r in range(height):
                        b_base = uintp(((bi * m) + m0 + r) * k_pad + f)
                        if (
                            row_bounds[bi, m0 + r, fi, _BITS] < bits
                            and row_bounds[bi, m0 + r, fi, _MAGNITUDE] < log2
                            and row_bounds[bi, m0 + r, fi, _LOWEST] >= lowest
                        ):
                            _add_face(b_flat, b_base, face, uintp(0), dst, r, np.float32(0.0), True)
                        else:
                            _add_face(b_flat, b_base, face, uintp(0), dst, r, 0.0, False)
        n0 = jb * COLS
        for r in range(height):
            for c in range(min(COLS, n - n0)):
                out[m0 + r, n0 + c] = dst[r, c]


def split_weights(w: torch.Tensor, phases: int, masks: tuple[int, int]) -> Panels:
    """`Panels` of w [K, N] (contiguous CPU float32) for `phases`, split with masks (hi, all)."""
    if masks[0] & 0xFFFF or masks[0] & ~masks[1]:
        raise ValueError(f"need a hi mask within the all mask and the high 16 bits, got {masks}")
    k, n = w.shape
    numba.set_num_threads(_threads())
    halves, bounds = _split_panels(_bits(w), _weight_parts(phases), _k_pad(k), *map(np.uint32, masks))
    return Panels(halves, bounds, k, n, masks)


def panel_bytes(k: int, n: int) -> int:
    """An upper bound on the bytes `split_weights` of a [K, N] weight holds: 4 per padded element for two uint16
    halves, under 1 more for the per-(panel, face) bounds."""
    return 5 * _k_pad(k) * (-(-n // COLS) * COLS)


def bf16_dst_matmul(
    x: torch.Tensor, w: torch.Tensor | Panels, phases: int, x_masks: tuple[int, int], w_masks: tuple[int, int]
) -> torch.Tensor:
    """Exact bf16-Dst Dst of x [M, K] @ w [K, N] at `phases`; masks are (hi, all). x is contiguous CPU float32,
    w too or its `split_weights` panels for at least `phases`, made with w_masks."""
    if not isinstance(w, Panels):
        w = split_weights(w, phases, w_masks)
    elif not w.serves(phases) or w.masks != w_masks:
        raise ValueError(
            f"panels of {w.halves.shape[0]} parts with masks {w.masks} cannot serve {phases} phases"
        )
    (m, k), n = x.shape, w.n
    if k != w.k:
        raise ValueError(f"x has K = {k}, the panels {w.k}")
    out = np.zeros((m, n), np.uint32)
    if out.size and k:
        numba.set_num_threads(_threads())
        rows, row_bounds = _split_rows(_bits(x), 2 if phases > 2 else 1, _k_pad(k), *map(np.uint32, x_masks))
        _accumulate(rows, row_bounds, w.halves, w.bounds, np.uint32(w_masks[0]), phases, out)
    return torch.from_numpy(out).view(torch.float32)


def _threads() -> int:
    """Kernel threads: torch's count, within numba's."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


def _k_pad(k: int) -> int:
    """K rounded up to whole tiles."""
    return -(-k // K_TILE) * K_TILE


def _bits(x: torch.Tensor) -> np.ndarray:
    """uint32 view of a contiguous float32 CPU tensor."""
    return x.numpy().view(np.uint32)
