"""The decode/prefill performance model: tokens/s/user and time to first token from shapes, config and device.

Decode, per token (tensor parallel over the device's D chips; each decoder's own formats and fidelities):

    t = Σ_decoders [ Σ_matmuls max(bytes/D / BW, elems/D / unpack, 2·rows·elems/D / peak(phases))
                     + max(KV bytes / BW, SDPA flops / peak) + ops·t_op + n_ccl·t_collective ]
        + LM head (bfp8 unless given, HiFi2, same roofline) + embedding row reads + t_host

with BW = spec DRAM bandwidth x microbenchmark fraction x `dram_efficiency`, rows = 32·ceil(batch/32) (a decode
batch of 32 or fewer costs a full tile), peak(phases) = cores·4096/phases·clock, and a collective over n chips
costing (n-1)·t_step + (n-1)/n·bytes / (links·link BW·`eth_efficiency`) (+ `ccl_2d_us` on a 2D mesh).
Prefill (TTFT) is the same sum over S prompt tokens with compute at `prefill_efficiency` of peak (compute-bound,
so fidelity-dependent), causal SDPA flops 2·S²·q_dim/D, weights re-read per prefill chunk, and per-op
`prefill_op_us`. The free parameters are fitted by `tunelab perf calibrate` (`tunelab.perf.calibration`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import asdict, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Literal

from tunelab.errors import TunelabError
from tunelab.files import read_json, shown
from tunelab.models.config import ModelConfig
from tunelab.perf.devices import Device
from tunelab.perf.support import check_supported, max_prefill_chunk, padded_hidden_dim
from tunelab.precision import LM_HEAD_FIDELITY, MATMULS, ModelPrecision, Precision, TensorGroup

__all__ = [
    "PARAMS_FILE",
    "DoesNotFit",
    "PerfParams",
    "Throughput",
    "decode_breakdown",
    "load_params",
    "memory_per_chip",
    "param_problem",
    "predict",
    "prefill_breakdown",
]

PARAMS_FILE = Path(__file__).parent / "data" / "perf_params.json"
PARAMS_WHAT = "a perf parameters JSON file (`tunelab perf calibrate` writes one)"
# Parameters the model divides by (efficiencies and rates): they must be positive; the others are times, >= 0.
DIVISOR_PARAMS = frozenset({"dram_efficiency", "unpack_per_cycle", "eth_efficiency", "prefill_efficiency"})
MAX_PARAM = 1e6  # far above any fit (the packaged ones are 0.5..80); larger values overflow the model's sums

TILE = 32
DECODE_OPS = 17  # per decoder: 2 norms, QKV, heads, RoPE, cache update, SDPA, concat, WO, w1, w3, mul, w2, 2 adds, 2 casts
EMBEDDING_BYTES = 2.0  # bf16, row-major
ACTIVATION_BYTES = 2.0  # bf16 payload of collectives
LM_HEAD_PHASES = LM_HEAD_FIDELITY.kernel.phases


class DoesNotFit(TunelabError):
    """Weights plus KV cache exceed a chip's DRAM."""


@dataclass(frozen=True)
class PerfParams:
    """Free parameters of the model, fitted on tt-transformers' PERF.md numbers (`tunelab perf calibrate`)."""

    dram_efficiency: float  # fraction of the DRAM microbenchmark bandwidth decode matmuls reach
    unpack_per_cycle: float  # weight elements a core consumes per cycle (binds only for bfp4)
    host_ms: float  # per token: host round trip, sampling, LM-head/embedding dispatch
    op_us: float  # per decode op beyond its roofline: dispatch gap and small ops
    eth_efficiency: float  # fraction of raw Ethernet link bandwidth collectives reach
    ccl_step_us: float  # latency of one step of a line/ring collective
    ccl_2d_us: float  # extra latency of a collective on a 2D mesh (Galaxy)
    prefill_efficiency: float  # fraction of peak FPU rate prefill matmuls reach
    prefill_op_us: float  # per prefill op beyond its roofline
    prefill_ccl_step_us: float  # exposed latency of one step of a prefill collective


@dataclass(frozen=True)
class Throughput:
    """Decode speed and TTFT of one (model, config, device, batch, seq_len); `kind` says modelled or measured."""

    tok_s_u: float
    ttft_ms: float | None
    kind: Literal["modelled", "measured"]
    model: str
    device: str
    batch: int
    seq_len: int
    breakdown_ms: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


@cache
def _packaged_params() -> PerfParams:
    return load_params(PARAMS_FILE)


def load_params(path: str | Path | None = None) -> PerfParams:
    """Fitted parameters from a params JSON (default: the packaged fit); a bad file is one line naming it."""
    if path is None:
        return _packaged_params()
    if not Path(path).exists():
        raise TunelabError(
            f"{path}: no fitted parameters there; `tunelab perf calibrate -o {path}` writes them"
        )
    return _parse_params(read_json(path, PARAMS_WHAT), str(path))


def _parse_params(data: object, source: str) -> PerfParams:
    """`PerfParams` from a params JSON's content, every field present, known and a finite number in range."""
    if not isinstance(data, dict):
        raise TunelabError(f'{source}: expected a JSON object with a "params" object, found {shown(data)}')
    if "params" not in data:
        raise TunelabError(f'{source}: has no "params" object (the format `tunelab perf calibrate` writes)')
    params = data["params"]
    if not isinstance(params, dict):
        raise TunelabError(
            f'{source}: "params" must be an object of fitted parameters, found {shown(params)}'
        )
    names = [f.name for f in fields(PerfParams)]
    unknown = [key for key in params if key not in names]
    if unknown:
        raise TunelabError(
            f"{source}: params has an unknown key {shown(unknown[0])} (expected {', '.join(names)})"
        )
    missing = [name for name in names if name not in params]
    if missing:
        raise TunelabError(f"{source}: params lacks {', '.join(missing)}")
    for name in names:
        problem = param_problem(name, params[name])
        if problem is not None:
            raise TunelabError(f"{source}: params.{name} {problem}")
    return PerfParams(**{name: float(params[name]) for name in names})


def param_problem(name: str, value: object) -> str | None:
    """Why `value` cannot be parameter `name` (a finite number in range; positive for a divisor), or None."""
    divisor = name in DIVISOR_PARAMS
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (divisor and value == 0):
        expected = "a positive number" if divisor else "a number >= 0"
        return f"must be {expected}, found {shown(value)}"
    if value > MAX_PARAM:
        return f"must be at most {MAX_PARAM:g}, found {shown(value)}"
    return None


def predict(
    model: ModelConfig,
    precision: ModelPrecision,
    device: Device,
    batch: int = 1,
    seq_len: int = 512,
    context_len: int | None = None,
    params: PerfParams | None = None,
    lm_head: Precision = Precision.BFP8,
) -> Throughput:
    """Modelled decode tok/s/user at `context_len` tokens of context (default `seq_len`) and TTFT for a prompt of
    `seq_len` tokens. Raises `Unsupported` / `DoesNotFit` where tt-transformers would refuse the run.

    `lm_head` is the LM head's weight format (tt-transformers' `lm_head_dtype`): bfp8 unless a model sets it
    (tt_dataflow.md section 8: base ModelArgs never does)."""
    if precision.n_layers != model.n_layers:
        raise TunelabError(f"config has {precision.n_layers} decoders but {model.name} has {model.n_layers}")
    if lm_head is Precision.MIXED:
        raise TunelabError("the LM head needs a storage format (bfp4, bfp8 or bf16), not mixed")
    context_len = seq_len if context_len is None else context_len
    _check_sizes(model, batch, seq_len, context_len)
    check_supported(model, device)
    tokens = max(seq_len, context_len)
    weights, kv = memory_per_chip(model, precision, device, batch, tokens, lm_head)
    if weights + kv > device.dram_bytes_per_chip:
        raise DoesNotFit(
            f"{model.name} does not fit on {device.name}: it needs {(weights + kv) / 1e9:.1f} GB per chip "
            f"(weights {weights / 1e9:.1f} GB, KV cache {kv / 1e9:.1f} GB for {batch} x {tokens} tokens), "
            f"more than its {device.dram_bytes_per_chip / 1e9:.1f} GB"
        )
    params = params or load_params()
    decode = decode_breakdown(model, precision, device, params, batch, context_len, lm_head)
    prefill = prefill_breakdown(model, precision, device, params, seq_len, lm_head)
    return Throughput(
        tok_s_u=1e3 / sum(decode.values()),
        ttft_ms=sum(prefill.values()),
        kind="modelled",
        model=model.name,
        device=device.name,
        batch=batch,
        seq_len=seq_len,
        breakdown_ms={k: round(v, 4) for k, v in decode.items()},
    )


def _check_sizes(model: ModelConfig, batch: int, seq_len: int, context_len: int) -> None:
    """Batch and lengths of at least 1, and lengths within the model's context (max_position_embeddings)."""
    for name, value in (("batch", batch), ("sequence length", seq_len), ("context length", context_len)):
        if value < 1:
            raise TunelabError(f"{name} must be at least 1, got {value}")
    limit = model.max_position_embeddings
    for name, value in (("sequence length", seq_len), ("context length", context_len)):
        if limit and value > limit:
            raise TunelabError(
                f"{name} {value} exceeds {model.name}'s context of {limit} tokens (max_position_embeddings)"
            )


def decode_breakdown(
    model: ModelConfig,
    precision: ModelPrecision,
    device: Device,
    params: PerfParams,
    batch: int,
    context_len: int,
    lm_head: Precision = Precision.BFP8,
) -> dict[str, float]:
    """Milliseconds per decode step by term: weights, kv_cache, lm_head, embedding, ops, ccl, host."""
    roof = _Roofline(device, params)
    shards = _shards(model, device)
    rows = TILE * math.ceil(batch / TILE)
    weights = kv = 0.0
    for decoder, count in Counter(precision).items():
        for matmul in MATMULS:
            elems = shards.elements[matmul.tensor]
            fmt = decoder.precision(matmul.tensor)
            phases = decoder.fidelity(matmul.decode).kernel.phases
            weights += count * roof.matmul(elems, fmt, 2 * rows * elems, phases)
        kv_bytes = batch * context_len * 2 * shards.kv_dim * decoder.kv_cache.bytes_per_element
        sdpa_flops = 4 * batch * shards.q_dim * context_len
        sdpa = roof.compute(sdpa_flops, decoder.sdpa_decode.kernel.phases)
        kv += count * max(kv_bytes / roof.bandwidth, sdpa)
    head = roof.matmul(shards.lm_head, lm_head, 2 * rows * shards.lm_head, LM_HEAD_PHASES)
    embedding = batch * model.dim / device.chips * EMBEDDING_BYTES / roof.bandwidth
    ops = model.n_layers * _ops_per_decoder(model) * params.op_us * 1e-6
    payload = rows * model.dim * ACTIVATION_BYTES
    ccl = model.n_layers * _collectives_per_decoder(model, device, payload, params.ccl_step_us, params)
    return {
        "weights": weights * 1e3,
        "kv_cache": kv * 1e3,
        "lm_head": head * 1e3,
        "embedding": embedding * 1e3,
        "ops": ops * 1e3,
        "ccl": ccl * 1e3,
        "host": params.host_ms,
    }


def prefill_breakdown(
    model: ModelConfig,
    precision: ModelPrecision,
    device: Device,
    params: PerfParams,
    seq_len: int,
    lm_head: Precision = Precision.BFP8,
) -> dict[str, float]:
    """Milliseconds to the first token of a `seq_len`-token prompt by term: matmuls, sdpa, lm_head, ops, ccl, host."""
    roof = _Roofline(device, params)
    shards = _shards(model, device)
    tokens = TILE * 4 * math.ceil(seq_len / (TILE * 4))  # tt-transformers prefills multiples of 128 tokens
    chunk = min(tokens, max_prefill_chunk(model.name, device) or tokens)
    chunks = tokens / chunk
    matmuls = sdpa = 0.0
    for decoder, count in Counter(precision).items():
        for matmul in MATMULS:
            elems = shards.elements[matmul.tensor]
            flops = 2 * chunk * elems
            phases = decoder.fidelity(matmul.prefill).kernel.phases
            fmt = decoder.precision(matmul.tensor)
            matmuls += count * chunks * roof.matmul(elems, fmt, flops, phases, True)
        flops = 2 * tokens * tokens * shards.q_dim
        sdpa += count * roof.compute(flops, decoder.sdpa_prefill.kernel.phases) / params.prefill_efficiency
    head = roof.matmul(shards.lm_head, lm_head, 2 * TILE * shards.lm_head, LM_HEAD_PHASES)
    ops = model.n_layers * chunks * _ops_per_decoder(model) * params.prefill_op_us * 1e-6
    # Prefill collectives are asynchronous: their transfers overlap the matmuls, only step latency shows.
    ccl_per_decoder = _collectives_per_decoder(model, device, 0.0, params.prefill_ccl_step_us, params)
    ccl = model.n_layers * chunks * ccl_per_decoder
    return {
        "matmuls": matmuls * 1e3,
        "sdpa": sdpa * 1e3,
        "lm_head": head * 1e3,
        "ops": ops * 1e3,
        "ccl": ccl * 1e3,
        "host": params.host_ms,
    }


def memory_per_chip(
    model: ModelConfig,
    precision: ModelPrecision,
    device: Device,
    batch: int,
    seq_len: int,
    lm_head: Precision = Precision.BFP8,
) -> tuple[float, float]:
    """(weights, KV cache) DRAM bytes per chip; weights include the LM head and the embedding table."""
    shards = _shards(model, device)
    weights = sum(
        shards.elements[matmul.tensor] * decoder.precision(matmul.tensor).bytes_per_element
        for decoder in precision
        for matmul in MATMULS
    )
    weights += shards.lm_head * lm_head.bytes_per_element
    weights += model.vocab_size * model.dim / device.chips * EMBEDDING_BYTES
    kv = sum(batch * seq_len * 2 * shards.kv_dim * d.kv_cache.bytes_per_element for d in precision)
    return weights, kv


class _Roofline:
    """Per-chip time of a weight matmul: DRAM read, block-float unpack, or FPU compute, whichever is longest."""

    def __init__(self, device: Device, params: PerfParams):
        self.device = device
        self.params = params
        self.bandwidth = device.dram_gbs_per_chip * 1e9 * device.dram_ubench_fraction * params.dram_efficiency
        self.unpack_rate = device.cores * device.clock_ghz * 1e9 * params.unpack_per_cycle

    def compute(self, flops: float, phases: int) -> float:
        return flops / self.device.peak_flops(phases)

    def matmul(self, elems: float, fmt: Precision, flops: float, phases: int, prefill: bool = False) -> float:
        compute = self.compute(flops, phases)
        if prefill:
            compute /= self.params.prefill_efficiency
        return max(elems * fmt.bytes_per_element / self.bandwidth, elems / self.unpack_rate, compute)


@dataclass(frozen=True)
class _Shards:
    """Per-chip element counts under tensor parallelism (heads, MLP columns and vocab split over all chips)."""

    elements: dict[TensorGroup, float]
    lm_head: float
    q_dim: float
    kv_dim: float  # KV heads are split over chips, and replicated where there are fewer heads than chips


def _shards(model: ModelConfig, device: Device) -> _Shards:
    chips = device.chips
    hidden = padded_hidden_dim(model, device)
    vocab = TILE * chips * math.ceil(model.vocab_size / (TILE * chips))
    return _Shards(
        elements={
            TensorGroup.WQKV: model.dim * (model.q_dim + 2 * model.kv_dim) / chips,
            TensorGroup.WO: model.q_dim * model.dim / chips,
            TensorGroup.FF1_FF3: 2 * model.dim * hidden / chips,
            TensorGroup.FF2: hidden * model.dim / chips,
        },
        lm_head=model.dim * vocab / chips,
        q_dim=model.q_dim / chips,
        kv_dim=math.ceil(model.n_kv_heads / chips) * model.head_dim,
    )


def _ops_per_decoder(model: ModelConfig) -> int:
    return DECODE_OPS + int(model.qkv_bias) + 2 * int(model.qk_norm)


def _collectives_per_decoder(
    model: ModelConfig, device: Device, payload: float, step_us: float, params: PerfParams
) -> float:
    """Seconds of collectives per decoder for an activation of `payload` bytes.

    A line/ring (1xN) runs 4 per decoder (attention all-gather and reduce-scatter, norm all-gather, MLP
    reduce-scatter); on an 8-chip ring tt-transformers fuses the WO all-gather into its matmul when
    dim/32/D is a multiple of D (`use_fused_all_gather_matmul`; the condition is recalled from model_config.py,
    not in the shared references). A 2D mesh all-reduces along both axes (4 each).
    """
    if device.chips == 1:
        return 0.0
    link = max(device.eth_links, 1) * device.eth_link_gbs * 1e9 * params.eth_efficiency

    def collective(n: int, extra_us: float = 0.0) -> float:
        return (extra_us + (n - 1) * step_us) * 1e-6 + (n - 1) / n * payload / link

    if device.is_2d:
        rows, cols = device.mesh
        return 4 * (collective(rows, params.ccl_2d_us) + collective(cols, params.ccl_2d_us))
    n = device.chips
    fused = n == 8 and (model.dim // TILE // n) % n == 0
    return (3 if fused else 4) * collective(n)
