"""tt-transformers' precision vocabulary: tensor groups, formats, op groups, math fidelities, per-decoder configs.

Names and values mirror `models/tt_transformers/tt/model_config.py` exactly: member names are what decoder_config JSON
files use (upper case), member values are what `--optimizations` strings use (lower case).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import Enum

from tunelab.errors import ConfigError

__all__ = [
    "LM_HEAD_FIDELITY",
    "MATMULS",
    "MAX_DECODERS",
    "DecoderPrecision",
    "KernelConfig",
    "MathFidelity",
    "Matmul",
    "ModelPrecision",
    "OpGroup",
    "Precision",
    "TensorGroup",
    "check_decoder_count",
]

# The most decoders a config may describe. The largest model tt-transformers runs (Llama-3.1-405B) has 126
# decoders; 1024 leaves room for larger ones while bounding what a mistyped id or --layers makes tunelab allocate.
MAX_DECODERS = 1024


class TensorGroup(str, Enum):
    """A group of tensors of one decoder whose storage format can be chosen."""

    FF1_FF3 = "ff1_3"
    FF2 = "ff2"
    WQKV = "wqkv"
    WO = "wo"
    KV_CACHE = "kv_cache"
    ACTIVATION = "activation"


class Precision(str, Enum):
    """A storage format. MIXED is tt-transformers' `None` activation setting (only valid for ACTIVATION)."""

    BFP4 = "bfp4"
    BFP8 = "bfp8"
    BF16 = "bf16"
    MIXED = "mixed"

    @property
    def bytes_per_element(self) -> float:
        """DRAM bytes per element of a 32x32 tile in this format (exponent section included)."""
        if self is Precision.MIXED:
            raise ValueError("MIXED is a per-op activation policy, not a storage format")
        return {Precision.BFP4: 0.5625, Precision.BFP8: 1.0625, Precision.BF16: 2.0}[self]


class OpGroup(str, Enum):
    """A group of ops of one decoder whose math fidelity can be chosen (LI = matmul, SDPA = attention)."""

    LI_FF1_FF3 = "li_ff1_3"
    LI_FF2 = "li_ff2"
    LI_QKV_DECODE = "li_qkv_decode"
    LI_O_DECODE = "li_o_decode"
    SDPA_DECODE = "sdpa_decode"
    LI_QKV_PREFILL = "li_qkv_prefill"
    LI_O_PREFILL = "li_o_prefill"
    SDPA_PREFILL = "sdpa_prefill"
    ACCURACY = "accuracy"


@dataclass(frozen=True)
class KernelConfig:
    """The ttnn `WormholeComputeKernelConfig` a fidelity setting builds.

    `phases` is the number of FPU fidelity phases (LoFi 1, HiFi2 2, HiFi4 4); `fp32_dest_acc_en` False means the
    Dst accumulator is bf16. `math_approx_mode` only affects SFPU functions, never matmuls.
    """

    math_fidelity: str
    phases: int
    fp32_dest_acc_en: bool
    packer_l1_acc: bool
    math_approx_mode: bool


class MathFidelity(str, Enum):
    """A tt-transformers math-fidelity setting (`MathFidelitySetting`); `.kernel` is the compute config it selects.

    HIFI2_NOL1ACC exists only in newer tt-metal; an older installation rejects it.
    """

    LOFI = "lofi"
    HIFI2 = "hifi2"
    HIFI2_NA = "hifi2na"
    HIFI2_FP16 = "hifi2fp16"
    HIFI2_NOL1ACC = "hifi2nol1acc"
    HIFI4 = "hifi4"
    HIFI4_FP32 = "hifi4fp32"

    @property
    def kernel(self) -> KernelConfig:
        return _KERNELS[self]


_KERNELS: dict[MathFidelity, KernelConfig] = {
    MathFidelity.LOFI: KernelConfig(
        "LoFi", 1, fp32_dest_acc_en=False, packer_l1_acc=True, math_approx_mode=False
    ),
    MathFidelity.HIFI2: KernelConfig(
        "HiFi2", 2, fp32_dest_acc_en=True, packer_l1_acc=True, math_approx_mode=True
    ),
    MathFidelity.HIFI2_NA: KernelConfig(
        "HiFi2", 2, fp32_dest_acc_en=False, packer_l1_acc=False, math_approx_mode=False
    ),
    MathFidelity.HIFI2_FP16: KernelConfig(
        "HiFi2", 2, fp32_dest_acc_en=False, packer_l1_acc=True, math_approx_mode=False
    ),
    MathFidelity.HIFI2_NOL1ACC: KernelConfig(
        "HiFi2", 2, fp32_dest_acc_en=True, packer_l1_acc=False, math_approx_mode=True
    ),
    MathFidelity.HIFI4: KernelConfig(
        "HiFi4", 4, fp32_dest_acc_en=True, packer_l1_acc=True, math_approx_mode=False
    ),
    # tt-transformers leaves math_approx_mode unset here, so ttnn's WormholeComputeKernelConfig default (True) applies.
    MathFidelity.HIFI4_FP32: KernelConfig(
        "HiFi4", 4, fp32_dest_acc_en=True, packer_l1_acc=True, math_approx_mode=True
    ),
}


@dataclass(frozen=True)
class Matmul:
    """A decoder weight matmul: the tensor group that stores its weights and the op groups that set its fidelity."""

    tensor: TensorGroup
    prefill: OpGroup
    decode: OpGroup


# The one tensor-group -> op-group table: MLP matmuls share an op group between prefill and decode.
MATMULS: tuple[Matmul, ...] = (
    Matmul(TensorGroup.WQKV, OpGroup.LI_QKV_PREFILL, OpGroup.LI_QKV_DECODE),
    Matmul(TensorGroup.WO, OpGroup.LI_O_PREFILL, OpGroup.LI_O_DECODE),
    Matmul(TensorGroup.FF1_FF3, OpGroup.LI_FF1_FF3, OpGroup.LI_FF1_FF3),
    Matmul(TensorGroup.FF2, OpGroup.LI_FF2, OpGroup.LI_FF2),
)

# The LM head is not governed by the decoder configs: tt-transformers runs it at HiFi2 with a bf16 Dst.
LM_HEAD_FIDELITY = MathFidelity.HIFI2_FP16


def check_decoder_count(count: int, what: str) -> int:
    """`count` if it is a decoder count a model can have (1..MAX_DECODERS), else a one-line ConfigError."""
    if isinstance(count, bool) or not isinstance(count, int):
        raise ConfigError(f"{what} must be an integer, got {count!r:.40}")
    if count < 1:
        raise ConfigError(f"{what} must be >= 1, got {count}")
    if count > MAX_DECODERS:
        digits = str(count) if count < 10**40 else f"a {len(str(count))}-digit number"
        raise ConfigError(
            f"{what} must be <= {MAX_DECODERS} (the largest supported model has 126 decoders), got {digits}"
        )
    return count


def _field(group: TensorGroup | OpGroup) -> str:
    return group.name.lower()


@dataclass(frozen=True)
class DecoderPrecision:
    """Formats and fidelities of one decoder. The defaults are tt-transformers' hard defaults (`_default_settings`)."""

    ff1_ff3: Precision = Precision.BFP8
    ff2: Precision = Precision.BFP8
    wqkv: Precision = Precision.BFP8
    wo: Precision = Precision.BFP8
    kv_cache: Precision = Precision.BFP8
    activation: Precision = Precision.MIXED
    li_ff1_ff3: MathFidelity = MathFidelity.HIFI2_FP16
    li_ff2: MathFidelity = MathFidelity.HIFI2_FP16
    li_qkv_decode: MathFidelity = MathFidelity.HIFI2
    li_o_decode: MathFidelity = MathFidelity.HIFI2
    sdpa_decode: MathFidelity = MathFidelity.HIFI2
    li_qkv_prefill: MathFidelity = MathFidelity.HIFI2
    li_o_prefill: MathFidelity = MathFidelity.HIFI2
    sdpa_prefill: MathFidelity = MathFidelity.HIFI4
    accuracy: MathFidelity = MathFidelity.HIFI4_FP32

    def __post_init__(self) -> None:
        for group in TensorGroup:
            value = self.precision(group)
            if not isinstance(value, Precision):
                raise TypeError(f"{group.name} must be a Precision, got {value!r}")
            if value is Precision.MIXED and group is not TensorGroup.ACTIVATION:
                raise ValueError(f"{group.name} cannot be MIXED: only ACTIVATION has a mixed setting")
        for op in OpGroup:
            if not isinstance(self.fidelity(op), MathFidelity):
                raise TypeError(f"{op.name} must be a MathFidelity, got {self.fidelity(op)!r}")

    def precision(self, group: TensorGroup) -> Precision:
        return getattr(self, _field(group))

    def fidelity(self, op: OpGroup) -> MathFidelity:
        return getattr(self, _field(op))

    @property
    def precisions(self) -> dict[TensorGroup, Precision]:
        return {group: self.precision(group) for group in TensorGroup}

    @property
    def fidelities(self) -> dict[OpGroup, MathFidelity]:
        return {op: self.fidelity(op) for op in OpGroup}

    def overlay(
        self,
        precisions: Mapping[TensorGroup, Precision] | None = None,
        fidelities: Mapping[OpGroup, MathFidelity] | None = None,
    ) -> DecoderPrecision:
        """A copy with the given groups replaced."""
        changes = {_field(g): v for g, v in (precisions or {}).items()}
        changes.update({_field(op): v for op, v in (fidelities or {}).items()})
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class ModelPrecision:
    """One `DecoderPrecision` per decoder layer, in layer order."""

    decoders: tuple[DecoderPrecision, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "decoders", tuple(self.decoders))
        if not self.decoders:
            raise ValueError("a ModelPrecision needs at least one decoder")

    @classmethod
    def uniform(cls, decoder: DecoderPrecision, n_layers: int) -> ModelPrecision:
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        return cls((decoder,) * n_layers)

    @property
    def n_layers(self) -> int:
        return len(self.decoders)

    @property
    def is_uniform(self) -> bool:
        return all(d == self.decoders[0] for d in self.decoders)

    def with_decoder(self, layer: int, decoder: DecoderPrecision) -> ModelPrecision:
        if not 0 <= layer < self.n_layers:
            raise IndexError(f"decoder {layer} out of range 0..{self.n_layers - 1}")
        return ModelPrecision((*self.decoders[:layer], decoder, *self.decoders[layer + 1 :]))

    def __len__(self) -> int:
        return len(self.decoders)

    def __iter__(self) -> Iterator[DecoderPrecision]:
        return iter(self.decoders)

    def __getitem__(self, layer: int) -> DecoderPrecision:
        return self.decoders[layer]
