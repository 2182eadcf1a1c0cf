"""The command-line options the commands share, and their checks: one name, one meaning, one help text.

A decoder_config input file is `--config FILE`; `--json` is the flag that prints JSON; the torch device is
`--device cpu|cuda`; the Tenstorrent system is `--mesh-device NAME` (default: `$MESH_DEVICE`, as tt-transformers
reads it). Deprecated spellings (`--json FILE`, perf's `--device NAME`) are hidden and warn in one line.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from tunelab.errors import ConfigError, TunelabError
from tunelab.files import shown
from tunelab.model_presets import PRESETS
from tunelab.perf import DEVICES
from tunelab.precision import Precision

if TYPE_CHECKING:
    from tunelab.backends.emulated import EmulatorOptions

# What to run or describe.
ModelOpt = Annotated[str, typer.Option(help="Model: an alias (smollm2-135m), HF dir/id, .gguf, Meta dir.")]
ModelNameOpt = Annotated[
    str, typer.Option(help="Model name as tt-transformers sees it (HF basename), for presets.")
]
ShapeModelOpt = Annotated[
    str,
    typer.Option(help="HF id or basename of a known model, or a path to a config.json (or its directory)."),
]
LayersOpt = Annotated[
    int | None,
    typer.Option(
        help="Decoders: the model's first N (config commands: its decoder count, which presets need)."
    ),
]

# The config: exactly one of these three (tunelab.interop.resolve_config).
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="A decoder_config JSON file.")]
PresetOpt = Annotated[str | None, typer.Option(help=f"Preset: {', '.join(PRESETS)}.")]
OptimizationsOpt = Annotated[str | None, typer.Option("--optimizations", help="An --optimizations string.")]
DeprecatedJsonFileOpt = Annotated[Path | None, typer.Option("--json", hidden=True)]
DefaultOpt = Annotated[
    str,
    typer.Option(help="Preset tt-transformers gives unlisted decoders of a JSON file: performance|accuracy."),
]

# Where it runs.
TorchDeviceOpt = Annotated[str, typer.Option("--device", help="Torch device: cpu or cuda.")]
MeshDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--mesh-device",
        help=f"Tenstorrent system: one of {', '.join(DEVICES)} or an alias (default: $MESH_DEVICE).",
    ),
]
DeprecatedDeviceOpt = Annotated[str | None, typer.Option("--device", hidden=True)]

# Emulation.
AccumulationOpt = Annotated[str, typer.Option(help="bf16-Dst accumulation: fast or exact.")]
LmHeadOpt = Annotated[
    str,
    typer.Option(help="LM head weights and logits format (tt-transformers' lm_head_dtype): bfp8 or bf16."),
]

# Reference logits.
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
DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir", help="Reference directory (default: $TUNELAB_REFERENCE_DIR or ./reference_logits)."
    ),
]

# Throughput.
BatchOpt = Annotated[int, typer.Option(help="Users decoded together.")]

# Output.
JsonOutOpt = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]
OutputOpt = Annotated[Path | None, typer.Option("-o", "--output", help="Write here instead of stdout.")]


def config_file(config: Path | None, json_file: Path | None) -> Path | None:
    """`--config FILE`, or its deprecated spelling `--json FILE` (one warning line)."""
    if json_file is None:
        return config
    if config is not None:
        raise ConfigError("give exactly one config: --config FILE, --preset NAME or --optimizations '...'")
    typer.echo(f"warning: --json {json_file} is deprecated; use --config {json_file}", err=True)
    return json_file


def mesh_device(name: str | None, deprecated: str | None) -> str:
    """`--mesh-device NAME`, its deprecated spelling `--device NAME` (one warning line), else `$MESH_DEVICE`."""
    if deprecated is not None:
        if name is not None:
            raise TunelabError("give --mesh-device once (--device is its deprecated spelling)")
        typer.echo(
            f"warning: --device {deprecated} is deprecated for Tenstorrent systems; use --mesh-device {deprecated}",
            err=True,
        )
        return deprecated
    name = name or os.environ.get("MESH_DEVICE")
    if not name:
        raise TunelabError(f"give --mesh-device NAME or set MESH_DEVICE (one of {', '.join(DEVICES)})")
    return name


def torch_device(device: str) -> str:
    """A `--device` value, checked: cpu, or cuda / cuda:N naming a GPU torch can use here."""
    if device == "cpu":
        return device
    if not re.fullmatch(r"cuda(:\d{1,3})?", device):
        raise TunelabError(f"unknown --device {shown(device)} (expected cpu, cuda or cuda:N)")
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = int(device.partition(":")[2] or 0)
    if not count:
        raise TunelabError(
            f"--device {device}: torch {torch.__version__} sees no CUDA GPU here (use --device cpu)"
        )
    if index >= count:
        raise TunelabError(
            f"--device {device}: there is no GPU {index} (torch sees {count}: cuda:0..cuda:{count - 1})"
        )
    return device


def lm_head_format(value: str) -> Precision:
    """An `--lm-head` value, checked: bfp8 or bf16."""
    if value not in ("bfp8", "bf16"):
        raise TunelabError(f"unknown --lm-head {shown(value)} (expected bfp8 or bf16)")
    return Precision(value)


def emulator_options(accumulation: str, lm_head: str = "bfp8") -> EmulatorOptions:
    """EmulatorOptions from `--accumulation` and `--lm-head`, with one-line errors naming the bad option."""
    if accumulation not in ("fast", "exact"):
        raise TunelabError(f"unknown --accumulation {shown(accumulation)} (expected fast or exact)")
    fmt = lm_head_format(lm_head)
    from tunelab.backends.emulated import EmulatorOptions

    return EmulatorOptions(accumulation, lm_head_format=fmt.value)
