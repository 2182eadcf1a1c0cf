"""The search space over per-decoder configs: which decoders share a choice, which groups are searched, and how.

Decoders are split into groups (`uniform`: one group; `blocks:K`: K contiguous groups; `per-decoder`; or explicit
groups such as `0-3,4-27,28-29`). Each group has one parameter per searched weight group: a (format, fidelity)
pair for a matmul weight (FF1_FF3, FF2, WQKV, WO; the fidelity goes to every searched op group of that matmul,
prefill and decode alike) and a format for KV_CACHE (with the SDPA fidelity when SDPA op groups are searched).
Everything not searched comes from `base`.

A fidelity that cannot change a matmul's result for the chosen weight format is pruned (numerics.md 2.2): with
bfp4 weights the SrcA low part is zero, so HiFi2 sums the same products as LoFi and HiFi4 the same as HiFi3; two
fidelities whose effective phases, Dst format and packer L1 accumulation agree give identical results, and only
the cheaper is offered. math_approx_mode is SFPU-only and never separates two matmul fidelities.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from tunelab.errors import ConfigError
from tunelab.precision import (
    MATMULS,
    DecoderPrecision,
    MathFidelity,
    ModelPrecision,
    OpGroup,
    Precision,
    TensorGroup,
)

__all__ = [
    "DEFAULT_FIDELITIES",
    "DEFAULT_FORMATS",
    "DEFAULT_OPS",
    "DEFAULT_TENSORS",
    "Knob",
    "SearchSpace",
    "check_granularity",
    "effective_kernel",
    "parse_groups",
]

DEFAULT_TENSORS = (
    TensorGroup.FF1_FF3,
    TensorGroup.FF2,
    TensorGroup.WQKV,
    TensorGroup.WO,
    TensorGroup.KV_CACHE,
)
DEFAULT_OPS = (
    OpGroup.LI_FF1_FF3,
    OpGroup.LI_FF2,
    OpGroup.LI_QKV_DECODE,
    OpGroup.LI_QKV_PREFILL,
    OpGroup.LI_O_DECODE,
    OpGroup.LI_O_PREFILL,
)
DEFAULT_FORMATS = (Precision.BFP4, Precision.BFP8, Precision.BF16)
DEFAULT_FIDELITIES = (MathFidelity.LOFI, MathFidelity.HIFI2_FP16, MathFidelity.HIFI2, MathFidelity.HIFI4)
SDPA_OPS = (OpGroup.SDPA_DECODE, OpGroup.SDPA_PREFILL)
# SrcA (weight) mantissa parts a format populates: bfp4 fits in the high part alone (numerics.md 2.2).
_WEIGHT_PARTS = {Precision.BFP4: 1, Precision.BFP8: 2, Precision.BF16: 2}
_PHASE_TERMS = ("a_hi*b_hi", "a_lo*b_hi", "a_hi*b_lo", "a_lo*b_lo")  # phase order; a = SrcA (weights)


def effective_kernel(fidelity: MathFidelity, weight: Precision) -> tuple[frozenset[str], bool, bool]:
    """What decides a matmul's result: the non-zero phase products, fp32 Dst, packer L1 accumulation."""
    kernel = fidelity.kernel
    terms = _PHASE_TERMS[: kernel.phases]
    if _WEIGHT_PARTS[weight] == 1:
        terms = tuple(t for t in terms if not t.startswith("a_lo"))
    return frozenset(terms), kernel.fp32_dest_acc_en, kernel.packer_l1_acc


def distinct_fidelities(fidelities: Sequence[MathFidelity], weight: Precision) -> tuple[MathFidelity, ...]:
    """`fidelities` without those that give the same result as an earlier, cheaper one for `weight`."""
    kept: dict[tuple, MathFidelity] = {}
    for fidelity in sorted(fidelities, key=lambda f: f.kernel.phases):
        kept.setdefault(effective_kernel(fidelity, weight), fidelity)
    return tuple(f for f in fidelities if f in kept.values())


@dataclass(frozen=True)
class Knob:
    """One searched choice per decoder group: a weight group's format and the fidelity of its op groups."""

    tensor: TensorGroup
    ops: tuple[OpGroup, ...]
    choices: tuple[tuple[Precision, MathFidelity | None], ...]

    @staticmethod
    def label(choice: tuple[Precision, MathFidelity | None]) -> str:
        fmt, fidelity = choice
        return fmt.name if fidelity is None else f"{fmt.name}/{fidelity.name}"

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.label(c) for c in self.choices)

    def parse(self, label: str) -> tuple[Precision, MathFidelity | None]:
        for choice in self.choices:
            if self.label(choice) == label:
                return choice
        raise ConfigError(f"{self.tensor.name}: {label!r} is not one of {', '.join(self.labels)}")

    def apply(self, decoder: DecoderPrecision, label: str) -> DecoderPrecision:
        fmt, fidelity = self.parse(label)
        fidelities = {} if fidelity is None else dict.fromkeys(self.ops, fidelity)
        return decoder.overlay({self.tensor: fmt}, fidelities)

    def nearest(self, decoder: DecoderPrecision, allowed: Sequence[str] | None = None) -> str:
        """The choice (among `allowed` labels) closest to a decoder's own setting (for configs the space does not
        contain exactly)."""
        fmt = decoder.precision(self.tensor)
        fidelity = decoder.fidelity(self.ops[0]) if self.ops else None

        def distance(choice: tuple[Precision, MathFidelity | None]) -> tuple:
            same_fmt = choice[0] is fmt
            same_effect = fidelity is None or (
                choice[1] is not None and effective_kernel(choice[1], fmt) == effective_kernel(fidelity, fmt)
            )
            phases = (
                0
                if fidelity is None or choice[1] is None
                else abs(choice[1].kernel.phases - fidelity.kernel.phases)
            )
            return (not same_fmt, not same_effect, phases)

        pool = [c for c in self.choices if allowed is None or self.label(c) in allowed]
        return self.label(min(pool, key=distance))

    def rank(self, label: str) -> tuple[int, int, bool]:
        """How precise a choice is: (format, effective phase products, fp32 Dst); higher is more precise."""
        fmt, fidelity = self.parse(label)
        order = (Precision.BFP4, Precision.BFP8, Precision.BF16)
        if fidelity is None:
            return order.index(fmt), 0, False
        terms, fp32, _ = effective_kernel(fidelity, fmt)
        return order.index(fmt), len(terms), fp32


_SPACE_MEMBER = {"tensors": "tensor", "ops": "op", "formats": "format", "fidelities": "fidelity"}


@dataclass(frozen=True)
class SearchSpace:
    """Per-decoder configs reachable by the search: `groups` of decoders, `knobs` per group, the rest from `base`."""

    base: ModelPrecision
    groups: tuple[tuple[int, ...], ...]
    knobs: tuple[Knob, ...]
    granularity: str = "blocks:4"
    spec: dict[str, Any] = field(default_factory=dict, compare=False)
    allowed: dict[str, tuple[str, ...]] | None = None  # per parameter, the labels kept (default: all)

    @classmethod
    def build(
        cls,
        base: ModelPrecision,
        granularity: str = "blocks:4",
        tensors: Sequence[TensorGroup] = DEFAULT_TENSORS,
        ops: Sequence[OpGroup] = DEFAULT_OPS,
        formats: Sequence[Precision] = DEFAULT_FORMATS,
        fidelities: Sequence[MathFidelity] = DEFAULT_FIDELITIES,
    ) -> SearchSpace:
        if TensorGroup.ACTIVATION in tensors:
            raise ConfigError(
                "ACTIVATION is not searchable yet: the emulator follows tt-transformers' dataflow for mixed "
                "activations only (issue 11)"
            )
        if not tensors:
            raise ConfigError("the search space needs at least one tensor group")
        if not formats:
            raise ConfigError("the search space needs at least one format")
        if Precision.MIXED in formats:
            raise ConfigError("MIXED is an ACTIVATION setting, not a weight format")
        fidelities = tuple(dict.fromkeys(fidelities))
        searched_ops = set(ops)
        knobs = []
        for tensor in tensors:
            if tensor is TensorGroup.KV_CACHE:
                knob_ops = tuple(op for op in SDPA_OPS if op in searched_ops)
            else:
                matmul = next(m for m in MATMULS if m.tensor is tensor)
                knob_ops = tuple(
                    dict.fromkeys(op for op in (matmul.decode, matmul.prefill) if op in searched_ops)
                )
            if knob_ops and not fidelities:
                raise ConfigError("searched op groups need at least one fidelity")
            choices = tuple(
                (fmt, fidelity)
                for fmt in formats
                for fidelity in (distinct_fidelities(fidelities, fmt) if knob_ops else (None,))
            )
            knobs.append(Knob(tensor, knob_ops, choices))
        groups = parse_groups(granularity, base.n_layers)
        spec = {
            "granularity": granularity,
            "tensors": [t.name for t in tensors],
            "ops": [o.name for o in ops],
            "formats": [f.name for f in formats],
            "fidelities": [f.name for f in fidelities],
        }
        return cls(base, groups, tuple(knobs), granularity, spec)

    @classmethod
    def from_spec(cls, base: ModelPrecision, spec: Mapping[str, Any]) -> SearchSpace:
        def members(enum: Any, key: str, default: Sequence[Any]) -> tuple:
            names = spec.get(key)
            if names is None:
                return tuple(default)
            try:
                return tuple(enum[n.upper()] for n in names)
            except KeyError as exc:
                raise ConfigError(
                    f"unknown {_SPACE_MEMBER[key]} {exc.args[0]!r} (expected one of {', '.join(m.name for m in enum)})"
                ) from None

        return cls.build(
            base,
            spec.get("granularity", "blocks:4"),
            members(TensorGroup, "tensors", DEFAULT_TENSORS),
            members(OpGroup, "ops", DEFAULT_OPS),
            members(Precision, "formats", DEFAULT_FORMATS),
            members(MathFidelity, "fidelities", DEFAULT_FIDELITIES),
        )

    def param_name(self, group: int, knob: Knob) -> str:
        return f"g{group}.{knob.tensor.name}"

    @property
    def params(self) -> dict[str, tuple[str, ...]]:
        """Every parameter name with its choices, in a stable order."""
        allowed = self.allowed or {}
        return {
            (name := self.param_name(g, k)): allowed.get(name, k.labels)
            for g in range(len(self.groups))
            for k in self.knobs
        }

    @property
    def size(self) -> int:
        n = 1
        for labels in self.params.values():
            n *= len(labels)
        return n

    def decode(self, params: Mapping[str, str]) -> ModelPrecision:
        """The config a parameter assignment stands for."""
        decoders = list(self.base.decoders)
        for g, layers in enumerate(self.groups):
            for knob in self.knobs:
                name = self.param_name(g, knob)
                if name not in params:
                    raise ConfigError(f"parameter {name} is missing")
                for layer in layers:
                    decoders[layer] = knob.apply(decoders[layer], params[name])
        return ModelPrecision(tuple(decoders))

    def encode(self, precision: ModelPrecision) -> dict[str, str]:
        """The parameters nearest to a config: per group and knob, its decoders' most common nearest choice."""
        if precision.n_layers != self.base.n_layers:
            raise ConfigError(f"the config has {precision.n_layers} decoders, the space {self.base.n_layers}")
        params = {}
        for g, layers in enumerate(self.groups):
            for knob in self.knobs:
                name = self.param_name(g, knob)
                allowed = self.params[name]
                votes = Counter(knob.nearest(precision[layer], allowed) for layer in layers)
                params[name] = votes.most_common(1)[0][0]
        return params

    def contains(self, precision: ModelPrecision) -> bool:
        return self.decode(self.encode(precision)) == precision

    def without_dominated(self, costs: Callable[[dict[str, str]], Sequence[float]]) -> SearchSpace:
        """The space without choices that are less precise than another choice of the same parameter and no cheaper
        on any of `costs` (lower is better; e.g. time per token), measured by changing one parameter at a time.

        Pruning assumes the costs are additive over parameters, as the throughput model is."""
        params = self.params
        base = {name: labels[-1] for name, labels in params.items()}
        allowed = {}
        for g in range(len(self.groups)):
            for knob in self.knobs:
                name = self.param_name(g, knob)
                cost = {label: tuple(costs({**base, name: label})) for label in params[name]}

                def dominated(label: str, knob: Knob = knob, cost: dict = cost) -> bool:
                    rank = knob.rank(label)
                    return any(
                        other != label
                        and all(a >= b for a, b in zip(knob.rank(other), rank, strict=True))
                        and knob.rank(other) != rank
                        and all(a <= b for a, b in zip(cost[other], cost[label], strict=True))
                        for other in cost
                    )

                allowed[name] = tuple(label for label in params[name] if not dominated(label))
        return dataclasses.replace(self, allowed=allowed)

    def describe(self, params: Mapping[str, str]) -> str:
        """A config in words: per decoder group, the searched choices."""
        parts = []
        for g, layers in enumerate(self.groups):
            span = f"{layers[0]}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
            choices = " ".join(f"{k.tensor.name}={params[self.param_name(g, k)]}" for k in self.knobs)
            parts.append(f"[{span}] {choices}")
        return "; ".join(parts)


def check_granularity(granularity: str) -> None:
    """Check a granularity's syntax before the model's decoder count is known."""
    if granularity in ("uniform", "per-decoder") or re.fullmatch(r"blocks:[1-9]\d*", granularity):
        return
    if not re.fullmatch(r"\s*\d+\s*(-\s*\d+\s*)?(,\s*\d+\s*(-\s*\d+\s*)?)*", granularity):
        raise ConfigError(
            f"unknown granularity {granularity!r} (expected uniform, per-decoder, blocks:K or ranges like 0-3,4-9)"
        )


def parse_groups(granularity: str, n_layers: int) -> tuple[tuple[int, ...], ...]:
    """Decoder groups for `uniform`, `per-decoder`, `blocks:K` or explicit ranges like `0-3,4-27,28-29`."""
    if n_layers < 1:
        raise ConfigError(f"a model needs at least one decoder, got {n_layers}")
    if granularity == "uniform":
        return (tuple(range(n_layers)),)
    if granularity == "per-decoder":
        return tuple((i,) for i in range(n_layers))
    match = re.fullmatch(r"blocks:(\d+)", granularity)
    if match:
        k = int(match.group(1))
        if not 1 <= k <= n_layers:
            raise ConfigError(f"blocks:{k} needs 1..{n_layers} blocks for {n_layers} decoders")
        bounds = [round(i * n_layers / k) for i in range(k + 1)]
        return tuple(tuple(range(bounds[i], bounds[i + 1])) for i in range(k))
    groups = []
    for part in granularity.split(","):
        m = re.fullmatch(r"\s*(\d+)\s*(?:-\s*(\d+))?\s*", part)
        if not m:
            raise ConfigError(
                f"unknown granularity {granularity!r} (expected uniform, per-decoder, blocks:K or ranges like 0-3,4-9)"
            )
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        if hi < lo:
            raise ConfigError(f"granularity {granularity!r}: range {lo}-{hi} is empty")
        if hi >= n_layers:
            raise ConfigError(
                f"granularity {granularity[:80]!r}: decoder {hi} is beyond the model's decoders 0..{n_layers - 1}"
            )
        groups.append(tuple(range(lo, hi + 1)))
    covered = sorted(i for g in groups for i in g)
    if covered != list(range(n_layers)):
        raise ConfigError(f"granularity {granularity!r} must cover decoders 0..{n_layers - 1} exactly once")
    return tuple(groups)
