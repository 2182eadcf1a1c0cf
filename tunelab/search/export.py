"""Export a study's chosen config as the decoder_config JSON tt-transformers runs, with how to run it."""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import ConfigError, TunelabError
from tunelab.files import atomic_write
from tunelab.interop import to_optimizations
from tunelab.interop.decoder_json import parse_decoder_config
from tunelab.presets import hard_defaults
from tunelab.search.study import FrontMember, TrialRecord

__all__ = ["Export", "choose", "export_trial", "tt_transformers_command"]

DEMO = "models/tt_transformers/demo/simple_text_demo.py"


@dataclass(frozen=True)
class Export:
    path: Path
    record: TrialRecord
    optimizations: str | None  # for a uniform config
    command: str


def choose(
    records: Sequence[TrialRecord],
    members: Sequence[FrontMember],
    *,
    trial: int | None = None,
    min_top1: float | None = None,
    fastest: bool = False,
    as_fast_as: str | None = None,
    tolerance: float = 0.005,
) -> TrialRecord:
    """Exactly one of: trial N (any complete trial), the fastest front member with top-1 >= X, the fastest one,
    or the most accurate one at least as fast as a warm start (a preset's name), within `tolerance` of its speed
    (the throughput model's own error is larger than half a percent)."""
    if sum((trial is not None, min_top1 is not None, fastest, as_fast_as is not None)) != 1:
        raise ConfigError("give exactly one of --trial N, --min-top1 X, --fastest or --as-fast-as PRESET")
    if trial is not None:
        for r in records:
            if r.number == trial:
                return r
        raise TunelabError(f"trial {trial} is not a complete trial of this study")
    if not members:
        raise TunelabError("the study has no feasible front yet: run some trials first")
    if as_fast_as is not None:
        preset = next((r for r in records if r.preset == as_fast_as), None)
        if preset is None:
            raise TunelabError(f"the study has no trial of the {as_fast_as!r} warm start")
        speed = (preset.best.tok_s_u or 0.0) * (1 - tolerance)
        pool = [m for m in members if (m.record.best.tok_s_u or 0.0) >= speed]
        if not pool:
            raise TunelabError(f"no front member is as fast as {as_fast_as} ({speed:.2f} tok/s/u)")
        return max(pool, key=lambda m: m.record.best.top1 or 0.0).record
    pool = [m for m in members if min_top1 is None or (m.record.best.top1 or 0.0) >= min_top1]
    if not pool:
        best = max((m.record.best.top1 or 0.0) for m in members)
        raise TunelabError(f"no front member reaches top-1 {min_top1:.4f} (the best is {best:.4f})")
    return max(pool, key=lambda m: m.record.best.tok_s_u or 0.0).record


def tt_transformers_command(hf_model: str, mesh_device: str, config_file: Path) -> str:
    """The tt-transformers demo run that uses the exported file (from the tt-metal root)."""
    argv = [
        "pytest",
        DEMO,
        "-k",
        "performance and batch-1",
        "--decoder_config_file",
        str(config_file.resolve()),
    ]
    return f"HF_MODEL={shlex.quote(hf_model)} MESH_DEVICE={mesh_device} " + " ".join(
        shlex.quote(a) for a in argv
    )


def export_trial(
    record: TrialRecord, path: str | Path, hf_model: str, mesh_device: str, n_layers: int
) -> Export:
    """Write the trial's complete decoder_config (validated as tt-transformers reads it) atomically."""
    parsed = parse_decoder_config(
        record.config, lambda _name: hard_defaults(), source=f"trial {record.number}"
    )
    errors = [f.message for f in parsed.findings(n_layers) if f.level == "error"]
    if errors:
        raise TunelabError(f"trial {record.number}'s config would be refused by tt-transformers: {errors[0]}")
    path = atomic_write(path, json.dumps(record.config, indent=2) + "\n")
    precision = parsed.precision
    optimizations = to_optimizations(precision[0]) if precision.is_uniform else None
    return Export(path, record, optimizations, tt_transformers_command(hf_model, mesh_device, path))


_DIGIT = {"BFP4": "4", "BFP8": "8", "BF16": "h"}
_CODE_GROUPS = ("FF1_FF3", "FF2", "WQKV", "WO", "KV_CACHE")
CODE_LEGEND = (
    "config: runs of decoders with their FF1_FF3 FF2 WQKV WO KV_CACHE formats (4 bfp4, 8 bfp8, h bf16)"
)


def config_code(config: dict) -> str:
    """A decoder_config in a few characters: runs of decoders with the same formats, e.g. `0-7:48888 8-29:88888`."""
    decoders = config.get("decoders", {})
    codes = []
    for i in range(len(decoders)):
        tensors = decoders.get(str(i), {}).get("precision_cfg", {})
        codes.append("".join(_DIGIT.get(tensors.get(g, ""), "?") for g in _CODE_GROUPS))
    runs, start = [], 0
    for i in range(1, len(codes) + 1):
        if i == len(codes) or codes[i] != codes[start]:
            runs.append(f"{start}:{codes[start]}" if i - 1 == start else f"{start}-{i - 1}:{codes[start]}")
            start = i
    return " ".join(runs)
