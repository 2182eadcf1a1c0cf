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
from rich.text import Text

from tunelab.cli.options import (
    CorpusOpt,
    DirOpt,
    DtypeOpt,
    LayersOpt,
    ModelOpt,
    PrefillOpt,
    TopKOpt,
    TorchDeviceOpt,
    WindowLenOpt,
    WindowsOpt,
    torch_device,
)
from tunelab.errors import TunelabError
from tunelab.eval.corpus import WindowSpec, resolve_corpus
from tunelab.eval.reference import DEFAULT_TOP_K, Reference, ReferenceStore, get_reference, request_for
from tunelab.files import writable

app = typer.Typer(
    help="Reference logits of the Hugging Face model on a corpus (cached), and tt-metal .refpt files.",
    no_args_is_help=True,
)

err = Console(stderr=True)


def note(message: str) -> None:
    """A progress line on stderr, shown only on a terminal like the progress bar: a failed command's stderr is then
    its one error line."""
    if err.is_terminal:
        err.print(message)


def load_model(source: str, n_layers: int | None) -> Any:
    """The model loader (a seam for tests)."""
    from tunelab.models import load_model as load

    return load(source, n_layers=n_layers)


@contextmanager
def progress(description: str) -> Iterator[tuple[Callable[[int], None], Callable[[int], None]]]:
    """A rich progress bar on stderr (shown only on a terminal, from the first set_total): yields (set_total,
    advance)."""
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

    def set_total(n: int) -> None:
        bar.update(task, total=n)
        bar.start()

    try:
        yield set_total, (lambda _index: bar.advance(task))
    finally:
        bar.stop()


def reference_for(
    model: str, corpus: str, windows: WindowSpec, *, loaded: Any = None, **options: Any
) -> tuple[Reference, Any, bool]:
    """`get_reference` with this command's model loader, "loading ..." line and progress bar."""
    with progress(f"reference {Path(model).name} on {corpus}") as (set_total, advance):
        return get_reference(
            model, corpus, windows, loaded=loaded, load_model=load_model,
            on_load=lambda source: note(f"loading {source} ..."), on_window=advance, on_windows=set_total,
            **options,
        )  # fmt: skip


def check_given(ctx: typer.Context, what: str, built: dict[str, tuple[Any, Any]], **given: Any) -> None:
    """A one-line error when an option given on the command line disagrees with what the reference `what` was
    built with (`built`: option name -> (shown, compared) value, as `built_with` gives); one left out takes the
    reference's value."""
    for name, value in given.items():
        if not option_given(ctx, name):
            continue
        shown, expected = built[name]
        if (resolve_corpus(value)[1].identity() if name == "corpus" else value) != expected:
            option = "--" + name.replace("_", "-")
            raise TunelabError(
                f"{option} {value} disagrees with {what}, built with {option} {shown}: leave it out to use "
                "the reference's"
            )


def option_given(ctx: typer.Context, name: str) -> bool:
    """Whether option `name` was given (on the command line or in the environment), not left at its default."""
    source = ctx.get_parameter_source(name)  # typer's own click: its ParameterSource, compared by name
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def built_with(meta: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """What a reference was built with, by option name: (shown, compared) values (a corpus by its identity)."""
    w = meta["windows"]
    values = {
        "windows": w["n_windows"],
        "window_len": w["window_len"],
        "prefill": w["prefill_len"],
        "top_k": meta["top_k"],
        "dtype": meta["dtype"],
        "layers": meta["model"].get("n_layers"),
    }
    corpus = meta["corpus"]
    return {"corpus": (corpus["name"], corpus.get("identity")), **{k: (v, v) for k, v in values.items()}}


@app.command()
def build(
    model: ModelOpt = "smollm2-135m",
    corpus: CorpusOpt = "default",
    windows: WindowsOpt = None,
    window_len: WindowLenOpt = 1024,
    prefill: PrefillOpt = 512,
    top_k: TopKOpt = DEFAULT_TOP_K,
    dtype: DtypeOpt = "float32",
    device: TorchDeviceOpt = "cpu",
    layers: LayersOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Rebuild even if cached (or corrupted).")] = False,
    directory: DirOpt = None,
) -> None:
    """Run the HF model on the corpus windows and cache per-position top-k ids, log-probs and logsumexp."""
    start = time.perf_counter()
    torch_device(device)
    spec = WindowSpec(window_len, prefill, windows)
    store = ReferenceStore(directory)
    if not force:  # the fast path: no torch, no model; the tensor file's hash is still checked
        _, _, request = request_for(model, corpus, spec, top_k, dtype, layers)
        key = store.lookup(request)  # verified
        if key is not None:
            meta = store.meta(key)
            typer.echo(f"{_summary(meta)}: cache hit ({time.perf_counter() - start:.2f} s)")
            return
    reference, _, _ = reference_for(
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
        err.print("integrity: ok (size, SHA-256, shapes and identity match the metadata)")
        return
    entries = store.list()
    if not entries:
        typer.echo(f"no references in {store.root}")
        return
    table = Table(*_COLUMNS, title=Text(f"references in {store.root}"))
    for meta in entries:
        table.add_row(*(Text(str(cell), style="red" if "error" in meta else "") for cell in _row(meta)))
    Console(width=200).print(table)


_COLUMNS = (
    "key",
    "status",
    "model",
    "corpus",
    "windows",
    "len/prefill",
    "top-k",
    "dtype",
    "origin",
    "created",
)


def _row(meta: dict[str, Any]) -> tuple[Any, ...]:
    """A reference's row of the listing: its key, "ok" or "corrupt: <reason>", and what it was built from."""
    if "error" in meta:
        return meta["key"], f"corrupt: {meta['error']}"
    w = meta["windows"]
    return (
        meta["key"],
        "ok",
        meta["model"]["name"],
        meta["corpus"]["name"],
        w["n_windows"],
        f"{w['window_len']}/{w['prefill_len']}",
        meta["top_k"],
        meta["dtype"],
        meta["origin"],
        meta.get("created", "?"),
    )


@app.command("import")
def import_(
    file: Annotated[Path, typer.Argument(help="A tt-metal .refpt file.")],
    model: ModelOpt = "smollm2-135m",
    layers: LayersOpt = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a stored copy (e.g. a corrupted one).")
    ] = False,
    directory: DirOpt = None,
) -> None:
    """Import a tt-metal .refpt as a reference (top-5 ids only: KL is unavailable)."""
    from tunelab.eval.refpt import import_refpt, read_refpt

    store = ReferenceStore(directory)
    read_refpt(file)  # a bad file fails before the model is loaded
    note(f"loading {model} ...")
    loaded = load_model(model, layers)
    reference = import_refpt(file, loaded, store, force)
    typer.echo(f"{_summary(reference.meta)}: imported from {file}")
    typer.echo(
        f"evaluate with: tunelab eval --model {model} --reference {reference.key} --preset performance"
    )


@app.command()
def export(
    ctx: typer.Context,
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
    if writable(output).parent == store.root.resolve():
        raise TunelabError(
            f"{output}: inside the reference directory {store.root}; write the .refpt elsewhere"
        )
    if key is not None:
        reference = store.load(store.resolve_key(key))
        check_given(
            ctx, f"reference {reference.key}", built_with(reference.meta), corpus=corpus, windows=windows,
            window_len=window_len, prefill=prefill, top_k=top_k, dtype=dtype, layers=layers,
        )  # fmt: skip
    else:
        spec = WindowSpec(window_len, prefill, windows)
        _, _, request = request_for(model, corpus, spec, top_k, dtype, layers)
        found = store.lookup(request)
        if found is None:
            raise TunelabError(
                f"no reference for {model} on corpus {corpus} ({window_len}/{prefill}, top-{top_k}, {dtype}) in "
                f"{store.root}: run `tunelab reference build --model {model}` with the same options first"
            )
        reference = store.load(found)
    export_refpt(reference, output, window)
    typer.echo(f"wrote {output} (window {window} of {reference.describe()})")
