"""Fit the performance model's free parameters on tt-transformers' PERF.md numbers, and cross-validate the fit.

The calibration rows (`data/perf_calibration.csv`) are tt-transformers CI runs of the Instruct checkpoints: batch 1,
a 512-token prompt (the token-matching reference prompt) and 200 decode iterations, so decode is modelled at a mean
context of 612 tokens. The fit minimises robust (soft-L1, 3% scale) log errors with weak log-normal priors taken
from numerics.md section 3, by Gauss-Newton: decode parameters on tok/s/u first, then prefill parameters on TTFT.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from tunelab.errors import TunelabError
from tunelab.files import atomic_write, read_text, shown
from tunelab.model_presets import model_preset
from tunelab.models.config import ModelConfig
from tunelab.models.shapes import ModelNotFound, model_shape
from tunelab.perf.devices import Device, device
from tunelab.perf.support import check_supported
from tunelab.perf.throughput import PerfParams, decode_breakdown, param_problem, prefill_breakdown
from tunelab.precision import ModelPrecision

__all__ = [
    "CalibrationRow",
    "Fit",
    "RowError",
    "cross_validate",
    "errors",
    "fit",
    "load_calibration",
    "summary",
    "write_params",
]

PACKAGED_DATA = "data/perf_calibration.csv"
DATA_FILE = Path(__file__).parent / PACKAGED_DATA
COLUMNS = "model,device,mode,top1,top5,tok_s_u,ttft_ms"
BATCH, PROMPT_TOKENS, DECODE_CONTEXT = 1, 512, 612
CHECKPOINT_SUFFIX = "-Instruct"  # PERF.md measures the Instruct checkpoints (their override files apply)
# name: (prior value, log standard deviation).
PRIORS: dict[str, tuple[float, float]] = {
    "dram_efficiency": (0.95, 0.2),  # decode matmuls reach 83-91% of spec, the microbenchmark 92.7%
    "unpack_per_cycle": (6.0, 1.0),  # not documented: weak
    "host_ms": (5.0, 1.0),  # not documented: weak
    "op_us": (5.0, 0.5),  # "t_gap < ~6 us with tracing"
    "eth_efficiency": (0.95, 0.5),  # 3-6% header overhead
    "ccl_step_us": (0.65, 1.0),  # ~0.65 us per hop
    "ccl_2d_us": (10.0, 2.0),  # not documented: weak
    "prefill_efficiency": (0.5, 1.0),
    "prefill_op_us": (20.0, 1.0),
    "prefill_ccl_step_us": (0.65, 2.0),
}
DECODE_PARAMS = (
    "dram_efficiency",
    "unpack_per_cycle",
    "host_ms",
    "op_us",
    "eth_efficiency",
    "ccl_step_us",
    "ccl_2d_us",
)
PREFILL_PARAMS = ("prefill_efficiency", "prefill_op_us", "prefill_ccl_step_us")
PRIOR_WEIGHT = 0.03  # a one-sd departure from a prior costs about as much as a 3% miss on one row
ROBUST_SCALE = 0.03


@dataclass(frozen=True)
class CalibrationRow:
    """One measured (model, device, preset) point with everything the model needs to predict it."""

    model_name: str
    device_name: str
    mode: str
    tok_s_u: float
    ttft_ms: float | None
    model: ModelConfig
    precision: ModelPrecision
    device: Device


@dataclass(frozen=True)
class RowError:
    """Measured vs predicted for one row and metric; `pct` = (predicted / measured - 1) x 100."""

    model: str
    device: str
    mode: str
    metric: str
    measured: float
    predicted: float

    @property
    def pct(self) -> float:
        return (self.predicted / self.measured - 1) * 100


@dataclass(frozen=True)
class Fit:
    params: PerfParams
    errors: tuple[RowError, ...]


def load_calibration(path: str | Path | None = None) -> list[CalibrationRow]:
    """Calibration rows from a CSV (default: the packaged PERF.md numbers); a bad file or row is one line."""
    source = Path(path) if path else DATA_FILE
    text = read_text(source, f"a calibration CSV (columns {COLUMNS})")
    lines = [
        (n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip() and not line.startswith("#")
    ]
    if not lines:
        raise TunelabError(f"{source}: no calibration rows (expected a header {COLUMNS} and rows)")
    (header_number, header_line), *body = lines
    header = [column.strip() for column in _fields(f"{source} line {header_number}", header_line)]
    missing = [column for column in COLUMNS.split(",") if column not in header]
    if missing:
        raise TunelabError(
            f"{source}: the header lacks {', '.join(missing)} (expected {COLUMNS}, found {shown(header_line)})"
        )
    if not body:
        raise TunelabError(f"{source}: no calibration rows after the header")
    return [_row(f"{source} line {n}", header, _fields(f"{source} line {n}", line)) for n, line in body]


def _fields(where: str, line: str) -> list[str]:
    try:
        return next(csv.reader([line]))
    except csv.Error as exc:
        raise TunelabError(f"{where}: not CSV ({exc})") from None


def _row(where: str, header: list[str], fields: list[str]) -> CalibrationRow:
    """One row, checked: a known model tt-transformers runs on a known device, a preset, a positive finite
    tok/s/u and (optional) TTFT."""
    if len(fields) != len(header):
        raise TunelabError(f"{where}: {len(fields)} fields, expected {len(header)} ({','.join(header)})")
    record = {column: value.strip() for column, value in zip(header, fields, strict=True)}
    for column in ("model", "device", "mode", "tok_s_u"):
        if not record[column]:
            raise TunelabError(f"{where}: {column} is empty")
    try:
        model = model_shape(record["model"])
        target = device(record["device"])
        check_supported(model, target)
        precision = model_preset(record["mode"], record["model"] + CHECKPOINT_SUFFIX, model.n_layers)
    except ModelNotFound:
        raise TunelabError(
            f"{where}: unknown model {shown(record['model'])} (give a known model or a config.json path)"
        ) from None
    except TunelabError as exc:
        raise TunelabError(f"{where}: {exc}") from None
    return CalibrationRow(
        model_name=record["model"],
        device_name=record["device"],
        mode=record["mode"],
        tok_s_u=_positive(where, "tok_s_u", record["tok_s_u"]),
        ttft_ms=_positive(where, "ttft_ms", record["ttft_ms"]) if record["ttft_ms"] else None,
        model=model,
        precision=precision,
        device=target,
    )


def _positive(where: str, column: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise TunelabError(f"{where}: {column} must be a positive number, found {shown(text)}")
    return value


def fit(rows: Sequence[CalibrationRow]) -> Fit:
    """Fit all parameters from their priors: decode ones on tok/s/u, then prefill ones on TTFT where measured."""
    params = PerfParams(**{name: prior for name, (prior, _) in PRIORS.items()})
    params = _fit_subset(rows, params, DECODE_PARAMS, lambda r, p: np.log(_tok_s_u(r, p) / r.tok_s_u))
    timed = [r for r in rows if r.ttft_ms is not None]
    params = _fit_subset(timed, params, PREFILL_PARAMS, lambda r, p: np.log(_ttft_ms(r, p) / r.ttft_ms))
    values = _rounded(params)
    diverged = [f"{name} = {values[name]:.3g}" for name in values if param_problem(name, values[name])]
    if diverged:
        raise TunelabError(
            f"the fit did not converge ({', '.join(diverged)} out of range); check the rows' measured values"
        )
    return Fit(params, tuple(errors(rows, params)))


def _rounded(params: PerfParams) -> dict[str, float]:
    """The parameters as the params file stores them."""
    return {k: round(v, 6) for k, v in asdict(params).items()}


def errors(rows: Sequence[CalibrationRow], params: PerfParams) -> list[RowError]:
    """Per-row errors of tok/s/u and, where measured, TTFT."""
    found = []
    for r in rows:
        where = (r.model_name, r.device_name, r.mode)
        found.append(RowError(*where, "tok_s_u", r.tok_s_u, _tok_s_u(r, params)))
        if r.ttft_ms is not None:
            found.append(RowError(*where, "ttft_ms", r.ttft_ms, _ttft_ms(r, params)))
    return found


def cross_validate(rows: Sequence[CalibrationRow]) -> list[RowError]:
    """Leave-one-model-out: each model's rows predicted by a fit on the other models' rows."""
    held_out = []
    for name in dict.fromkeys(r.model_name for r in rows):
        train = [r for r in rows if r.model_name != name]
        params = fit(train).params
        held_out += errors([r for r in rows if r.model_name == name], params)
    return held_out


def summary(found: Sequence[RowError]) -> dict[str, dict[str, float]]:
    """Median and max absolute percentage error per metric."""
    result = {}
    for metric in dict.fromkeys(e.metric for e in found):
        pcts = np.abs([e.pct for e in found if e.metric == metric])
        result[metric] = {
            "median_abs_pct": round(float(np.median(pcts)), 2),
            "max_abs_pct": round(float(np.max(pcts)), 2),
            "rows": len(pcts),
        }
    return result


def write_params(result: Fit, path: str | Path, data: str = PACKAGED_DATA) -> None:
    """Write the fitted parameters with their fit error (the packaged `perf_params.json` format), atomically."""
    content = {
        "params": _rounded(result.params),
        "fit_error": summary(result.errors),
        "calibration": {
            "data": data,
            "batch": BATCH,
            "prompt_tokens": PROMPT_TOKENS,
            "decode_context": DECODE_CONTEXT,
        },
    }
    atomic_write(path, json.dumps(content, indent=2) + "\n")


def _tok_s_u(row: CalibrationRow, params: PerfParams) -> float:
    step = decode_breakdown(row.model, row.precision, row.device, params, BATCH, DECODE_CONTEXT)
    return 1e3 / sum(step.values())


def _ttft_ms(row: CalibrationRow, params: PerfParams) -> float:
    return sum(prefill_breakdown(row.model, row.precision, row.device, params, PROMPT_TOKENS).values())


def _fit_subset(
    rows: Sequence[CalibrationRow],
    params: PerfParams,
    names: Sequence[str],
    residual: Callable[[CalibrationRow, PerfParams], float],
) -> PerfParams:
    """Robust Gauss-Newton in log-parameter space over `names`, the other parameters held fixed."""
    prior = np.log([PRIORS[n][0] for n in names])
    sd = np.array([PRIORS[n][1] for n in names])
    base = asdict(params)

    def at(x: np.ndarray) -> PerfParams:
        return PerfParams(**{**base, **dict(zip(names, np.exp(x).tolist(), strict=True))})

    def residuals(x: np.ndarray) -> np.ndarray:
        p = at(x)
        return np.concatenate([[residual(r, p) for r in rows], PRIOR_WEIGHT * (x - prior) / sd])

    x = np.log([base[n] for n in names])
    for _ in range(100):
        r = residuals(x)
        weights = np.ones_like(r)
        weights[: len(rows)] = (1 + (r[: len(rows)] / ROBUST_SCALE) ** 2) ** -0.25  # soft-L1 as IRLS
        jacobian = np.column_stack([(residuals(x + step) - r) / 1e-6 for step in np.eye(len(x)) * 1e-6])
        a, b = jacobian * weights[:, None], r * weights
        delta = np.linalg.solve(a.T @ a + 1e-6 * np.eye(len(x)), -a.T @ b)
        x = x + np.clip(delta, -0.5, 0.5)
        if np.max(np.abs(delta)) < 1e-7:
            break
    return at(x)
