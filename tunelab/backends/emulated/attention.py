"""Emulated tt-transformers attention (tt/attention.py): fused QKV, RoPE, KV cache, SDPA, WO.

Dataflow and dtypes follow tt_dataflow.md §4 (decode) and §5 (prefill).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.backends.emulated.kv_cache import KVCache
from tunelab.backends.emulated.linear import Linear
from tunelab.backends.emulated.ops import EmulatorOptions, Mode, activation_or, rms_norm, rotary, sdpa, store
from tunelab.models.config import ModelConfig
from tunelab.precision import KernelConfig, Precision

MINIMAL_MATMUL_MIN_SEQ = 128  # prefill matmuls switch to minimal_matmul above this sequence length


@dataclass(frozen=True)
class Attention:
    config: ModelConfig
    options: EmulatorOptions
    wqkv: Linear
    wo: Linear
    sdpa_prefill: KernelConfig
    sdpa_decode: KernelConfig
    activation: Precision
    bqkv: torch.Tensor | None
    q_norm: torch.Tensor | None
    k_norm: torch.Tensor | None

    def __call__(self, x: torch.Tensor, mode: Mode, positions: Positions, cache: KVCache) -> torch.Tensor:
        """x [S, dim] (bf16 values) at positions start..start+S-1 -> attention output [S, dim] before the residual."""
        c, seq = self.config, x.shape[0]
        qkv_format = self._qkv_format(mode, seq)
        qkv = store(self.wqkv(x, mode), qkv_format)
        if qkv_format != "bf16":
            qkv = store(qkv, "bf16")  # nlp_create_qkv_heads needs bf16
        if self.bqkv is not None:
            qkv = store(qkv + self.bqkv, "bf16")
        q, k, v = qkv.split([c.q_dim, c.kv_dim, c.kv_dim], dim=-1)
        q = q.unflatten(-1, (c.n_heads, c.head_dim)).transpose(0, 1)  # [h, S, d]
        k = k.unflatten(-1, (c.n_kv_heads, c.head_dim)).transpose(0, 1)
        v = v.unflatten(-1, (c.n_kv_heads, c.head_dim)).transpose(0, 1)
        if self.q_norm is not None:
            q, k = rms_norm(q, self.q_norm, c.norm_eps), rms_norm(k, self.k_norm, c.norm_eps)
        q, k = rotary(q, positions.cos, positions.sin), rotary(k, positions.cos, positions.sin)
        cache.write(k, v, positions.start)
        keys, values = cache.read(positions.mask.shape[-1])
        if mode == "prefill":
            q = store(q, activation_or(self.activation, "bfp8"))
        kernel = self.sdpa_prefill if mode == "prefill" else self.sdpa_decode
        out = sdpa(q, keys, values, positions.mask, kernel, c.head_dim**-0.5, positions.start)
        out = store(out, activation_or(self.activation, "bfp8") if mode == "prefill" else "bf16")
        out = out.transpose(0, 1).flatten(1)  # nlp_concat_heads: [S, h * d]
        wo_format = activation_or(self.activation, "bfp8") if mode == "prefill" else "bf16"
        return store(self.wo(out, mode), wo_format)

    def _qkv_format(self, mode: Mode, seq: int) -> str:
        if mode == "prefill" and self.options.minimal_matmul_prefill and seq > MINIMAL_MATMUL_MIN_SEQ:
            return "bf16"  # minimal_matmul has no dtype argument: output = input dtype
        return activation_or(self.activation, "bf16")


@dataclass(frozen=True)
class Positions:
    """The consecutive positions one pass covers: their RoPE rows and the causal mask over the KV cache."""

    start: int
    cos: torch.Tensor  # [S, head_dim]
    sin: torch.Tensor
    mask: torch.Tensor  # [S, keys] additive: row i sees cache positions 0..start+i

    @classmethod
    def of(cls, start: int, seq: int, rope: tuple[torch.Tensor, torch.Tensor], keys: int) -> Positions:
        """Positions start..start+seq-1, attending over the first `keys` cache positions (>= start + seq)."""
        cos, sin = (table[start : start + seq] for table in rope)
        rows = torch.arange(seq, device=cos.device)[:, None] + start
        cols = torch.arange(keys, device=cos.device)[None, :]
        mask = torch.zeros(seq, keys, device=cos.device).masked_fill_(cols > rows, float("-inf"))
        return cls(start, cos, sin, mask)
