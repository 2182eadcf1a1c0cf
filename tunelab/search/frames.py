"""A study as pandas frames: one row per trial (metrics, front membership, per-decoder settings), sensitivity.

Per-decoder columns are named `d<decoder>.<group>`: `d00.FF1_FF3` holds a format name (BFP4, BFP8, BF16),
`d00.LI_FF1_FF3` a fidelity name, for every tensor and op group in the trial's complete decoder_config JSON.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from tunelab.evaluator import Metrics
from tunelab.precision import OpGroup, TensorGroup
from tunelab.search.storage import ResultStore
from tunelab.search.study import FrontMember, StudySpec, TrialRecord, front, load_spec, trial_records

__all__ = ["decoder_column", "load_study_frame", "sensitivity_frame", "trials_frame"]

METRIC_COLUMNS = (
    "trial",
    "preset",
    "kind",
    "feasible",
    "top1",
    "top1_low",
    "top1_high",
    "top1_tie_aware",
    "top5",
    "kl",
    "ppl",
    "tok_s_u",
    "ttft_ms",
    "dram_gb",
    "cache_hit",
    "verified_top1",
    "verified_tok_s_u",
    "flagged",
    "on_front",
    "description",
    "config_key",
)


def decoder_column(decoder: int, group: str, n_decoders: int) -> str:
    """`d07.FF2`: the decoder index zero-padded to the width of the largest one (at least two digits)."""
    width = max(2, len(str(max(n_decoders - 1, 0))))
    return f"d{decoder:0{width}d}.{group}"


_GROUP_ORDER = {name: i for i, name in enumerate([*TensorGroup.__members__, *OpGroup.__members__])}


def _column_order(column: str) -> tuple[int, int, str]:
    """Decoder by decoder; within one, tensor groups then op groups in tt-transformers' order."""
    decoder, group = column.split(".", 1)
    return int(decoder[1:]), _GROUP_ORDER.get(group, len(_GROUP_ORDER)), group


def _num(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _decoder_settings(config: Mapping[str, Any]) -> dict[str, str]:
    """`d00.FF1_FF3` -> "BFP4", `d00.LI_FF1_FF3` -> "LOFI", ... from a complete decoder_config dict."""
    decoders = config.get("decoders", {})
    n = len(decoders)
    out = {}
    for key in sorted(decoders, key=int):
        entry = decoders[key]
        for section in ("precision_cfg", "fidelity_cfg"):
            for group, value in entry.get(section, {}).items():
                out[decoder_column(int(key), group, n)] = str(value).upper()
    return out


def trials_frame(
    records: Sequence[TrialRecord],
    spec: StudySpec | None = None,
    members: Sequence[FrontMember] | None = None,
    cache_hits: Mapping[int, bool] | None = None,
) -> pd.DataFrame:
    """A row per complete trial: its metrics, verification, front membership and per-decoder settings.

    `on_front` comes from `members` when given, else from `front(records, spec)` (the default objectives and no
    constraints when `spec` is None). `cache_hit` is filled from `cache_hits` (trial -> hit) and NaN without it.
    """
    if members is None:
        members = front(records, spec or StudySpec(name="frame"))
    on_front = {m.record.number for m in members}
    rows = []
    for r in records:
        m: Metrics = r.metrics
        low, high = m.top1_ci if m.top1_ci is not None else (None, None)
        row: dict[str, Any] = {
            "trial": r.number,
            "preset": r.preset,
            "kind": m.kind,
            "feasible": m.feasible,
            "top1": _num(m.top1),
            "top1_low": _num(low),
            "top1_high": _num(high),
            "top1_tie_aware": _num(m.top1_tie_aware),
            "top5": _num(m.top5),
            "kl": _num(m.kl),
            "ppl": _num(m.ppl),
            "tok_s_u": _num(m.tok_s_u),
            "ttft_ms": _num(m.ttft_ms),
            "dram_gb": math.nan if m.dram_bytes is None else m.dram_bytes / 1e9,
            "cache_hit": cache_hits.get(r.number) if cache_hits is not None else None,
            "verified_top1": math.nan if r.verified is None else _num(r.verified.top1),
            "verified_tok_s_u": math.nan if r.verified is None else _num(r.verified.tok_s_u),
            "flagged": r.flagged,
            "on_front": r.number in on_front,
            "description": r.description,
            "config_key": m.config_key,
        }
        row.update(_decoder_settings(r.config))
        rows.append(row)
    frame = pd.DataFrame(rows)
    if frame.empty:
        return pd.DataFrame(columns=list(METRIC_COLUMNS))
    decoder_columns = sorted((c for c in frame.columns if c not in METRIC_COLUMNS), key=_column_order)
    return frame[[*METRIC_COLUMNS, *decoder_columns]].reset_index(drop=True)


def load_study_frame(name: str, storage: str) -> pd.DataFrame:
    """`trials_frame` of a stored study, front and verifications included."""
    study, spec = load_spec(name, storage)
    store = ResultStore(storage)
    records = trial_records(study, store)
    hits = {
        t.number: bool(t.user_attrs["cache_hit"])
        for t in study.get_trials(deepcopy=False)
        if "cache_hit" in t.user_attrs
    }
    return trials_frame(records, spec, front(records, spec), hits)


def sensitivity_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """A row per (decoder, tensor group, lowered choice): how much lowering it alone moves KL, top-1, speed.

    `rows` are `ResultStore.sensitivity(profile)` rows; deltas are lowered minus baseline.
    """
    out = []
    for row in rows:
        m: Metrics = row["metrics"]
        b: Metrics = row["baseline"]

        def delta(name: str, m: Metrics = m, b: Metrics = b) -> float:
            x, y = getattr(m, name), getattr(b, name)
            return math.nan if x is None or y is None else float(x) - float(y)

        out.append(
            {
                "layer": int(row["layer"]),
                "tensor": str(row["tensor"]),
                "lowered": str(row["lowered"]),
                "kl_delta": delta("kl"),
                "top1_delta": delta("top1"),
                "tok_s_u_delta": delta("tok_s_u"),
            }
        )
    columns = ["layer", "tensor", "lowered", "kl_delta", "top1_delta", "tok_s_u_delta"]
    return pd.DataFrame(out, columns=columns)
