"""Quantised weights, each (layer, tensor, format) converted once per process and kept in a bounded LRU cache.

A trial that changes one decoder's config re-quantises only that decoder's changed groups.
"""

from __future__ import annotations

from collections import OrderedDict

import torch

from tunelab.models.weights import ModelWeights
from tunelab.numerics import SrcA, quantize
from tunelab.numerics.accumulate_cpu import panel_bytes

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
        self._entries: OrderedDict[tuple[int, tuple[str, ...], str], SrcA] = OrderedDict()
        self._bytes = 0
        self.conversions = 0

    def get(self, layer: int, fmt: str, *names: str) -> SrcA:
        """Layer `layer`'s `names` tensors (wqkv, wo, w1, w2, w3) as stored in `fmt`, side by side along the
        output dimension (each quantised on its own, as ttnn stores them), prepared for SrcA."""
        key = (layer, names, fmt)
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        tensors = [quantize(getattr(self.weights.layers[layer], name).to(self.device), fmt) for name in names]
        weight = SrcA(torch.cat(tensors, dim=-1) if len(tensors) > 1 else tensors[0])
        self.conversions += len(names)
        self._entries[key] = weight
        self._bytes += _nbytes(weight)
        while self._bytes > self.budget_bytes and len(self._entries) > 1:
            _, evicted = self._entries.popitem(last=False)
            self._bytes -= _nbytes(evicted)
        return weight


def _nbytes(weight: SrcA) -> int:
    """Bytes a weight can come to hold: all + hi (8 per element) and the CPU exact kernel's panels."""
    k, n = weight.shape
    return 8 * k * n + panel_bytes(k, n)
