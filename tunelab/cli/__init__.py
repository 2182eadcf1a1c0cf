"""The `tunelab` command line."""

from __future__ import annotations

import sys
import warnings

import typer

from tunelab.cli import config, perf, reference, run, sensitivity, study
from tunelab.cli import eval as eval_
from tunelab.errors import ConfigWarning, TunelabError

__all__ = ["app", "main"]

app = typer.Typer(
    help="tunelab: Pareto precision tuning for LLMs on Tenstorrent hardware through tt-transformers.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(config.app, name="config")
app.add_typer(perf.app, name="perf")
app.command("run")(run.run)
app.add_typer(reference.app, name="reference")
app.command("eval")(eval_.eval_command)
app.add_typer(study.app, name="study")
app.command("sensitivity")(sensitivity.sensitivity_command)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConfigWarning)
        try:
            app()
        except TunelabError as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(2)
        finally:
            for warning in caught:
                if issubclass(warning.category, ConfigWarning):
                    print(f"warning: {warning.message}", file=sys.stderr)
