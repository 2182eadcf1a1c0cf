"""Options shared by the commands that run the emulator (`tunelab run`, `tunelab eval`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from tunelab.backends.emulated import EmulatorOptions

AccumulationOpt = Annotated[str, typer.Option(help="bf16-Dst accumulation: fast or exact.")]


def emulator_options(accumulation: str, lm_head: str = "bfp8") -> EmulatorOptions:
    """EmulatorOptions from command-line values, with one-line errors naming the bad option."""
    if accumulation not in ("fast", "exact"):
        raise TunelabError(f"unknown --accumulation {accumulation!r} (expected fast or exact)")
    if lm_head not in ("bfp8", "bf16"):
        raise TunelabError(f"unknown --lm-head {lm_head!r} (expected bfp8 or bf16)")
    from tunelab.backends.emulated import EmulatorOptions

    return EmulatorOptions(accumulation, lm_head_format=lm_head)
