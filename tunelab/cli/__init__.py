"""The `tunelab` command line."""

from __future__ import annotations

import functools
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

from tunelab.cli import config, perf, reference, run, sensitivity, study, workers
from tunelab.cli import eval as eval_
from tunelab.errors import TunelabError, TunelabWarning
from tunelab.files import WRITTEN, one_line

try:  # typer >= 0.24 vendors click; older versions use click itself
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover
    from click import exceptions as click_errors

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
app.command("worker")(workers.worker_command)


def main() -> None:
    """Console entry point: user errors become one line on stderr and exit status 2; a Ctrl-C a command does not
    handle itself becomes one line saying which files it completed, and exit status 130."""
    command = typer.main.get_command(app)
    _report_interrupts(command)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TunelabWarning)
        try:
            result = command.main(prog_name="tunelab", standalone_mode=False)
        except click_errors.NoArgsIsHelpError as exc:
            exc.show()
            sys.exit(exc.exit_code)
        except click_errors.UsageError as exc:  # a bad option or value: one line, like every other mistake
            hint = f" (`{exc.ctx.command_path} --help` lists the options)" if exc.ctx else ""
            print(one_line(f"error: {exc.format_message()}{hint}"), file=sys.stderr)
            sys.exit(exc.exit_code)
        except click_errors.ClickException as exc:
            print(one_line(f"error: {exc.format_message()}"), file=sys.stderr)
            sys.exit(exc.exit_code)
        except typer.Abort:  # Ctrl-C at a prompt
            print("interrupted: nothing was written", file=sys.stderr)
            sys.exit(130)
        except TunelabError as exc:
            print(one_line(f"error: {exc}"), file=sys.stderr)
            sys.exit(2)
        except _Interrupted as exc:
            print(one_line(f"interrupted: {exc}"), file=sys.stderr)
            sys.exit(130)
        finally:
            for warning in caught:
                if issubclass(warning.category, TunelabWarning):
                    print(one_line(f"warning: {warning.message}"), file=sys.stderr)
    sys.exit(result if isinstance(result, int) else 0)


class _Interrupted(Exception):
    """Ctrl-C stopped a command; the message says which files it wrote (atomically, so completely) before."""

    def __init__(self, written: list[Path]):
        names = list(dict.fromkeys(map(str, written)))
        more = f" and {len(names) - 3} more" if len(names) > 3 else ""
        kept = f"these files were written completely: {', '.join(names[:3])}{more}"
        super().__init__(kept if names else "nothing was written")


def _report_interrupts(command: Any) -> None:
    """Make `command` and its subcommands raise `_Interrupted` for a Ctrl-C they do not handle themselves (typer
    would exit 130 silently); `study run` and `sensitivity` catch theirs and say what they kept."""
    for subcommand in getattr(command, "commands", {}).values():
        _report_interrupts(subcommand)
    if command.callback is not None:
        command.callback = _interruptible(command.callback)


def _interruptible(callback: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(callback)
    def run(*args: Any, **kwargs: Any) -> Any:
        start = len(WRITTEN)
        try:
            return callback(*args, **kwargs)
        except KeyboardInterrupt:
            raise _Interrupted(WRITTEN[start:]) from None

    return run
