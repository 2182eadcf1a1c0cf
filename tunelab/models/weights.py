"""Canonical weights of a decoder-only model, laid out as tt-transformers holds them on device.

Every architecture is converted into this one layout at load time, so the emulator never branches on checkpoint
quirks: matrices are [in, out] (ttnn's layout, so bfp blocks run along the output dimension), Q/K/V are fused
into one WQKV matrix with columns [Q | K | V], and the Q/K columns (and their bias and q/k-norm weights) are in
tt-transformers' Meta RoPE order (rotation pairs interleaved: HF -> Meta `reverse_permute`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["LayerWeights", "ModelWeights"]


@dataclass
class LayerWeights:
    """One decoder layer (float32 tensors)."""

    attention_norm: torch.Tensor  # [dim]
    wqkv: torch.Tensor  # [dim, q_dim + 2 * kv_dim]
    wo: torch.Tensor  # [q_dim, dim]
    ffn_norm: torch.Tensor  # [dim]
    w1: torch.Tensor  # [dim, hidden] gate
    w3: torch.Tensor  # [dim, hidden] up
    w2: torch.Tensor  # [hidden, dim] down
    bqkv: torch.Tensor | None = None  # [q_dim + 2 * kv_dim] (Qwen2)
    q_norm: torch.Tensor | None = None  # [head_dim] (Qwen3)
    k_norm: torch.Tensor | None = None  # [head_dim] (Qwen3)


@dataclass
class ModelWeights:
    """Embedding, decoder layers, final norm and LM head (float32 tensors)."""

    embedding: torch.Tensor  # [vocab, dim]
    layers: list[LayerWeights]
    norm: torch.Tensor  # [dim]
    lm_head: torch.Tensor  # [dim, vocab]
