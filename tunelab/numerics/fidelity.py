"""Tensix FPU matmul numerics: math-fidelity phases and Dst accumulation (numerics.md section 2).

x (activations, in0) goes to SrcB and w (weights, in1) to SrcA. Each operand is split by truncating masks into a
high and a low part; fidelity phase p adds one product of parts to Dst (LoFi = 1 phase ... HiFi4 = 4).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tunelab.numerics.bf16 import round_bf16
from tunelab.numerics.bits import as_float32, bits_float, float_bits, flush_denormals, int32_mask

if TYPE_CHECKING:
    from tunelab.numerics.accumulate_cpu import Panels

FIDELITY_PHASES = {"LoFi": 1, "HiFi2": 2, "HiFi3": 3, "HiFi4": 4}
SRC_A_MASKS = (0xFFF80000, 0xFFFFC000)  # weights: (hidden + 4 mantissa bits, hidden + 9 mantissa bits)
SRC_B_MASKS = (0xFFFE0000, 0xFFFFE000)  # activations: (hidden + 6 bits, TF32: hidden + 10 bits)
K_TILE, K_FACE = 32, 16
ACCUMULATIONS = ("fast", "exact")
MIN_MATMUL_ROWS = 8
FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


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
    x: torch.Tensor, w: torch.Tensor | SrcA, *, phases: int, fp32_dest_acc: bool, accumulation: str = "fast"
) -> torch.Tensor:
    """Emulate ttnn `matmul(x, w)` on the FPU: x [..., M, K] activations, w [K, N] weights -> fp32 Dst [..., M, N].

    Operands are float32 (or bf16/fp16) tensors holding values of their storage format. `phases` is the math
    fidelity (1 LoFi, 2 HiFi2, 3 HiFi3, 4 HiFi4). accumulation="fast" sums the phase products in fp32 with one
    rounding at the output (to bf16 as well when fp32_dest_acc is False, which ignores bf16 Dst's per-addition
    rounding). accumulation="exact" with a bf16 Dst follows `fidelity_matmul_reference` bit for bit through a
    fused kernel: numba on CPU tensors (accumulate_cpu), Triton on CUDA tensors (accumulate_triton, which may
    differ from it in rare elements, see there). With an fp32 Dst, "exact" is the fast fp32 phase sum: the
    hardware's fp32 order inside an MVMUL is undocumented (numerics.md 2.3: operations may be fused or
    reordered), so an ordered fp32 model would not be more faithful, only slower; the two differ by fp32
    rounding noise.
    """
    if isinstance(w, SrcA):
        _check_arguments(x, w.all, phases, accumulation)
    else:
        _check_arguments(x, w, phases, accumulation)
    if accumulation == "exact" and not fp32_dest_acc:
        return _bf16_dst_exact(x, w, phases)
    y = phase_sum(x, w, phases)
    return y if fp32_dest_acc else round_bf16(y)


def _bf16_dst_exact(x: torch.Tensor, w: torch.Tensor | SrcA, phases: int) -> torch.Tensor:
    """Exact bf16-Dst accumulation through the fused kernel for x's device (batch dims folded into M); on CPU a
    SrcA weight's kernel panels are made once and reused."""
    flat = x.flatten(0, -2)
    if x.device.type == "cuda":  # the kernel reads bf16: no float32 copies of bf16 tensors
        from tunelab.numerics import accumulate_triton

        y = accumulate_triton.bf16_dst_matmul(flat, w.all if isinstance(w, SrcA) else w, phases)
    elif x.device.type == "cpu":
        from tunelab.numerics import accumulate_cpu

        weights = w.panels(phases) if isinstance(w, SrcA) else as_float32(w)
        y = accumulate_cpu.bf16_dst_matmul(as_float32(flat), weights, phases, SRC_B_MASKS, SRC_A_MASKS)
    else:
        raise NotImplementedError(f"exact bf16-Dst accumulation has kernels for cpu and cuda, not {x.device}")
    return y.reshape(*x.shape[:-1], w.shape[-1])


class SrcA:
    """Weights prepared once for the FPU's SrcA (denormals flushed, TF32-truncated; the 5-bit high part and the
    exact CPU kernel's panels made on first use), so matmuls that reuse a weight skip re-splitting it. Any
    `fidelity_matmul` weight may be one. The parts are [..., K, N] views of contiguous [..., N, K] tensors: BLAS
    reads that layout fastest (10-15% for the gate/up shapes), and a transposed input (keys) needs no copy."""

    def __init__(self, w: torch.Tensor) -> None:
        if w.dim() < 2 or w.dtype not in FLOAT_DTYPES:
            raise ValueError(f"weights must be a float tensor [..., K, N], got {w.dtype} {tuple(w.shape)}")
        self.all = _operand_part(w.mT, SRC_A_MASKS[1]).mT
        self.shape = self.all.shape
        self._hi: torch.Tensor | None = None
        self._panels: Panels | None = None

    @property
    def hi(self) -> torch.Tensor:
        if self._hi is None:
            self._hi = _operand_part(self.all.mT, SRC_A_MASKS[0]).mT
        return self._hi

    def panels(self, phases: int) -> Panels:
        """The CPU exact kernel's panels for `phases` (accumulate_cpu.split_weights of `all`), made on first use;
        LoFi's one-part panels are replaced by two-part ones when more phases come, which serve LoFi too."""
        from tunelab.numerics import accumulate_cpu

        if self._panels is None or not self._panels.serves(phases):
            self._panels = accumulate_cpu.split_weights(self.all.contiguous(), phases, SRC_A_MASKS)
        return self._panels


def _operand_part(t: torch.Tensor, mask: int) -> torch.Tensor:
    """The operand's bits under `mask` after flushing denormals: one fused pass on CPU, torch ops elsewhere."""
    if t.device.type == "cpu":
        from tunelab.numerics.operand_kernels import flush_and_mask

        return flush_and_mask(t, mask)
    return bits_float(float_bits(flush_denormals(as_float32(t))) & int32_mask(mask))


def phase_sum(x: torch.Tensor, w: torch.Tensor | SrcA, phases: int) -> torch.Tensor:
    """Sum of the first `phases` phase products in as few fp32 matmuls as the masks allow (hi + lo == all).

    x [..., M, K] and w [..., K, N] broadcast like torch.matmul. On CUDA the matmuls may use TF32 tensor cores:
    every masked operand has at most 11 significant bits, so its TF32 conversion is exact, products are exact
    and accumulation stays fp32. Fewer than MIN_MATMUL_ROWS rows are padded with zero rows: BLAS libraries sum
    a skinny product in another order (MKL: 1-3 rows), and a row's bits must not depend on how many rows are
    computed together (one decode step against a batch of them).
    """
    rows = x.shape[-2]
    if rows < MIN_MATMUL_ROWS:
        return phase_sum(F.pad(x, (0, 0, 0, MIN_MATMUL_ROWS - rows)), w, phases)[..., :rows, :]
    a = w if isinstance(w, SrcA) else SrcA(w)
    b_hi = _operand_part(x, SRC_B_MASKS[0]) if phases < 4 else None
    b_all = _operand_part(x, SRC_B_MASKS[1]) if phases in (3, 4) else None
    with _tf32_matmuls(x.device):
        if phases == 1:
            return b_hi @ a.hi
        if phases == 2:
            return b_hi @ a.all
        if phases == 3:
            return b_hi @ a.all + (b_all - b_hi) @ a.hi
        return b_all @ a.all


@contextlib.contextmanager
def _tf32_matmuls(device: torch.device) -> Iterator[None]:
    """Allow TF32 for CUDA fp32 matmuls inside the block (exact for masked operands); no-op elsewhere.

    Uses torch's `fp32_precision` switch where it exists (torch >= 2.9 rejects mixing it with `allow_tf32`).
    """
    if device.type != "cuda":
        yield
        return
    settings = torch.backends.cuda.matmul
    name, value = ("fp32_precision", "tf32") if hasattr(settings, "fp32_precision") else ("allow_tf32", True)
    previous = getattr(settings, name)
    setattr(settings, name, value)
    try:
        yield
    finally:
        setattr(settings, name, previous)


def fidelity_matmul_reference(
    x: torch.Tensor, w: torch.Tensor, *, phases: int, fp32_dest_acc: bool
) -> torch.Tensor:
    """Slow, ordered model: for each 32-wide K tile, each phase, each 16-wide K face, Dst += 16-term partial.

    The partial is the sum of the face's 16 products (exact in float64) accumulated in float64 in k order and
    rounded once to fp32 (RNE): the exact sum whenever the products lie within 2^37 of each other, i.e. for all
    realistic data, and a fixed, reproducible value otherwise. Dst is fp32 (fp32 add), or bf16: RNE of the fp32
    sum Dst + partial after every addition. K is zero-padded to a multiple of 32 (zero partials change nothing).
    """
    x, w = _checked_operands(x, w, phases, "exact")
    pad = -x.shape[-1] % K_TILE
    x, w = F.pad(x, (0, pad)), F.pad(w, (0, 0, 0, pad))
    terms = [(b.double(), a.double()) for b, a in split_phases(x, w)[:phases]]
    dst = torch.zeros(*x.shape[:-1], w.shape[-1], dtype=torch.float32, device=x.device)
    for tile in range(0, x.shape[-1], K_TILE):
        for b, a in terms:
            for face in range(tile, tile + K_TILE, K_FACE):
                partial = torch.zeros_like(dst, dtype=torch.float64)
                for k in range(face, face + K_FACE):
                    partial = partial + b[..., k, None] * a[k]
                dst = dst + partial.float()
                if not fp32_dest_acc:
                    dst = round_bf16(dst)
    return dst


def _checked_operands(
    x: torch.Tensor, w: torch.Tensor, phases: int, accumulation: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate the arguments and return the operands as float32."""
    _check_arguments(x, w, phases, accumulation)
    return as_float32(x), as_float32(w)


def _check_arguments(x: torch.Tensor, w: torch.Tensor, phases: int, accumulation: str) -> None:
    """Raise ValueError/TypeError for a bad fidelity, accumulation mode, shape or dtype."""
    if phases not in FIDELITY_PHASES.values():
        raise ValueError(f"phases must be 1..4 (LoFi, HiFi2, HiFi3, HiFi4), got {phases!r}")
    if accumulation not in ACCUMULATIONS:
        raise ValueError(f"accumulation must be one of {ACCUMULATIONS}, got {accumulation!r}")
    if w.dim() != 2 or x.dim() < 2 or x.shape[-1] != w.shape[0]:
        raise ValueError(f"need x [..., M, K] and w [K, N]; got {tuple(x.shape)} and {tuple(w.shape)}")
    for t in (x, w):
        if t.dtype not in FLOAT_DTYPES:
            raise TypeError(f"expected float32, bfloat16 or float16 operands, got {t.dtype}")
