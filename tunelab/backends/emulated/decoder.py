"""Emulated tt-transformers decoder layer (tt/decoder.py): norm -> attention -> add -> norm -> MLP -> add (§7)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.backends.emulated.attention import Attention, Positions
from tunelab.backends.emulated.kv_cache import KVCache
from tunelab.backends.emulated.mlp import MLP
from tunelab.backends.emulated.ops import Mode, activation_or, rms_norm, store
from tunelab.precision import Precision


@dataclass(frozen=True)
class Decoder:
    attention_norm: torch.Tensor
    ffn_norm: torch.Tensor
    norm_eps: float
    attention: Attention
    mlp: MLP
    activation: Precision

    def __call__(self, x: torch.Tensor, mode: Mode, positions: Positions, cache: KVCache) -> torch.Tensor:
        # The residual enters in the activation dtype (to_memory_config in decode), and both adds keep it: the
        # first add's output takes input A's dtype, the second is cast to `activation or bf16`.
        residual_fmt = activation_or(self.activation, "bf16")
        if residual_fmt != "bf16":  # a bf16 residual (embedding or decoder output) needs no typecast
            x = store(x, residual_fmt)
        attn = self.attention(rms_norm(x, self.attention_norm, self.norm_eps), mode, positions, cache)
        h = store(x + attn, residual_fmt)
        out = self.mlp(rms_norm(h, self.ffn_norm, self.norm_eps), mode)
        return store(h + out, residual_fmt)
