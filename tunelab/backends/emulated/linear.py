"""A weight that knows its storage format and the kernel configs of its op groups (precision injected)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tunelab.backends.emulated.ops import Accumulation, Mode, linear
from tunelab.numerics import SrcA
from tunelab.precision import KernelConfig


@dataclass(frozen=True)
class Linear:
    """`ttnn.linear(x, weight)` with the prefill or decode op group's compute config; returns the fp32 Dst."""

    weight: SrcA  # [in, out], values of the weight's storage format, prepared for the FPU's SrcA
    prefill: KernelConfig
    decode: KernelConfig
    accumulation: Accumulation

    def __call__(self, x: torch.Tensor, mode: Mode) -> torch.Tensor:
        kernel = self.prefill if mode == "prefill" else self.decode
        return linear(x, self.weight, kernel, self.accumulation)
