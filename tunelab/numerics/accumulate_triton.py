"""Exact-order bf16-Dst matmul on CUDA: a Triton kernel for `fidelity_matmul(..., accumulation="exact")`.

Same order and roundings as `fidelity_matmul_reference` with a bf16 Dst: for each 32-wide K tile, each phase, each
16-wide K face, partial = one tensor-core dot with K = 16 (bf16 operand parts, fp32 result, fresh zero
accumulator), then Dst = bf16_RNE(fp32(Dst + partial)) as cheap bit operations on the fp32 accumulator.

Every masked part of a bf16/bfp value (or of a TF32-truncated fp32 value) is exactly a bf16 number (at most 8
significant bits), so the dot sees the exact operands and the products are exact. What may differ from the
reference is the dot's internal 16-term accumulation: tensor cores align the products to the largest one and
truncate, so when the exact 16-term sum needs more than 24 bits the partial can be an fp32 ulp or so off its RNE
value (on randn data 2e-5 to 5e-3 of the partials need more than 24 bits). Dst only changes when that moves
Dst + partial across a bf16 rounding boundary, so a rare output ends up one bf16 ulp from the reference:
tests/test_numerics_accumulate.py asserts under 1e-3 of the outputs on random bf16/bfp data and prints the
rate. Inputs whose 16-term sums fit in 24 bits (also tested) match bit for bit.

The dot result is added with an explicit fp32 add; it is computed with a runtime zero accumulator because Triton
folds `acc + dot(a, b)` into `dot(a, b, acc)` when the dot's accumulator is a constant zero, which would move the
Dst addition inside the tensor core.
"""

import torch

from tunelab.numerics.bits import flush_denormals
from tunelab.numerics.fidelity import SRC_A_MASKS, SRC_B_MASKS, split

try:
    import triton
    import triton.language as tl
except ImportError:  # CPU-only installs
    triton = None

CONFIG = {"BLOCK_M": 128, "BLOCK_N": 128, "GROUP_M": 8, "DOT_TF32": 0, "num_warps": 8, "num_stages": 3}
ROUNDINGS = ("bits", "cvt", "magic")


def bf16_dst_matmul(
    x: torch.Tensor,
    w: torch.Tensor,
    phases: int,
    *,
    rounding: str = "bits",
    split_in_kernel: bool = True,
    config: dict[str, int] | None = None,
) -> torch.Tensor:
    """Exact-order bf16-Dst x [M, K] @ w [K, N] at `phases` (CUDA float32/bf16/fp16 tensors of format values).

    bf16-valued operands are split inside the kernel (read as bf16: pass bf16 tensors to skip a conversion);
    others (fp32 activations with more than 8 significant bits) are split here into bf16 (hi, lo) parts;
    split_in_kernel=False splits every operand here (one extra pass, plain loads in the kernel). `rounding`
    picks the RNE of Dst: "bits" (integer ops, any input), "cvt" (the hardware fp32 -> bf16 conversion) or
    "magic" (3 fp32 adds and 2 integer ops, the fewest instructions; exact for |Dst| in [2^-126, 2^112) and 0).
    `config` overrides CONFIG entries: tile sizes, GROUP_M, DOT_TF32 (TF32 dots on fp32 parts), warps, stages.
    """
    if triton is None:
        raise RuntimeError("exact accumulation on CUDA needs Triton (pip install triton)")
    if rounding not in ROUNDINGS:
        raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
    cfg = {**CONFIG, **(config or {})}
    (m, k), n = x.shape, w.shape[1]
    out = torch.empty(m, n, dtype=torch.float32, device=x.device)
    if out.numel() == 0:
        return out
    xs, split_x = _operand_parts(x.detach(), SRC_B_MASKS, split_in_kernel)
    ws, split_w = _operand_parts(w.detach(), SRC_A_MASKS, split_in_kernel)
    grid = (triton.cdiv(m, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    _kernel[grid](
        xs, ws, out, m, n, k, 0.0,
        xs.stride(0), xs.stride(1), xs.stride(2),
        ws.stride(0), ws.stride(1), ws.stride(2),
        out.stride(0), out.stride(1),
        PHASES=phases, SPLIT_X=split_x, SPLIT_W=split_w, ROUNDING=ROUNDINGS.index(rounding),
        BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], GROUP_M=cfg["GROUP_M"], DOT_TF32=cfg["DOT_TF32"],
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
    )  # fmt: skip
    return out


def _operand_parts(t: torch.Tensor, masks: tuple[int, int], in_kernel: bool) -> tuple[torch.Tensor, bool]:
    """([1, R, C] bf16 values, True) to split in the kernel when t is bf16-valued and `in_kernel`, else
    ([2, R, C] bf16 (hi, lo) parts, False). Denormals are flushed either way (by the kernel, or here)."""
    if t.dtype == torch.bfloat16 and in_kernel:
        return t.unsqueeze(0), True
    t = t.float()
    if in_kernel:
        as_bf16 = t.to(torch.bfloat16)
        if torch.equal(as_bf16.float(), t):
            return as_bf16.unsqueeze(0), True
    hi, lo, _ = split(flush_denormals(t), masks)
    return torch.stack([hi, lo]).to(torch.bfloat16), False  # exact (parts have <= 8 bits) unless |t| < 2^-116


if triton is not None:  # the kernels exist only where Triton does; importing this module never needs it

    @triton.jit
    def _load_part(ptr, stride_p, PART: tl.constexpr, SPLIT: tl.constexpr, HI_MASK: tl.constexpr, offs, mask):
        """Part PART (0 hi, 1 lo) of an operand tile as bf16: split in-kernel from bf16 values, or loaded."""
        if SPLIT:  # fidelity.split on the widened values: flush denormals, truncate to the hi mask
            u = tl.load(ptr + offs, mask=mask, other=0.0).to(tl.float32).to(tl.int32, bitcast=True)
            u = tl.where((u & 0x7F800000) == 0, u & -2147483648, u)
            hi = (u & HI_MASK).to(tl.float32, bitcast=True)
            if PART == 1:
                return (u.to(tl.float32, bitcast=True) - hi).to(tl.bfloat16)
            return hi.to(tl.bfloat16)
        return tl.load(ptr + PART * stride_p + offs, mask=mask, other=0.0)

    @triton.jit
    def _round_bf16(s, ROUNDING: tl.constexpr):
        """RNE of fp32 values to bf16, kept in fp32 (ROUNDING indexes ROUNDINGS); NaN stays NaN."""
        if ROUNDING == 1:  # cvt: the hardware conversion
            return s.to(tl.bfloat16).to(tl.float32)
        if ROUNDING == 2:  # magic: adding c = copysign(2^(e+16), s) rounds s at its bf16 ulp, RNE
            c = ((s.to(tl.uint32, bitcast=True) & 0xFF800000) + 0x08000000).to(tl.float32, bitcast=True)
            return (s + c) - c
        u = s.to(tl.int32, bitcast=True)  # bits
        r = (u + 0x7FFF + ((u >> 16) & 1)) & -65536  # & 0xFFFF0000; no overflow for finite values and inf
        return tl.where(s != s, s, r.to(tl.float32, bitcast=True))

    @triton.jit
    def _kernel(
        x_ptr, w_ptr, out_ptr, M, N, K, zero,
        stride_xp, stride_xm, stride_xk, stride_wp, stride_wk, stride_wn, stride_om, stride_on,
        PHASES: tl.constexpr, SPLIT_X: tl.constexpr, SPLIT_W: tl.constexpr, ROUNDING: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, GROUP_M: tl.constexpr, DOT_TF32: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        blocks_m, blocks_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group = pid // (GROUP_M * blocks_n)  # grouped order: neighbouring programs share w tiles in L2
        first_m = group * GROUP_M
        group_m = min(blocks_m - first_m, GROUP_M)
        pid_m = first_m + (pid % (GROUP_M * blocks_n)) % group_m
        pid_n = (pid % (GROUP_M * blocks_n)) // group_m
        rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, 16)
        fresh = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32) + zero  # not a constant: see module docstring
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for tile in range(0, K, 32):
            for p in tl.static_range(PHASES):  # (B_hi, A_hi), (B_hi, A_lo), (B_lo, A_hi), (B_lo, A_lo)
                for face in tl.static_range(2):
                    kk = tile + face * 16 + rk
                    x_offs = rm[:, None] * stride_xm + kk[None, :] * stride_xk
                    w_offs = kk[:, None] * stride_wk + rn[None, :] * stride_wn
                    x_mask = (rm[:, None] < M) & (kk[None, :] < K)
                    w_mask = (kk[:, None] < K) & (rn[None, :] < N)
                    b = _load_part(x_ptr, stride_xp, p // 2, SPLIT_X, -131072, x_offs, x_mask)  # 0xFFFE0000
                    a = _load_part(w_ptr, stride_wp, p % 2, SPLIT_W, -524288, w_offs, w_mask)  # 0xFFF80000
                    if (
                        DOT_TF32
                    ):  # fp32 operands, TF32 dot: exact for these parts too (Triton's interpreter needs it)
                        partial = tl.dot(b.to(tl.float32), a.to(tl.float32), fresh, input_precision="tf32")
                    else:
                        partial = tl.dot(b, a, fresh)
                    acc = _round_bf16(acc + partial, ROUNDING)
        nan = tl.full((BLOCK_M, BLOCK_N), 0x7FC00000, tl.int32).to(tl.float32, bitcast=True)
        acc = tl.where(acc != acc, nan, acc)
        out_offs = rm[:, None] * stride_om + rn[None, :] * stride_on
        tl.store(out_ptr + out_offs, acc, mask=(rm[:, None] < M) & (rn[None, :] < N))
