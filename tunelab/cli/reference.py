"""`tunelab reference build|show|import|export`: cached reference logits and tt-metal .refpt interop."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from tunelab.errors import TunelabError
from tunelab.eval.corpus import WindowSpec, resolve_corpus
from tunelab.eval.reference import (
    DEFAULT_TOP_K,
    ReferenceStore,
    reference_request,
    source_identity,
)

app = typer.Typer(
    help="Reference logits of the Hugging Face model on a corpus (cached), and tt-metal .refpt files.",
    no_args_is_help=True,
)

ModelOpt = Annotated[str, typer.Option(help="Model: an alias (smollm2-135m), HF dir/id, .gguf, Meta dir.")]
CorpusOpt = Annotated[
    str,
    typer.Option(help="Corpus: default, a registered name, a .txt/.json file, a directory, or hf:N:C:S:COL."),
]
WindowsOpt = Annotated[
    int | None, typer.Option(help="Windows to use (default: as many as the corpus gives, at most 8).")
]
WindowLenOpt = Annotated[int, typer.Option(help="Tokens per window (tt-metal: 1024).")]
PrefillOpt = Annotated[
    int, typer.Option(help="Prefilled tokens per window; the rest are scored (tt-metal: 512).")
]
TopKOpt = Annotated[int, typer.Option(help="Reference ids (and log-probabilities) kept per position, >= 5.")]
DtypeOpt = Annotated[
    str, typer.Option(help="Reference dtype: float32 (default, also on CUDA), bfloat16, float16.")
]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda.")]
LayersOpt = Annotated[int | None, typer.Option(help="Keep only the first N decoders (quick experiments).")]
DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Reference directory (default: $TUNELAB_REFERENCE_DIR or ./reference_logits)."
    ),
]

err = Console(stderr=True)


def load_model(source: str, n_layers: int | None) -> Any:
    """The model loader (a seam for tests)."""
    from tunelab.models import load_model as load

    return load(source, n_layers=n_layers)


@contextmanager
def progress(description: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A rich progress bar on stderr (shown only on a terminal): yields (set_total, advance)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    task = bar.add_task(description, total=None)
    with bar:
        yield (lambda n: bar.update(task, total=n)), (lambda _index: bar.advance(task))


def _check_device(device: str) -> None:
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise TunelabError(f"unknown --device {device!r} (expected cpu or cuda)")


def request_for(
    model: str, corpus: str, windows: WindowSpec, top_k: int, dtype: str, layers: int | None
) -> tuple[str, Any, dict[str, Any]]:
    """(corpus name, corpus spec, request) without loading the model."""
    corpus_name, spec = resolve_corpus(corpus)
    return corpus_name, spec, reference_request(source_identity(model), spec, windows, top_k, dtype, layers)


def get_reference(
    model: str,
    corpus: str,
    windows: WindowSpec,
    *,
    top_k: int = DEFAULT_TOP_K,
    dtype: str = "float32",
    device: str = "cpu",
    layers: int | None = None,
    force: bool = False,
    store: ReferenceStore,
    loaded: Any = None,
) -> tuple[Any, Any, bool]:
    """(reference, loaded model or None, cache hit) for a request; loads the model only on a miss."""
    from tunelab.eval.reference import build_reference, find_reference

    corpus_name, spec, request = request_for(model, corpus, windows, top_k, dtype, layers)
    if not force:
        found = find_reference(store, request)
        if found is not None:
            return found, loaded, True
    if loaded is None:
        err.print(f"loading {model} ...")
        loaded = load_model(model, layers)
    with progress(f"reference {loaded.config.name} on {corpus_name}") as (set_total, advance):
        reference = build_reference(
            loaded, spec, windows, corpus_name=corpus_name, top_k=top_k, dtype=dtype, device=device,
            store=store, request=request, force=force, on_window=advance, on_windows=set_total,
        )  # fmt: skip
    return reference, loaded, False


@app.command()
def build(
    model: ModelOpt = "smollm2-135m",
    corpus: CorpusOpt = "default",
    windows: WindowsOpt = None,
    window_len: WindowLenOpt = 1024,
    prefill: PrefillOpt = 512,
    top_k: TopKOpt = DEFAULT_TOP_K,
    dtype: DtypeOpt = "float32",
    device: DeviceOpt = "cpu",
    layers: LayersOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached (or corrupted).")] = False,
    directory: DirOpt = None,
) -> None:
    """Run the HF model on the corpus windows and cache per-position top-k ids, log-probs and logsumexp."""
    start = time.perf_counter()
    _check_device(device)
    spec = WindowSpec(window_len, prefill, windows)
    store = ReferenceStore(directory)
    if not force:  # the fast path: no torch, no model; the tensor file's hash is still checked
        _, _, request = request_for(model, corpus, spec, top_k, dtype, layers)
        key = store.lookup(request)
        if key is not None:
            meta = store.verify(key)
            typer.echo(f"{_summary(meta)}: cache hit ({time.perf_counter() - start:.2f} s)")
            return
    reference, _, _ = get_reference(
        model, corpus, spec, top_k=top_k, dtype=dtype, device=device, layers=layers, force=force, store=store
    )
    typer.echo(
        f"{_summary(reference.meta)}: built in {time.perf_counter() - start:.1f} s "
        f"-> {store.tensor_path(reference.key)}"
    )


def _summary(meta: dict[str, Any]) -> str:
    w = meta["windows"]
    return (
        f"reference {meta['key']} ({meta['model']['name']}, corpus {meta['corpus']['name']}, "
        f"{w['n_windows']} x {w['window_len']} tokens, prefill {w['prefill_len']}, top-{meta['top_k']}, "
        f"{meta['dtype']})"
    )


@app.command()
def show(
    key: Annotated[
        str | None, typer.Argument(help="A reference key (or a unique prefix); none lists all.")
    ] = None,
    directory: DirOpt = None,
) -> None:
    """List the stored references, or show one's metadata after checking its integrity."""
    store = ReferenceStore(directory)
    if key is not None:
        meta = store.verify(store.resolve_key(key))
        typer.echo(json.dumps(meta, indent=2))
        err.print("integrity: ok (size and SHA-256 match)")
        return
    entries = store.list()
    if not entries:
        typer.echo(f"no references in {store.root}")
        return
    table = Table(title=f"references in {store.root}")
    for column in ("key", "model", "corpus", "windows", "len/prefill", "top-k", "dtype", "origin", "created"):
        table.add_column(column)
    for meta in entries:
        if "error" in meta:
            table.add_row(meta["key"], f"[red]{meta['error']}[/red]", *[""] * 7)
            continue
        w = meta["windows"]
        table.add_row(
            meta["key"],
            meta["model"]["name"],
            meta["corpus"]["name"],
            str(w["n_windows"]),
            f"{w['window_len']}/{w['prefill_len']}",
            str(meta["top_k"]),
            str(meta["dtype"]),
            meta.get("origin", "?"),
            meta.get("created", "?"),
        )
    Console(width=200).print(table)


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A tt-metal .refpt file.")],
    model: ModelOpt = "smollm2-135m",
    layers: LayersOpt = None,
    directory: DirOpt = None,
) -> None:
    """Import a tt-metal .refpt as a reference (top-5 ids only: KL is unavailable)."""
    from tunelab.eval.refpt import import_refpt, read_refpt

    read_refpt(file)  # a bad file fails before the model is loaded
    err.print(f"loading {model} ...")
    loaded = load_model(model, layers)
    reference = import_refpt(file, loaded, ReferenceStore(directory))
    typer.echo(f"{_summary(reference.meta)}: imported from {file}")
    typer.echo(
        f"evaluate with: tunelab eval --model {model} --reference {reference.key} --preset performance"
    )


@app.command()
def export(
    output: Annotated[Path, typer.Option("-o", "--output", help="The .refpt file to write.")],
    model: ModelOpt = "smollm2-135m",
    corpus: CorpusOpt = "default",
    windows: WindowsOpt = None,
    window_len: WindowLenOpt = 1024,
    prefill: PrefillOpt = 512,
    top_k: TopKOpt = DEFAULT_TOP_K,
    dtype: DtypeOpt = "float32",
    layers: LayersOpt = None,
    window: Annotated[int, typer.Option(help="Which window of the reference to export.")] = 0,
    key: Annotated[
        str | None, typer.Option(help="Export this reference key instead of looking one up.")
    ] = None,
    directory: DirOpt = None,
) -> None:
    """Write one window of a built reference as a tt-metal .refpt (for its test_accuracy.py)."""
    from tunelab.eval.refpt import export_refpt

    store = ReferenceStore(directory)
    if key is None:
        spec = WindowSpec(window_len, prefill, windows)
        _, _, request = request_for(model, corpus, spec, top_k, dtype, layers)
        key = store.lookup(request)
        if key is None:
            raise TunelabError(
                f"no reference for {model} on corpus {corpus} ({window_len}/{prefill}, top-{top_k}, {dtype}) in "
                f"{store.root}: run `tunelab reference build --model {model}` with the same options first"
            )
    reference = store.load(store.resolve_key(key))
    export_refpt(reference, output, window)
    typer.echo(f"wrote {output} (window {window} of {reference.describe()})")
