"""Plotly figures of a study: the Pareto front, the front's per-decoder precision map, sensitivity, hypervolume.

`write_study_plots` writes each as a standalone HTML page that works offline from file://: the pages load
`plotly.min.js` from their own directory, written there once (and rewritten only when plotly's copy changes).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tunelab.errors import TunelabError
from tunelab.evaluator import Metrics
from tunelab.files import atomic_write
from tunelab.precision import MATMULS, OpGroup, TensorGroup
from tunelab.search.frames import sensitivity_frame
from tunelab.search.storage import ResultStore
from tunelab.search.study import FrontMember, StudySpec, TrialRecord, front, trial_records

if TYPE_CHECKING:
    import optuna

__all__ = [
    "FORMAT_COLOURS",
    "FRONT_COLOUR",
    "SENSITIVITY_ATTR",
    "front_figure",
    "hypervolume_figure",
    "precision_map_figure",
    "sensitivity_figure",
    "study_figures",
    "write_study_plots",
]

SENSITIVITY_ATTR = "tunelab_sensitivity_profile"  # study user attribute: the key of its sensitivity profile
FRONT_COLOUR = "#d62728"
VERIFIED_COLOUR = "#1f77b4"
PRESET_COLOUR = "#2ca02c"
TRIAL_COLOUR = "rgba(110, 110, 110, 0.35)"
FORMAT_COLOURS = {"BFP4": "#fdae61", "BFP8": "#74add1", "BF16": "#313695"}
PLOTLY_JS = "plotly.min.js"
_OPS = {m.tensor: tuple(dict.fromkeys((m.decode, m.prefill))) for m in MATMULS} | {
    TensorGroup.KV_CACHE: (OpGroup.SDPA_DECODE, OpGroup.SDPA_PREFILL)
}


def _pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:.1f}%"


def _hover(record: TrialRecord, metrics: Metrics, label: str = "") -> str:
    head = f"trial {record.number}" + (f" ({record.preset})" if record.preset else "") + label
    top1 = f"top-1 {_pct(metrics.top1)}"
    if metrics.top1_ci is not None:
        top1 += f" [{_pct(metrics.top1_ci[0])}, {_pct(metrics.top1_ci[1])}]"
    speed = "n/a" if metrics.tok_s_u is None else f"{metrics.tok_s_u:.1f}"
    words = "<br>".join(record.description.split("; ")) if record.description else ""
    return f"{head}<br>{top1}<br>{speed} tok/s/user<br>{words}"


def _plotted(metrics: Metrics) -> bool:
    return metrics.feasible and metrics.top1 is not None and metrics.tok_s_u is not None


def _empty(fig: go.Figure, text: str) -> go.Figure:
    fig.add_annotation(text=text, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
    return fig


def front_figure(
    records: Sequence[TrialRecord], members: Sequence[FrontMember], spec: StudySpec | None = None
) -> go.Figure:
    """top-1 against tok/s/user: every trial faintly, the front as a step line, verified points, presets."""
    fig = go.Figure()
    trials = [r for r in records if _plotted(r.metrics)]
    fig.add_trace(
        go.Scatter(
            name="trials",
            x=[r.metrics.tok_s_u for r in trials],
            y=[r.metrics.top1 for r in trials],
            mode="markers",
            marker={"color": TRIAL_COLOUR, "size": 7},
            hovertext=[_hover(r, r.metrics) for r in trials],
            hovertemplate="%{hovertext}<extra></extra>",
        )
    )
    shown = sorted((m for m in members if _plotted(m.record.metrics)), key=lambda m: m.record.metrics.tok_s_u)
    fig.add_trace(
        go.Scatter(
            name="front (search-time)",
            x=[m.record.metrics.tok_s_u for m in shown],
            y=[m.record.metrics.top1 for m in shown],
            mode="lines+markers",
            line={"color": FRONT_COLOUR, "shape": "vh", "width": 2},
            marker={"color": FRONT_COLOUR, "size": 11},
            error_y={
                "type": "data",
                "symmetric": False,
                "array": [_ci(m.record.metrics)[1] for m in shown],
                "arrayminus": [_ci(m.record.metrics)[0] for m in shown],
                "color": "rgba(214, 39, 40, 0.35)",
                "thickness": 1,
            },
            hovertext=[_hover(m.record, m.record.metrics) for m in shown],
            hovertemplate="%{hovertext}<extra>front</extra>",
        )
    )
    verified = [m for m in shown if m.record.verified is not None and _plotted(m.record.verified)]
    if verified:
        best = sorted(shown, key=lambda m: m.record.best.tok_s_u or 0.0)
        fig.add_trace(
            go.Scatter(
                name="front (verified where verified)",
                x=[m.record.best.tok_s_u for m in best],
                y=[m.record.best.top1 for m in best],
                mode="lines",
                line={"color": VERIFIED_COLOUR, "shape": "vh", "width": 2, "dash": "dash"},
                hoverinfo="skip",
            )
        )
        xs: list[float | None] = []
        ys: list[float | None] = []
        for m in verified:
            xs += [m.record.metrics.tok_s_u, m.record.verified.tok_s_u, None]
            ys += [m.record.metrics.top1, m.record.verified.top1, None]
        fig.add_trace(
            go.Scatter(
                name="search-time → verified",
                x=xs,
                y=ys,
                mode="lines",
                line={"color": VERIFIED_COLOUR, "dash": "dot", "width": 1},
                hoverinfo="skip",
            )
        )
        fig.add_trace(
            go.Scatter(
                name="verified",
                x=[m.record.verified.tok_s_u for m in verified],
                y=[m.record.verified.top1 for m in verified],
                mode="markers",
                marker={
                    "color": VERIFIED_COLOUR,
                    "size": 11,
                    "symbol": ["diamond-x" if m.record.flagged else "diamond" for m in verified],
                },
                hovertext=[
                    _hover(
                        m.record, m.record.verified, " verified" + (", FLAGGED" if m.record.flagged else "")
                    )
                    for m in verified
                ],
                hovertemplate="%{hovertext}<extra>verified</extra>",
            )
        )
    presets = [r for r in trials if r.preset]
    fig.add_trace(
        go.Scatter(
            name="presets",
            x=[r.metrics.tok_s_u for r in presets],
            y=[r.metrics.top1 for r in presets],
            mode="markers+text",
            text=[r.preset for r in presets],
            textposition="top center",
            textfont={"color": PRESET_COLOUR},
            marker={"color": PRESET_COLOUR, "size": 15, "symbol": "square-open", "line": {"width": 2}},
            hovertext=[_hover(r, r.metrics) for r in presets],
            hovertemplate="%{hovertext}<extra>preset</extra>",
        )
    )
    title = "top-1 vs tok/s/user"
    if spec is not None:
        ev = spec.evaluation
        windows = "all windows" if ev.windows is None else f"{ev.windows} windows"
        title = f"{spec.name}: {title}, {ev.model} on {ev.mesh_device} ({windows}, emulated accuracy)"
    fig.update_layout(
        title=title,
        xaxis_title="tok/s/user",
        yaxis_title="top-1 agreement with the reference",
        yaxis_tickformat=".0%",
        template="plotly_white",
        hovermode="closest",
        legend={"orientation": "h", "y": -0.15},
    )
    if not trials:
        _empty(fig, "no complete trials yet")
    return fig


def _ci(metrics: Metrics) -> tuple[float, float]:
    """(below, above) the top-1 point: the interval as error-bar lengths."""
    if metrics.top1_ci is None or metrics.top1 is None:
        return 0.0, 0.0
    return max(metrics.top1 - metrics.top1_ci[0], 0.0), max(metrics.top1_ci[1] - metrics.top1, 0.0)


def _decoder_step(n: int) -> int:
    """Tick spacing of a decoder axis: every decoder up to 32, then about 16 ticks."""
    return max(1, math.ceil(n / 16)) if n > 32 else 1


def _tensor_order(tensor: str) -> tuple[int, str]:
    names = list(TensorGroup.__members__)
    return (names.index(tensor) if tensor in names else len(names), tensor)


def _searched_tensors(members: Sequence[FrontMember]) -> list[str]:
    """Tensor groups the search chose (from the trials' parameters), else those the members differ in."""
    named = {p.split(".", 1)[1] for m in members for p in m.record.params if "." in p}
    if named:
        return sorted(named, key=_tensor_order)
    present: dict[str, set] = {}
    for m in members:
        for d in m.record.config.get("decoders", {}).values():
            for t, fmt in d.get("precision_cfg", {}).items():
                present.setdefault(t, set()).add(fmt)
    varied = [t for t in present if len(present[t]) > 1] or list(present)
    return sorted((t for t in varied if t != TensorGroup.ACTIVATION.name), key=_tensor_order)


def _fidelities(tensor: str, decoder: Mapping[str, Any]) -> str:
    ops = _OPS.get(TensorGroup[tensor], ()) if tensor in TensorGroup.__members__ else ()
    cfg = decoder.get("fidelity_cfg", {})
    values = {op.name: cfg[op.name] for op in ops if op.name in cfg}
    if not values:
        return "n/a"
    if len(set(values.values())) == 1:
        return next(iter(values.values()))
    return ", ".join(f"{k}={v}" for k, v in values.items())


def precision_map_figure(members: Sequence[FrontMember], tensors: Sequence[str] | None = None) -> go.Figure:
    """The front's configs decoder by decoder: a row per member (slowest at the bottom), a panel per tensor group."""
    shown = sorted(members, key=lambda m: m.record.best.tok_s_u or 0.0)
    tensors = list(tensors) if tensors is not None else _searched_tensors(shown)
    if not shown or not tensors:
        return _empty(go.Figure(layout={"title": "precision map of the front"}), "no front yet")
    fig = make_subplots(
        rows=1, cols=len(tensors), shared_yaxes=True, subplot_titles=tensors, horizontal_spacing=0.02
    )
    codes = {name: i for i, name in enumerate(FORMAT_COLOURS)}
    labels = [
        f"#{m.record.number} {m.record.best.tok_s_u or 0:.1f} tok/s, {_pct(m.record.best.top1)}"
        for m in shown
    ]
    for col, tensor in enumerate(tensors, start=1):
        z, text = [], []
        n_decoders = 0
        for m, label in zip(shown, labels, strict=True):
            decoders = m.record.config.get("decoders", {})
            n_decoders = max(n_decoders, len(decoders))
            row_z, row_text = [], []
            for i in range(len(decoders)):
                d = decoders.get(str(i), {})
                fmt = str(d.get("precision_cfg", {}).get(tensor, "n/a")).upper()
                row_z.append(codes.get(fmt, math.nan))
                row_text.append(
                    f"{label}<br>decoder {i} {tensor}<br>format {fmt}<br>fidelity {_fidelities(tensor, d)}"
                )
            z.append(row_z)
            text.append(row_text)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(n_decoders)),
                y=labels,
                text=text,
                hovertemplate="%{text}<extra></extra>",
                coloraxis="coloraxis",
                xgap=1,
                ygap=1,
                name=tensor,
            ),
            row=1,
            col=col,
        )
        fig.update_xaxes(title_text="decoder", dtick=_decoder_step(n_decoders), row=1, col=col)
    n = len(FORMAT_COLOURS)
    scale = []
    for i, colour in enumerate(FORMAT_COLOURS.values()):
        scale += [[i / n, colour], [(i + 1) / n, colour]]
    fig.update_layout(
        title="precision map of the front (rows by speed, fastest at the top)",
        coloraxis={
            "colorscale": scale,
            "cmin": -0.5,
            "cmax": n - 0.5,
            "colorbar": {
                "title": "format",
                "tickvals": list(range(n)),
                "ticktext": list(FORMAT_COLOURS),
                "lenmode": "pixels",
                "len": 150,
            },
        },
        template="plotly_white",
        height=max(320, 140 + 26 * len(shown)),
    )
    return fig


def sensitivity_figure(frame: pd.DataFrame) -> go.Figure:
    """KL increase when one (decoder, tensor group) alone is lowered: a heatmap per lowered format."""
    if frame.empty:
        return _empty(go.Figure(layout={"title": "sensitivity"}), "no sensitivity rows")
    frame = frame.copy()
    frame["level"] = frame["lowered"].str.split("/").str[0]
    if frame.duplicated(["level", "layer", "tensor"]).any():
        frame["level"] = frame["lowered"]
    levels = sorted(frame["level"].unique())
    layers = [int(x) for x in sorted(frame["layer"].unique())]
    fig = make_subplots(
        rows=len(levels),
        cols=1,
        subplot_titles=[f"lowered to {lv}" for lv in levels],
        vertical_spacing=min(0.12, 0.9 / max(len(levels) - 1, 1)),
    )
    for row, level in enumerate(levels, start=1):
        part = frame[frame["level"] == level].set_index(["tensor", "layer"])
        tensors = sorted(part.index.unique("tensor"), key=_tensor_order)
        z, text = [], []
        for tensor in tensors:
            row_z, row_text = [], []
            for layer in layers:
                if (tensor, layer) not in part.index:
                    row_z.append(math.nan)
                    row_text.append(f"decoder {layer} {tensor}: not profiled")
                    continue
                r = part.loc[(tensor, layer)]
                row_z.append(r["kl_delta"])
                row_text.append(
                    f"decoder {layer} {tensor} → {r['lowered']}<br>KL {r['kl_delta']:+.4g}"
                    f"<br>top-1 {100 * r['top1_delta']:+.2f} pp<br>tok/s/user {r['tok_s_u_delta']:+.2f}"
                )
            z.append(row_z)
            text.append(row_text)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=layers,
                y=tensors,
                text=text,
                hovertemplate="%{text}<extra></extra>",
                coloraxis="coloraxis",
                xgap=1,
                ygap=1,
                name=str(level),
            ),
            row=row,
            col=1,
        )
        fig.update_xaxes(dtick=_decoder_step(len(layers)), row=row, col=1)
        fig.update_yaxes(autorange="reversed", row=row, col=1)
    fig.update_xaxes(title_text="decoder", row=len(levels), col=1)
    fig.update_layout(
        title="sensitivity: KL(ref ‖ cand) increase when one group of one decoder is lowered",
        coloraxis={"colorscale": "RdBu_r", "cmid": 0, "colorbar": {"title": "ΔKL"}},
        template="plotly_white",
        height=max(320, 120 + len(levels) * (80 + 28 * frame["tensor"].nunique())),
    )
    return fig


def hypervolume_figure(rows: Sequence[tuple[int, float]]) -> go.Figure:
    """The front's hypervolume after each trial (flat stretches: trials that did not improve the front)."""
    fig = go.Figure(
        go.Scatter(
            name="hypervolume",
            x=[t for t, _ in rows],
            y=[v for _, v in rows],
            mode="lines+markers",
            line={"shape": "hv", "color": FRONT_COLOUR},
            hovertemplate="trial %{x}<br>hypervolume %{y:.6g}<extra></extra>",
        )
    )
    fig.update_layout(
        title="hypervolume after each trial",
        xaxis_title="trial",
        yaxis_title="hypervolume",
        template="plotly_white",
    )
    if not rows:
        _empty(fig, "no hypervolume recorded yet")
    return fig


def study_figures(study: optuna.Study, spec: StudySpec, store: ResultStore) -> dict[str, go.Figure]:
    """The study's figures by page name: front, precision-map, hypervolume, and sensitivity when profiled."""
    records = trial_records(study, store)
    members = front(records, spec)
    figures = {
        "front": front_figure(records, members, spec),
        "precision-map": precision_map_figure(members),
        "hypervolume": hypervolume_figure(store.hypervolumes(study.study_name)),
    }
    profile = study.user_attrs.get(SENSITIVITY_ATTR)
    if profile:
        figures["sensitivity"] = sensitivity_figure(sensitivity_frame(store.sensitivity(profile)))
    return figures


def _write_plotlyjs(directory: Path) -> None:
    """plotly.min.js beside the pages, written only when missing or different from plotly's own copy."""
    from plotly.offline import get_plotlyjs

    path = directory / PLOTLY_JS
    payload = get_plotlyjs().encode()
    try:
        if path.is_file() and path.stat().st_size == len(payload) and path.read_bytes() == payload:
            return
    except OSError:
        pass
    atomic_write(path, payload)


def write_study_plots(runner: Any, out_dir: str | Path) -> list[Path]:
    """Write the study's figures as offline HTML pages into `out_dir` (created; its parent must exist).

    `runner` is a `StudyRunner` (only its study, spec and store are used). Returns the pages written;
    `plotly.min.js` is written beside them.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise TunelabError(f"{out}: exists and is not a directory")
    if not out.parent.is_dir():
        raise TunelabError(f"{out}: parent directory {out.parent} does not exist")
    # Every stored row is read (and a corrupt one refused) before the directory is made.
    figures = study_figures(runner.study, runner.spec, runner.store)
    try:
        out.mkdir(exist_ok=True)
    except OSError as exc:
        raise TunelabError(f"{out}: cannot create: {exc.strerror or exc}") from None
    _write_plotlyjs(out)
    stem = re.sub(r"[^A-Za-z0-9._-]", "_", runner.study.study_name)
    paths = []
    for page, fig in figures.items():
        html = fig.to_html(include_plotlyjs="directory", full_html=True)
        paths.append(atomic_write(out / f"{stem}-{page}.html", html))
    return paths
