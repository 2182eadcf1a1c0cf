"""RoPE tables as tt-transformers uploads them: host fp32 cos/sin rounded to bf16, in Meta interleaved order.

The frequencies come from the checkpoint's own transformers rotary module, so every RoPE type transformers knows
(default, llama3, yarn, longrope, ...) is computed exactly as the reference model computes it.
"""

from __future__ import annotations

import torch

from tunelab.numerics import quantize


def rope_tables(
    rotary_emb: torch.nn.Module, n_positions: int, head_dim: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin) [n_positions, head_dim] with cos[:, 2i] == cos[:, 2i+1] == cos(pos * inv_freq[i]) * scaling."""
    device = next(rotary_emb.buffers()).device
    positions = torch.arange(n_positions, device=device)[None]
    probe = torch.zeros(1, n_positions, head_dim, device=device)
    with torch.no_grad():
        cos, sin = rotary_emb(probe, positions)  # HF layout: [1, S, head_dim] = cat(freqs, freqs)
    half = head_dim // 2
    meta = (cos[0, :, :half].repeat_interleave(2, dim=-1), sin[0, :, :half].repeat_interleave(2, dim=-1))
    return quantize(meta[0].float().contiguous(), "bf16"), quantize(meta[1].float().contiguous(), "bf16")
