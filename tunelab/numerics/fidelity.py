"""Tensix FPU matmul numerics: math-fidelity phases and Dst accumulation (numerics.md section 2).

x (activations, in0) goes to SrcB and w (weights, in1) to SrcA. Each operand is split by truncating masks into a
high and a low part; fidelity phase p adds one product of parts to Dst (LoFi = 1 phase ... HiFi4 = 4).
"""

import torch
import torch.nn.functional as F

from tunelab.numerics.bf16 import round_bf16
from tunelab.numerics.bits import as_float32, bits_float, float_bits, flush_denormals, int32_mask

FIDELITY_PHASES = {"LoFi": 1, "HiFi2": 2, "HiFi3": 3, "HiFi4": 4}
SRC_A_MASKS = (0xFFF80000, 0xFFFFC000)  # weights: (hidden + 4 mantissa bits, hidden + 9 mantissa bits)
SRC_B_MASKS = (0xFFFE0000, 0xFFFFE000)  # activations: (hidden + 6 bits, TF32: hidden + 10 bits)
K_TILE, K_FACE = 32, 16
ACCUMULATIONS = ("fast", "exact")


def split(x: torch.Tensor, masks: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Return (hi, lo, all) of a float32 tensor: `all` keeps the bits under masks[1], hi those under masks[0].

    Masking the sign-magnitude bits truncates toward zero; lo = all - hi is exact.
    """
    u = float_bits(x)
    hi = bits_float(u & int32_mask(masks[0]))
    every = bits_float(u & int32_mask(masks[1]))
    return hi, every - hi, every


def split_phases(x: torch.Tensor, w: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The four (SrcB part, SrcA part) products in phase order: (B_hi,A_hi), (B_hi,A_lo), (B_lo,A_hi), (B_lo,A_lo).

    Denormal inputs are flushed to zero first; the SrcB mask also truncates float32 activations to TF32.
    """
    b_hi, b_lo, _ = split(flush_denormals(x), SRC_B_MASKS)
    a_hi, a_lo, _ = split(flush_denormals(w), SRC_A_MASKS)
    return [(b_hi, a_hi), (b_hi, a_lo), (b_lo, a_hi), (b_lo, a_lo)]


def fidelity_matmul(
    x: torch.Tensor, w: torch.Tensor, *, phases: int, fp32_dest_acc: bool, accumulation: str = "fast"
) -> torch.Tensor:
    """Emulate ttnn `matmul(x, w)` on the FPU: x [..., M, K] activations, w [K, N] weights -> fp32 Dst [..., M, N].

    Operands are float32 (or bf16/fp16) tensors holding values of their storage format. `phases` is the math
    fidelity (1 LoFi, 2 HiFi2, 3 HiFi3, 4 HiFi4). accumulation="fast" sums the phase products in fp32 with one
    rounding at the output (to bf16 as well when fp32_dest_acc is False, which ignores bf16 Dst's per-addition
    rounding); "exact" follows the hardware order K-tile -> phase -> 16-wide K face, rounding Dst after every
    addition (`fidelity_matmul_reference`).
    """
    if accumulation == "exact":
        return fidelity_matmul_reference(x, w, phases=phases, fp32_dest_acc=fp32_dest_acc)
    x, w = _checked_operands(x, w, phases, accumulation)
    y = _phase_sum(x, w, phases)
    return y if fp32_dest_acc else round_bf16(y)


def _phase_sum(x: torch.Tensor, w: torch.Tensor, phases: int) -> torch.Tensor:
    """Sum of the first `phases` phase products in as few fp32 matmuls as the masks allow (hi + lo == all)."""
    b_hi, b_lo, b_all = split(flush_denormals(x), SRC_B_MASKS)
    a_hi, _, a_all = split(flush_denormals(w), SRC_A_MASKS)
    if phases == 1:
        return b_hi @ a_hi
    if phases == 2:
        return b_hi @ a_all
    if phases == 3:
        return b_hi @ a_all + b_lo @ a_hi
    return b_all @ a_all


def fidelity_matmul_reference(
    x: torch.Tensor, w: torch.Tensor, *, phases: int, fp32_dest_acc: bool
) -> torch.Tensor:
    """Slow, ordered model: for each 32-wide K tile, each phase, each 16-wide K face, Dst += 16-term partial.

    The partial is an fp32 matmul; Dst is fp32, or bf16 (RNE after every addition) when fp32_dest_acc is False.
    K is zero-padded to a multiple of 32 (zeros add nothing).
    """
    x, w = _checked_operands(x, w, phases, "exact")
    pad = -x.shape[-1] % K_TILE
    x, w = F.pad(x, (0, pad)), F.pad(w, (0, 0, 0, pad))
    terms = split_phases(x, w)[:phases]
    dst = torch.zeros(*x.shape[:-1], w.shape[-1], dtype=torch.float32, device=x.device)
    for tile in range(0, x.shape[-1], K_TILE):
        for b, a in terms:
            for face in range(tile, tile + K_TILE, K_FACE):
                dst = dst + b[..., face : face + K_FACE] @ a[face : face + K_FACE]
                if not fp32_dest_acc:
                    dst = round_bf16(dst)
    return dst


def _checked_operands(
    x: torch.Tensor, w: torch.Tensor, phases: int, accumulation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the arguments and return the operands as float32."""
    if phases not in FIDELITY_PHASES.values():
        raise ValueError(f"phases must be 1..4 (LoFi, HiFi2, HiFi3, HiFi4), got {phases!r}")
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}")
    if w.dim() != 2 or x.dim() < 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"need x [..., M, K] and w [K, N]; got {tuple(x.shape)} and {tuple(w.shape)}")
    return as_float32(x), as_float32(w)
