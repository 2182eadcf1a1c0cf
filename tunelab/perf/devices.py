"""The Tenstorrent device catalog: chips, mesh, DRAM, cores, clock, FPU rate and Ethernet, read from package data.

Facts come from `data/devices.json` (numerics.md section 3); a device is named as tt-transformers' `MESH_DEVICE`
(N150, N300, T3K, TG, P100, P150, P150x4, P150x8) or by an alias (LoudBox, QuietBox, Galaxy, ...), any case.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Literal

from tunelab.errors import TunelabError
from tunelab.files import shown

__all__ = ["DEVICES", "Device", "UnknownDevice", "device"]

GIB = 2**30


class UnknownDevice(TunelabError):
    """A device name the catalog does not know."""


@dataclass(frozen=True)
class Device:
    """One Tenstorrent system as tt-transformers runs a model on it (tensor parallel over all its chips)."""

    name: str
    arch: Literal["wormhole", "blackhole"]
    chips: int
    mesh: tuple[int, int]
    dram_gib_per_chip: float
    dram_gbs_per_chip: float  # spec bandwidth
    dram_ubench_fraction: float  # of spec, reached by tt-metal's DRAM microbenchmark
    cores: int  # tt-metal compute grid per chip
    clock_ghz: float
    fpu_flops_per_cycle_lofi: int  # per core; divided by the fidelity's phases
    eth_links: int  # links per neighbour used by collectives
    eth_link_gbs: float  # raw bandwidth per link and direction
    env: dict[str, str]
    aliases: tuple[str, ...] = ()
    notes: str = ""

    @property
    def dram_bytes_per_chip(self) -> float:
        return self.dram_gib_per_chip * GIB

    @property
    def is_2d(self) -> bool:
        return min(self.mesh) > 1

    def peak_flops(self, phases: int) -> float:
        """FLOP/s of one chip's compute grid at a fidelity of `phases` phases (LoFi 1 .. HiFi4 4)."""
        return self.cores * self.fpu_flops_per_cycle_lofi / phases * self.clock_ghz * 1e9


@cache
def _catalog() -> dict[str, Device]:
    data = json.loads(resources.files("tunelab.perf").joinpath("data/devices.json").read_text())
    return {
        name: Device(
            name=name,
            **{
                **facts,
                "mesh": tuple(facts["mesh"]),
                "aliases": tuple(facts["aliases"]),
            },
        )
        for name, facts in data.items()
        if not name.startswith("_")
    }


DEVICES: tuple[str, ...] = tuple(_catalog())


def device(name: str) -> Device:
    """The catalog entry for a device name or alias (case-insensitive); unknown names raise one line."""
    wanted = name.strip().lower()
    for entry in _catalog().values():
        if wanted in {entry.name.lower(), *(a.lower() for a in entry.aliases)}:
            return entry
    raise UnknownDevice(f"unknown device {shown(name)} (known: {', '.join(DEVICES)})")
