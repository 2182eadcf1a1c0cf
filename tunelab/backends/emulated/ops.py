"""The device ops one tt-transformers decoder uses, emulated on top of `tunelab.numerics`.

Every op returns float32 tensors whose values are representable in the format the device would store. Choices the
reference docs leave open are made here, named, and documented in one place:
- op outputs and KV-cache writes use the on-device packer model (`pack_on_device`);
- RMSNorm, SiLU and softmax are computed in fp32 and their outputs packed (their SFPU approximations are
  version-dependent; tt_dataflow.md §10);
- SDPA's two matmuls use the fidelity split with one output rounding (flash-attention's internal accumulation is
  undocumented, tt_dataflow.md §11); the softmax probabilities are packed to bf16 before P @ V.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from tunelab.numerics import SrcA, fidelity_matmul, pack_on_device, phase_sum
from tunelab.numerics.bf16 import round_bf16
from tunelab.precision import KernelConfig, Precision

Mode = Literal["prefill", "decode"]
Accumulation = Literal["fast", "exact"]
SDPA_ROW_BLOCK = 128  # attention blocks run between multiples of this position (cache-sized score tiles)


@dataclass(frozen=True)
class EmulatorOptions:
    """Emulation choices that change results; recorded with every evaluation.

    accumulation: "exact" rounds a bf16 Dst after every 16-deep K step as the chip does (fp32_dest_acc_en off);
        "fast" accumulates in fp32 and rounds once at the output.
    minimal_matmul_prefill: newer tt-transformers runs prefill QKV and w2 (seq > 128) through `minimal_matmul`,
        whose output takes the input's dtype (w2 output bfp8); older versions use `linear` (bf16 output).
    lm_head_format: tt-transformers' `lm_head_dtype` (weights and logits); bfp8 unless a model sets it.
    """

    accumulation: Accumulation = "fast"
    minimal_matmul_prefill: bool = True
    lm_head_format: str = "bfp8"


def store(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The values an op output or cache write holds in `fmt` ("bf16", "bfp8", "bfp4"), packed from Dst."""
    return pack_on_device(x, fmt)


def activation_or(activation: Precision, fallback: str) -> str:
    """tt-transformers' `activation_dtype or <fallback>`: MIXED (None) falls back."""
    return fallback if activation is Precision.MIXED else activation.value


def linear(x: torch.Tensor, weight: SrcA, kernel: KernelConfig, accumulation: Accumulation) -> torch.Tensor:
    """`ttnn.linear(x, weight)` at a kernel config: the fp32 Dst result, before output packing."""
    return fidelity_matmul(
        x, weight, phases=kernel.phases, fp32_dest_acc=kernel.fp32_dest_acc_en, accumulation=accumulation
    )


def batched_matmul(x: torch.Tensor, w: torch.Tensor | SrcA, kernel: KernelConfig) -> torch.Tensor:
    """A batched fidelity matmul (x [..., M, K] on SrcB, w [..., K, N] on SrcA), one rounding at the output."""
    y = phase_sum(x, w, kernel.phases)
    return y if kernel.fp32_dest_acc_en else round_bf16(y)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """`ttnn.rms_norm` with a bf16 weight: fp32 math, bf16 output."""
    scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return store(x * scale * weight, "bf16")


def silu_mul(gate: torch.Tensor, up: torch.Tensor, out_fmt: str) -> torch.Tensor:
    """`ttnn.mul(gate, up, input_tensor_a_activations=[SILU])`: SiLU into a bf16 CB, then the product."""
    activated = store(torch.nn.functional.silu(gate), "bf16")
    return store(activated * up, out_fmt)


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """`rotary_embedding_llama` on Meta-ordered heads: out = bf16(bf16(x*cos) + bf16(rot(x)*sin)).

    rot swaps each interleaved pair (x[2i], x[2i+1]) -> (-x[2i+1], x[2i]) (the exact 32x32 trans_mat matmul).
    """
    pairs = x.unflatten(-1, (-1, 2))
    rot = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    return store(store(x * cos, "bf16") + store(rot * sin, "bf16"), "bf16")


def sdpa(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    kernel: KernelConfig,
    scale: float,
    start: int,
) -> torch.Tensor:
    """Scaled dot-product attention: q [h, M, d] at positions start..start+M-1, k/v [kv, N, d] with q heads
    h = g * kv grouped per kv head (grouped-query attention, as HF's repeat_kv), causal mask [M, N] of 0 / -inf
    -> [h, M, d].

    Query rows run in blocks of the SDPA_ROW_BLOCK positions between multiples of SDPA_ROW_BLOCK, so that a
    block's scores stay in cache, and a block reads the keys up to the next multiple (all of them masked for
    positions past its rows). A position's block, and so the length of its softmax and P @ V reductions, is the
    same whether it is computed alone or with others: its bits do not depend on the rows computed with it (a
    library kernel's reduction order may depend on the length).
    """
    heads, rows, _ = q.shape
    groups = heads // k.shape[0]
    grouped = q.unflatten(0, (-1, groups))  # [kv, g, M, d]: the g query heads sharing a kv head
    out = torch.empty_like(grouped)
    first = 0
    while first < rows:
        boundary = ((start + first) // SDPA_ROW_BLOCK + 1) * SDPA_ROW_BLOCK
        last, keys = min(rows, boundary - start), min(k.shape[1], boundary)
        block = grouped[:, :, first:last].flatten(1, 2)  # [kv, g * m, d]
        scores = batched_matmul(block, k[:, :keys].mT, kernel)
        # mask + scale * scores == scores * scale + mask for a 0 / -inf mask, whether or not the add is fused
        scores = torch.add(mask[first:last, :keys], scores.unflatten(1, (groups, -1)), alpha=scale)
        probabilities = store(torch.softmax(scores, dim=-1), "bf16").flatten(1, 2)
        out[:, :, first:last] = batched_matmul(probabilities, v[:, :keys], kernel).unflatten(1, (groups, -1))
        first = last
    return out.flatten(0, 1)
