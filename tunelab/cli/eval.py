"""`tunelab eval`: teacher-forced accuracy of a precision config on the emulator against the cached reference."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunelab.cli import reference as ref_cli
from tunelab.cli.options import (
    AccumulationOpt,
    ConfigOpt,
    CorpusOpt,
    DirOpt,
    JsonOutOpt,
    LayersOpt,
    LmHeadOpt,
    ModelOpt,
    OptimizationsOpt,
    PrefillOpt,
    PresetOpt,
    TopKOpt,
    TorchDeviceOpt,
    WindowLenOpt,
    WindowsOpt,
    emulator_options,
    torch_device,
)
from tunelab.errors import TunelabError
from tunelab.eval.corpus import WindowSpec
from tunelab.eval.reference import DEFAULT_TOP_K, ReferenceStore, check_fingerprint
from tunelab.interop import config_source, resolve_config


def eval_command(
    ctx: typer.Context,
    model: ModelOpt = "smollm2-135m",
    config: ConfigOpt = None,
    preset: PresetOpt = None,
    optimizations: OptimizationsOpt = None,
    accumulation: AccumulationOpt = "fast",
    device: TorchDeviceOpt = "cpu",
    lm_head: LmHeadOpt = "bfp8",
    windows: WindowsOpt = None,
    corpus: CorpusOpt = "default",
    window_len: WindowLenOpt = 1024,
    prefill: PrefillOpt = 512,
    top_k: TopKOpt = DEFAULT_TOP_K,
    reference: Annotated[
        str | None,
        typer.Option(
            help="Use this reference: a key (or unique prefix) or a tt-metal .refpt file to import."
        ),
    ] = None,
    layers: LayersOpt = None,
    json_out: JsonOutOpt = False,
    directory: DirOpt = None,
) -> None:
    """Top-1 / top-5 agreement with the HF reference (tt-metal's definitions), KL, perplexity, 95% intervals."""
    start = time.perf_counter()
    options = emulator_options(accumulation, lm_head)
    torch_device(device)
    source = config_source(preset=preset, optimizations=optimizations, config_file=config)
    store = ReferenceStore(directory)
    given = dict(corpus=corpus, window_len=window_len, prefill=prefill, top_k=top_k)
    stored = None if reference is None else _stored_reference(ctx, reference, store, windows, given)

    ref_cli.note(f"loading {model} ...")
    loaded = ref_cli.load_model(model, layers)
    precision = resolve_config(
        preset=preset,
        optimizations=optimizations,
        config_file=config,
        model=loaded.config.name,
        layers=loaded.config.n_layers,
    )
    if reference is None:
        spec = WindowSpec(window_len, prefill, windows)
        ref, _, _ = ref_cli.reference_for(
            model, corpus, spec, top_k=top_k, device=device, layers=layers, store=store, loaded=loaded
        )
    else:
        from tunelab.eval.refpt import import_refpt

        ref = stored or import_refpt(reference, loaded, store)
    check_fingerprint(ref, loaded, model)

    from tunelab.backends.emulated import emulator_for
    from tunelab.eval.accuracy import evaluate

    emulator = emulator_for(loaded, options, device)
    with ref_cli.progress(f"emulating {source}") as (set_total, advance):
        set_total(ref.n_windows)
        result = evaluate(
            ref,
            lambda tokens, prefill_len: emulator.teacher_forced(tokens, prefill_len, precision),
            on_window=advance,
        )
    info = {
        "model": loaded.config.name,
        "model_source": str(loaded.source),
        "model_fingerprint": loaded.fingerprint,
        "n_layers": loaded.config.n_layers,
        "config_source": source,
        "accumulation": accumulation,
        "lm_head": lm_head,
        "device": device,
        "reference": {
            "key": ref.key,
            "origin": ref.meta.get("origin"),
            "corpus": ref.meta.get("corpus", {}).get("name"),
            "window_len": ref.window_len,
            "prefill_len": ref.prefill_len,
            "n_windows": ref.n_windows,
            "top_k": ref.top_k,
            "dtype": ref.meta.get("dtype"),
        },
        "seconds": round(time.perf_counter() - start, 2),
    }
    if json_out:
        typer.echo(json.dumps({**result.to_dict(), **info}))
    else:
        _print(result, info)


def _stored_reference(
    ctx: typer.Context, reference: str, store: ReferenceStore, windows: int | None, given: dict[str, Any]
) -> Any:
    """The stored reference `--reference` names, its first `windows` windows, checked against the options given
    before the model loads (None for a .refpt file: it is checked now and imported once the model is loaded)."""
    from tunelab.eval.refpt import read_refpt

    if _is_refpt(reference):
        _, tokens = read_refpt(reference)
        length = tokens.shape[1]
        built = {"corpus": (f"refpt:{Path(reference).name}", None), "top_k": (5, 5)}
        built |= {"window_len": (length, length), "prefill": (length // 2, length // 2)}
        ref_cli.check_given(ctx, reference, built, **given)
        if windows not in (None, 1):
            raise TunelabError(f"{reference} holds 1 window, not {windows}")
        return None
    stored = store.load(store.resolve_key(reference))
    ref_cli.check_given(ctx, f"reference {stored.key}", ref_cli.built_with(stored.meta), **given)
    return stored.select(windows)


def _is_refpt(reference: str) -> bool:
    """Whether `--reference` names a .refpt file (else it is a reference key)."""
    path = Path(reference)
    try:
        return path.suffix == ".refpt" or path.is_file()
    except OSError:  # a name too long to be a path: a key
        return False


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _num(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _print(result: Any, info: dict[str, Any]) -> None:
    r = info["reference"]
    console = Console(width=160)
    table = Table(
        title=f"{info['model']} · {info['config_source']} · accumulation {info['accumulation']} · "
        f"reference {r['key']} ({r['n_windows']} x {r['window_len']} tokens, prefill {r['prefill_len']})"
    )
    for column in ("metric", "value", "95% interval"):
        table.add_column(column)
    table.add_row("top-1", _pct(result.top1), f"{_pct(result.top1_ci[0])} .. {_pct(result.top1_ci[1])}")
    table.add_row("top-5", _pct(result.top5), f"{_pct(result.top5_ci[0])} .. {_pct(result.top5_ci[1])}")
    table.add_row(
        "top-1, ties credited",
        _pct(result.top1_tie_aware),
        f"{_pct(result.tie_rate)} of positions have a tied max",
    )
    kl_note = (
        "" if result.kl_support_mass is None else f"on top-{r['top_k']} ({_pct(result.kl_support_mass)} mass)"
    )
    table.add_row("KL(ref || cand)", _num(result.kl, 5), kl_note)
    table.add_row("perplexity", _num(result.ppl, 3), f"reference {_num(result.reference_ppl, 3)}")
    table.add_row("positions", str(result.n_positions), f"{result.n_windows} windows")
    console.print(table)
    windows = Table(title="per window")
    for column in ("window", "top-1", "top-5", "KL", "ppl"):
        windows.add_column(column, justify="right")
    for w in result.per_window:
        windows.add_row(str(w.window), _pct(w.top1), _pct(w.top5), _num(w.kl, 5), _num(w.ppl, 3))
    console.print(windows)
    console.print(
        f"Top-1: {100 * result.top1:.0f}% | Top-5: {100 * result.top5:.0f}%  ({info['seconds']:.1f} s)"
    )
