"""Emulated tt-transformers MLP (tt/mlp.py): w1/w3 gate and up, SiLU-multiply into bfp8, w2 down (§6)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.backends.emulated.attention import MINIMAL_MATMUL_MIN_SEQ
from tunelab.backends.emulated.linear import Linear
from tunelab.backends.emulated.ops import EmulatorOptions, Mode, activation_or, silu_mul, store
from tunelab.precision import Precision


@dataclass(frozen=True)
class MLP:
    options: EmulatorOptions
    w1_w3: Linear  # [w1 | w3]: the gate and up matmuls as one (their columns are independent: same values)
    w2: Linear
    activation: Precision

    def __call__(self, x: torch.Tensor, mode: Mode) -> torch.Tensor:
        out_fmt = activation_or(self.activation, "bf16")
        gate, up = (store(y, out_fmt) for y in self.w1_w3(x, mode).chunk(2, dim=-1))
        hidden = silu_mul(gate, up, activation_or(self.activation, "bfp8"))
        minimal = (
            mode == "prefill" and self.options.minimal_matmul_prefill and x.shape[0] > MINIMAL_MATMUL_MIN_SEQ
        )
        down_fmt = activation_or(self.activation, "bfp8") if minimal else out_fmt
        return store(self.w2(hidden, mode), down_fmt)
