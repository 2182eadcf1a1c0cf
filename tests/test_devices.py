"""The Tenstorrent device catalog (numerics.md section 3) read from package data."""

import pytest

from tunelab.errors import TunelabError
from tunelab.perf.devices import DEVICES, device


def test_catalog_has_every_device_tt_transformers_names():
    assert DEVICES == ("N150", "N300", "T3K", "TG", "P100", "P150", "P150x4", "P150x8")


@pytest.mark.parametrize("name", DEVICES)
def test_mesh_matches_chip_count_and_env_names_the_mesh(name):
    entry = device(name)
    rows, cols = entry.mesh
    assert rows * cols == entry.chips
    assert entry.env["MESH_DEVICE"] == name
    assert entry.eth_links > 0 or entry.chips == 1


@pytest.mark.parametrize(
    ("alias", "name"),
    [("n150", "N150"), ("LoudBox", "T3K"), ("quietbox", "T3K"), ("Galaxy", "TG"), ("p150a", "P150")],
)
def test_aliases_and_case(alias, name):
    assert device(alias).name == name


def test_wormhole_facts():
    n150, tg = device("N150"), device("TG")
    assert n150.dram_bytes_per_chip == 12 * 2**30 and n150.dram_gbs_per_chip == 288
    assert n150.peak_flops(1) == pytest.approx(262e12, rel=0.01)  # LoFi
    assert n150.peak_flops(4) == pytest.approx(65.5e12, rel=0.01)  # HiFi4
    assert tg.is_2d and not device("T3K").is_2d
    assert "WH_ARCH_YAML" not in tg.env and "WH_ARCH_YAML" in n150.env  # tt-transformers README: not on TG


def test_blackhole_facts():
    p150 = device("P150")
    assert p150.arch == "blackhole" and p150.dram_gbs_per_chip == 512 and p150.dram_gib_per_chip == 32
    assert p150.peak_flops(1) == pytest.approx(719e12, rel=0.01)  # 130 cores at 1.35 GHz
    assert device("P100").eth_links == 0 and device("P150x8").chips == 8


def test_unknown_device_is_one_line():
    with pytest.raises(TunelabError, match=r"^unknown device 'N999' \(known: N150, N300") as exc:
        device("N999")
    assert "\n" not in str(exc.value)
