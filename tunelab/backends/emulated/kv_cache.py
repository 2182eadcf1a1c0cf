"""One decoder's K/V cache, holding values in the KV_CACHE format (written through the device packer)."""

from __future__ import annotations

import torch

from tunelab.backends.emulated.ops import store


class KVCache:
    """K and V as [n_kv_heads, max_len, head_dim]; positions [0, length) are filled, the rest hold zeros."""

    def __init__(self, n_kv_heads: int, head_dim: int, max_len: int, fmt: str, device: torch.device) -> None:
        self.fmt = fmt
        self.k = torch.zeros(n_kv_heads, max_len, head_dim, device=device)
        self.v = torch.zeros(n_kv_heads, max_len, head_dim, device=device)
        self.length = 0

    def write(self, k: torch.Tensor, v: torch.Tensor, start: int) -> None:
        """Store k/v [n_kv, S, d] at positions start.. (bfp blocks run along head_dim, so rows are independent)."""
        if start != self.length:
            raise ValueError(f"cache holds {self.length} positions; cannot write at {start}")
        end = start + k.shape[1]
        self.k[:, start:end] = store(k, self.fmt)
        self.v[:, start:end] = store(v, self.fmt)
        self.length = end

    def read(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """K and V of the first `positions` positions (filled or not)."""
        return self.k[:, :positions], self.v[:, :positions]
