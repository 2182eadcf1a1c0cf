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

Layout: x is split once into float32 phase parts [parts, M, Kp] with per-(row, face) bounds; w into float32
column panels [parts, N / COLS, Kp, COLS] with per-(panel, face) bounds, so one face of a panel is a contiguous
16 x COLS block addressed from one base register (a [K, N] row stride that is a multiple of 4 KiB would also
alias in L1); the float64 path widens on load. Each job owns ROWS x COLS outputs and walks all of K; the inner
loop runs over the COLS columns of one row (SIMD across columns changes no result: columns are independent).

Compiled code is cached (numba cache=True: `__pycache__` next to this file, or numba's user-wide cache dir when
that is read-only; NUMBA_CACHE_DIR overrides both). Threads follow torch.get_num_threads().
"""

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange, types, uintp
from numba.extending import intrinsic

ROWS, COLS = 128, 64  # outputs per job; tuned on a 2-core AMD EPYC (Zen 4) for the SmolLM2 MLP shapes
K_TILE, K_FACE = 32, 16
_R1, _R2, _R3, _R4, _R5, _R6, _R7, _R8, _R9, _R10, _R11, _R12, _R13, _R14, _R15 = (
    uintp(k * COLS) for k in range(1, 16)
)
_EXPONENT, _SIGN, _MANTISSA = np.uint32(0x7F800000), np.uint32(0x80000000), np.uint32(0x007FFFFF)
_ABS, _INF, _QNAN = np.uint32(0x7FFFFFFF), np.uint32(0x7F800000), np.uint32(0x7FC00000)
_HALF_MINUS_ONE, _BF16_KEEP = np.uint32(0x7FFF), np.uint32(0xFFFF0000)
_SIXTEEN, _ONE = np.uint32(16), np.uint32(1)
# fp32-path bookkeeping per face: the running (sum |v|, max |v|, lowest set bit) of its values, then the bounds
# (log2 magnitude - lowest bit, log2 magnitude, lowest bit); +inf forces float64, an empty face never limits
_BITS, _MAGNITUDE, _LOWEST = 0, 1, 2
_START = (0.0, 0.0, np.inf)
_FORCED = (np.inf, np.inf, -np.inf)
_SIGNIFICAND_BITS, _LOG2_LIMIT, _LOWEST_LIMIT = 24.0, 127.0, -126.0


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
def _split(u, hi_mask, all_mask):
    """(hi, lo) float32 parts of float32 bits: denormals flushed, masks truncate; lo = all - hi is exact."""
    if (u & _EXPONENT) == 0:
        u &= _SIGN
    hi = _bits_f32(u & hi_mask)
    return hi, _bits_f32(u & all_mask) - hi


@njit(inline="always")
def _fold(state, value):
    """Fold a float32 value into a face's (sum |v|, max |v|, lowest set bit): a denormal, inf or NaN forces
    float64, so only normal values are measured (the lowest set bit of v = m * 2^e, 24-bit m, is e + trailing
    zeros of m)."""
    u = _f32_bits(value) & _ABS
    if u == 0:
        return state
    exponent = np.int64(u >> np.uint32(23))
    if exponent == 0 or exponent == 255:
        return _FORCED
    significand = (u & _MANTISSA) | np.uint32(0x800000)
    lowest = significand & (~significand + _ONE)  # a power of two: 2^(trailing zeros)
    zeros = np.int64(_f32_bits(np.float32(lowest)) >> np.uint32(23)) - 127
    magnitude = abs(np.float64(value))
    return (state[0] + magnitude, max(state[1], magnitude), min(state[2], np.float64(exponent - 150 + zeros)))


@njit(inline="always")
def _store(bounds, a, b, c, magnitude, lowest):
    """bounds[a, b, c] = (log2 magnitude - lowest, log2 magnitude, lowest)."""
    log2 = np.log2(magnitude)
    bounds[a, b, c, _BITS], bounds[a, b, c, _MAGNITUDE], bounds[a, b, c, _LOWEST] = (
        log2 - lowest,
        log2,
        lowest,
    )


@njit(parallel=True, cache=True)
def _split_rows(x_bits, parts, k_pad, hi_mask, all_mask):
    """x bits [M, K] -> float32 parts [parts, M, k_pad] (0 hi, 1 lo; zero past K) and per-face bounds
    [parts, M, faces, 3] from the sum of |b| (the rows' side of the module docstring's bound)."""
    m, k = x_bits.shape
    out = np.zeros((parts, m, k_pad), np.float32)
    bounds = np.empty((parts, m, k_pad // K_FACE, 3))
    for i in prange(m):
        for f in range(k_pad // K_FACE):
            hi_state, lo_state = _START, _START
            for j in range(f * K_FACE, min(k, f * K_FACE + K_FACE)):
                hi, lo = _split(x_bits[i, j], hi_mask, all_mask)
                out[0, i, j] = hi
                hi_state = _fold(hi_state, hi)
                if parts == 2:
                    out[1, i, j] = lo
                    lo_state = _fold(lo_state, lo)
            _store(bounds, 0, i, f, hi_state[0], hi_state[2])
            if parts == 2:
                _store(bounds, 1, i, f, lo_state[0], lo_state[2])
    return out, bounds


@njit(parallel=True, cache=True)
def _split_panels(w_bits, parts, k_pad, hi_mask, all_mask):
    """w bits [K, N] -> float32 column panels [parts, ceil(N / COLS), k_pad, COLS] (zero past K and N) and
    per-(panel, face) bounds [parts, panels, faces, 3] from each column's max |a|: the largest first two and the
    smallest lowest bit over the panel's columns."""
    k, n = w_bits.shape
    panels = (n + COLS - 1) // COLS
    out = np.zeros((parts, panels, k_pad, COLS), np.float32)
    bounds = np.empty((parts, panels, k_pad // K_FACE, 3))
    for jb in prange(panels):
        for f in range(k_pad // K_FACE):
            for part in range(parts):
                _store(bounds, part, jb, f, 0.0, np.inf)
            for c in range(min(COLS, n - jb * COLS)):
                hi_state, lo_state = _START, _START
                for i in range(f * K_FACE, min(k, f * K_FACE + K_FACE)):
                    hi, lo = _split(w_bits[i, jb * COLS + c], hi_mask, all_mask)
                    out[0, jb, i, c] = hi
                    hi_state = _fold(hi_state, hi)
                    if parts == 2:
                        out[1, jb, i, c] = lo
                        lo_state = _fold(lo_state, lo)
                for part, state in ((0, hi_state), (1, lo_state)):
                    if part < parts:
                        log2 = np.log2(state[1])
                        bounds[part, jb, f, _BITS] = max(bounds[part, jb, f, _BITS], log2 - state[2])
                        bounds[part, jb, f, _MAGNITUDE] = max(bounds[part, jb, f, _MAGNITUDE], log2)
                        bounds[part, jb, f, _LOWEST] = min(bounds[part, jb, f, _LOWEST], state[2])
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
def _accumulate(rows, row_bounds, panels, panel_bounds, phases, out):
    """out [M, N] (uint32 bits of the bf16-valued fp32 Dst) from the phase parts, in hardware order."""
    m, n = out.shape
    k_pad = rows.shape[2]
    row_blocks, col_blocks = (m + ROWS - 1) // ROWS, panels.shape[1]
    b_flat, a_flat = rows.reshape(-1), panels.reshape(-1)
    for job in prange(row_blocks * col_blocks):
        m0, jb = (job // col_blocks) * ROWS, job % col_blocks
        height = min(ROWS, m - m0)
        dst = np.zeros((ROWS, COLS), np.uint32)
        for t in range(0, k_pad, K_TILE):
            for p in range(phases):  # (B_hi, A_hi), (B_hi, A_lo), (B_lo, A_hi), (B_lo, A_lo)
                bi, ai = p >> 1, p & 1
                for f in range(t, t + K_TILE, K_FACE):
                    fi = f // K_FACE
                    bits = _SIGNIFICAND_BITS - panel_bounds[ai, jb, fi, _BITS]
                    log2 = _LOG2_LIMIT - panel_bounds[ai, jb, fi, _MAGNITUDE]
                    lowest = _LOWEST_LIMIT - panel_bounds[ai, jb, fi, _LOWEST]
                    base = uintp(((ai * col_blocks + jb) * k_pad + f) * COLS)
                    for r in range(height):
                        b_base = uintp(((bi * m) + m0 + r) * k_pad + f)
                        if (
                            row_bounds[bi, m0 + r, fi, _BITS] < bits
                            and row_bounds[bi, m0 + r, fi, _MAGNITUDE] < log2
                            and row_bounds[bi, m0 + r, fi, _LOWEST] >= lowest
                        ):
                            _add_face(b_flat, b_base, a_flat, base, dst, r, np.float32(0.0), True)
                        else:
                            _add_face(b_flat, b_base, a_flat, base, dst, r, 0.0, False)
        n0 = jb * COLS
        for r in range(height):
            for c in range(min(COLS, n - n0)):
                out[m0 + r, n0 + c] = dst[r, c]


def bf16_dst_matmul(
    x: torch.Tensor, w: torch.Tensor, phases: int, x_masks: tuple[int, int], w_masks: tuple[int, int]
) -> torch.Tensor:
    """Exact bf16-Dst Dst of x [M, K] @ w [K, N] (contiguous CPU float32) at `phases`; masks are (hi, all)."""
    (m, k), n = x.shape, w.shape[1]
    out = np.zeros((m, n), np.uint32)
    if out.size and k:
        numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))
        k_pad = -(-k // K_TILE) * K_TILE
        rows, row_bounds = _split_rows(_bits(x), 2 if phases > 2 else 1, k_pad, *map(np.uint32, x_masks))
        panels = _split_panels(_bits(w), 2 if phases > 1 else 1, k_pad, *map(np.uint32, w_masks))
        _accumulate(rows, row_bounds, *panels, phases, out)
    return torch.from_numpy(out).view(torch.float32)


def _bits(x: torch.Tensor) -> np.ndarray:
    """uint32 view of a contiguous float32 CPU tensor."""
    return x.numpy().view(np.uint32)
