"""On-device packer model `pack_on_device` (documented, unverified): hand-built cases of its rounding rules."""

import pytest
import torch

from tunelab.numerics import pack_on_device, quantize
from tunelab.numerics.bits import int32_mask

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INF = float("inf")


def from_bits(bits: list[int]) -> torch.Tensor:
    return torch.tensor([int32_mask(b) for b in bits], dtype=torch.int32).view(torch.float32)


def hex_bits(x: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in x.cpu().contiguous().view(torch.int32).tolist()]


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_rounds_ties_away_flushes_denormals_and_maps_nan_to_inf(device: str) -> None:
    x = from_bits([0x3F808000, 0xBF808000, 0x3F818000, 0x3F807FFF, 0x7F7FFFFF, 0x00400000, 0x80000001])
    x = torch.cat([x, from_bits([0x7FC00000, 0xFFC00001, 0x7F800000])])
    expected = [0x3F810000, 0xBF810000, 0x3F820000, 0x3F800000, 0x7F800000, 0, 0x80000000]
    expected += [0x7F800000, 0xFF800000, 0x7F800000]
    assert hex_bits(pack_on_device(x.to(device), "bf16")) == expected


@pytest.mark.parametrize("device", DEVICES)
def test_bfp8_rounds_the_bf16_value_ties_away_and_saturates(device: str) -> None:
    # Block max 100 (exponent 2^6): one code step is 1. Ties go away from zero, unlike the host's ties to even.
    # 127.25 is first rounded to bf16 127.5 (ties away), whose tie then rounds to 128 and saturates at 127;
    # 0.5 - 2^-11 first becomes bf16 0.5, a tie that rounds up: double rounding.
    x = torch.tensor([100.0, 0.5, 2.5, -2.5, 1.25, 127.25, 0.4990234375])
    got = pack_on_device(x.to(device), "bfp8").cpu()
    assert got.tolist() == [100.0, 1.0, 3.0, -3.0, 1.0, 127.0, 1.0]
    assert quantize(x, "bfp8").tolist() == [100.0, 0.0, 2.0, -2.0, 1.0, 127.0, 0.0]  # host: ties to even
    # 255.9 -> bf16 256 raises the shared exponent (quantum 4 instead of 2): the bf16 step comes first.
    assert pack_on_device(torch.tensor([255.9, 6.0, 255.0]), "bfp8").tolist() == [256.0, 8.0, 256.0]
    assert pack_on_device(torch.tensor([255.0, 1.0]), "bfp8").tolist() == [254.0, 2.0]  # 127.5 -> 128 -> 127


@pytest.mark.parametrize("device", DEVICES)
def test_bfp4_truncates_the_bfp8_magnitude(device: str) -> None:
    x = torch.tensor([100.0, 95.0, 31.0, -47.0, 16.0, 1.0, 127.0])
    got = pack_on_device(x.to(device), "bfp4").cpu()
    assert got.tolist() == [96.0, 80.0, 16.0, -32.0, 16.0, 0.0, 112.0]  # bfp8 magnitude >> 4 (quantum 16)
    assert quantize(x, "bfp4").tolist() == [96.0, 96.0, 32.0, -48.0, 16.0, 0.0, 112.0]  # host: nearest


def test_bfp4_is_biased_toward_zero_and_host_is_not() -> None:
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    device_err = (pack_on_device(x, "bfp4").abs() - x.abs()).mean()
    host_err = (quantize(x, "bfp4").abs() - x.abs()).mean()
    assert device_err < -0.02 and abs(host_err) < 0.2 * abs(device_err)
    assert (pack_on_device(x, "bfp4").abs() <= pack_on_device(x, "bfp8").abs()).all()


def test_specials_in_blocks() -> None:
    y = pack_on_device(torch.tensor([float("nan"), 1.0, -0.0, 1e-40, -1.0]), "bfp8")
    assert hex_bits(y) == [0x7F800000, 0, 0, 0, 0]  # NaN -> inf sets shared exponent 255; the rest vanish
    y = pack_on_device(torch.tensor([1.0, -0.0, 1e-40, -1e-20, -3.0]), "bfp8")
    assert hex_bits(y) == [0x3F800000, 0, 0, 0, 0xC0400000]  # no -0, denormal flushed


def test_shapes_and_errors() -> None:
    x = torch.randn(3, 5, 40)
    for fmt in ("bf16", "bfp8", "bfp4"):
        assert pack_on_device(x, fmt).shape == x.shape
    with pytest.raises(ValueError, match="bfp2"):
        pack_on_device(x, "bfp2")
