"""Quantised weights, each (layer, tensor, format) converted once per process and kept in a bounded LRU cache.

A trial that changes one decoder's config re-quantises only that decoder's changed groups.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from tunelab.models.weights import ModelWeights
from tunelab.numerics import SrcA, quantize

__all__ = ["WeightCache"]

DEFAULT_BUDGET_BYTES = 2 * 1024**3


class WeightCache:
    """Host-quantised decoder weights (`quantize`, as `ttnn.as_tensor` stores them), LRU-bounded by bytes."""

    def __init__(
        self,
        weights: ModelWeights,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        device: torch.device | None = None,
    ) -> None:
        self.weights = weights
        self.device = device or torch.device("cpu")
        self.budget_bytes = budget_bytes
        self._entries: OrderedDict[tuple[int, str, str], SrcA] = OrderedDict()
        self._bytes = 0
        self.conversions = 0

    def get(self, layer: int, name: str, fmt: str) -> SrcA:
        """Layer `layer`'s `name` tensor (wqkv, wo, w1, w2, w3) as stored in `fmt`, prepared for SrcA."""
        key = (layer, name, fmt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        weight = SrcA(quantize(getattr(self.weights.layers[layer], name).to(self.device), fmt))
        self.conversions += 1
        self._entries[key] = weight
        self._bytes += _nbytes(weight)
        while self._bytes > self.budget_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _nbytes(evicted)
        return weight


def _nbytes(weight: SrcA) -> int:
    """Bytes held for a weight (its high part, made for LoFi/HiFi3 on first use, is counted as if present)."""
    return 2 * weight.all.numel() * weight.all.element_size()
