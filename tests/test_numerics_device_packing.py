"""On-device packer model `pack_on_device` (documented, unverified): hand-built cases of its rounding rules, and
the CPU numba kernels against the torch reference `pack_on_device_reference`, bit for bit."""

from collections.abc import Callable

import pytest
import torch

from tunelab.numerics import bf16, device_packing, pack_on_device, quantize
from tunelab.numerics.bf16 import round_bf16, round_bf16_reference
from tunelab.numerics.bits import int32_mask
from tunelab.numerics.device_packing import pack_on_device_reference

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
INF = float("inf")
FORMATS = ("bf16", "bfp8", "bfp4")
# The hand-built cases run through the dispatcher (numba kernels on CPU) and through the torch reference.
PACKERS = pytest.mark.parametrize(
    "pack", [pack_on_device, pack_on_device_reference], ids=["fast", "reference"]
)
needs_kernels = pytest.mark.skipif(device_packing.packing_kernels is None, reason="numba is not installed")


def from_bits(bits: list[int]) -> torch.Tensor:
    return torch.tensor([int32_mask(b) for b in bits], dtype=torch.int32).view(torch.float32)


def hex_bits(x: torch.Tensor) -> list[int]:
    return [v & 0xFFFFFFFF for v in x.cpu().contiguous().view(torch.int32).tolist()]


def as_full_block(pack: Callable, x: torch.Tensor, fmt: str) -> torch.Tensor:
    """pack(x) with x (< 16 elements) zero-padded to one full block, which the CPU kernels take on their SIMD
    path (a short block takes the scalar one). Zero pads change no shared exponent, so results must agree."""
    return pack(torch.cat([x, x.new_zeros(16 - x.numel())]), fmt)[: x.numel()]


@PACKERS
@pytest.mark.parametrize("device", DEVICES)
def test_bf16_rounds_ties_away_flushes_denormals_and_maps_nan_to_inf(pack: Callable, device: str) -> None:
    x = from_bits([0x3F808000, 0xBF808000, 0x3F818000, 0x3F807FFF, 0x7F7FFFFF, 0x00400000, 0x80000001])
    x = torch.cat([x, from_bits([0x7FC00000, 0xFFC00001, 0x7F800000])])
    expected = [0x3F810000, 0xBF810000, 0x3F820000, 0x3F800000, 0x7F800000, 0, 0x80000000]
    expected += [0x7F800000, 0xFF800000, 0x7F800000]
    assert hex_bits(pack(x.to(device), "bf16")) == expected


@PACKERS
@pytest.mark.parametrize("device", DEVICES)
def test_bfp8_rounds_the_bf16_value_ties_away_and_saturates(pack: Callable, device: str) -> None:
    # Block max 100 (exponent 2^6): one code step is 1. Ties go away from zero, unlike the host's ties to even.
    # 127.25 is first rounded to bf16 127.5 (ties away), whose tie then rounds to 128 and saturates at 127;
    # 0.5 - 2^-11 first becomes bf16 0.5, a tie that rounds up: double rounding.
    x = torch.tensor([100.0, 0.5, 2.5, -2.5, 1.25, 127.25, 0.4990234375])
    got = pack(x.to(device), "bfp8").cpu()
    assert got.tolist() == [100.0, 1.0, 3.0, -3.0, 1.0, 127.0, 1.0]
    assert torch.equal(as_full_block(pack, x.to(device), "bfp8").cpu(), got)
    assert quantize(x, "bfp8").tolist() == [100.0, 0.0, 2.0, -2.0, 1.0, 127.0, 0.0]  # host: ties to even
    # 255.9 -> bf16 256 raises the shared exponent (quantum 4 instead of 2): the bf16 step comes first.
    assert pack(torch.tensor([255.9, 6.0, 255.0]), "bfp8").tolist() == [256.0, 8.0, 256.0]
    assert pack(torch.tensor([255.0, 1.0]), "bfp8").tolist() == [254.0, 2.0]  # 127.5 -> 128 -> 127
    assert as_full_block(pack, torch.tensor([255.9, 6.0, 255.0]), "bfp8").tolist() == [256.0, 8.0, 256.0]
    assert as_full_block(pack, torch.tensor([255.0, 1.0]), "bfp8").tolist() == [254.0, 2.0]


@PACKERS
@pytest.mark.parametrize("device", DEVICES)
def test_bfp4_truncates_the_bfp8_magnitude(pack: Callable, device: str) -> None:
    x = torch.tensor([100.0, 95.0, 31.0, -47.0, 16.0, 1.0, 127.0])
    got = pack(x.to(device), "bfp4").cpu()
    assert got.tolist() == [96.0, 80.0, 16.0, -32.0, 16.0, 0.0, 112.0]  # bfp8 magnitude >> 4 (quantum 16)
    assert torch.equal(as_full_block(pack, x.to(device), "bfp4").cpu(), got)
    assert quantize(x, "bfp4").tolist() == [96.0, 96.0, 32.0, -48.0, 16.0, 0.0, 112.0]  # host: nearest


@PACKERS
def test_bfp4_is_biased_toward_zero_and_host_is_not(pack: Callable) -> None:
    x = torch.randn(256, 256, generator=torch.Generator().manual_seed(0))
    device_err = (pack(x, "bfp4").abs() - x.abs()).mean()
    host_err = (quantize(x, "bfp4").abs() - x.abs()).mean()
    assert device_err < -0.02 and abs(host_err) < 0.2 * abs(device_err)
    assert (pack(x, "bfp4").abs() <= pack(x, "bfp8").abs()).all()


@PACKERS
def test_specials_in_blocks(pack: Callable) -> None:
    y = pack(torch.tensor([float("nan"), 1.0, -0.0, 1e-40, -1.0]), "bfp8")
    assert hex_bits(y) == [0x7F800000, 0, 0, 0, 0]  # NaN -> inf sets shared exponent 255; the rest vanish
    x = torch.tensor([1.0, -0.0, 1e-40, -1e-20, -3.0])
    for y in (pack(x, "bfp8"), as_full_block(pack, x, "bfp8")):
        assert hex_bits(y) == [0x3F800000, 0, 0, 0, 0xC0400000]  # no -0, denormal flushed


@PACKERS
def test_shapes_and_errors(pack: Callable) -> None:
    x = torch.randn(3, 5, 40)
    for fmt in ("bf16", "bfp8", "bfp4"):
        assert pack(x, fmt).shape == x.shape
    with pytest.raises(ValueError, match="bfp2"):
        pack(x, "bfp2")


# ---------------------------------------------------------------- CPU kernels vs the torch reference


def random_bits(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """float32 tensor built bit by bit. Each row has its own exponent level (the kernels' path boundaries first,
    then random levels; rows shuffled) and spread below it; mantissas are random, bf16 ties (low half 0x8000) or
    bf16-exact (frequent bfp8 ties); about 2% of elements are specials (±0, ±inf, NaNs with payloads, denormals,
    FLT_MAX, values rounding up to inf)."""
    g = torch.Generator().manual_seed(seed)
    rows = max(1, torch.Size(shape[:-1]).numel())
    levels = torch.tensor([0, 1, 2, 6, 7, 15, 16, 17, 24, 126, 127, 128, 240, 253, 254, 255])
    level = torch.cat([levels, torch.randint(0, 256, (rows,), generator=g)])[:rows]
    level = level[torch.randperm(rows, generator=g)]
    spread = torch.tensor([0, 1, 3, 8, 17, 40])[torch.randint(0, 6, (rows,), generator=g)]
    level, spread = level.reshape(*shape[:-1], 1), spread.reshape(*shape[:-1], 1)
    exponent = (level - (torch.rand(shape, generator=g) * (spread + 1)).long()).clamp(0, 255)
    mantissa = torch.randint(0, 1 << 23, shape, generator=g)
    kind = torch.randint(0, 4, shape, generator=g)
    mantissa = torch.where(kind == 1, (mantissa & ~0xFFFF) | 0x8000, mantissa)  # exact bf16 tie
    mantissa = torch.where(kind == 2, mantissa & ~0xFFFF, mantissa)  # bf16 value: bfp8 ties are frequent
    sign = torch.randint(0, 2, shape, generator=g)
    bits = (sign << 31) | (exponent << 23) | mantissa
    specials = torch.tensor(
        [0, 1 << 31, 0x7F800000, 0xFF800000, 0x7FC00000, 0xFFC00001, 0x7F800001, 0x00000001]
    )
    specials = torch.cat([specials, torch.tensor([0x807FFFFF, 0x7F7FFFFF, 0x7F7F8000, 0x00008000])])
    pick = specials[torch.randint(0, specials.numel(), shape, generator=g)]
    bits = torch.where(torch.rand(shape, generator=g) < 0.02, pick, bits)
    return (bits - ((bits >> 31) << 32)).to(torch.int32).view(torch.float32)  # wrap to signed int32


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    diff = (got.contiguous().view(torch.int32) != want.contiguous().view(torch.int32)).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} elements differ, first at {diff[0].tolist()}"


SHAPES = [(1,), (37,), (64,), (5, 48), (3, 4, 19), (2, 3, 5, 33), (2, 1, 7, 16), (300, 17), (96, 1536)]


@needs_kernels
@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_kernels_match_reference_bit_for_bit(fmt: str, shape: tuple[int, ...]) -> None:
    x = random_bits(shape, seed=len(shape) * 1000 + shape[-1])
    assert_same_bits(pack_on_device(x, fmt), pack_on_device_reference(x, fmt))


@needs_kernels
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernels_match_reference_on_every_exponent_level(fmt: str) -> None:
    # Row r: one block at exponent level r, elements down to 40 binades below it (to vanish below a code step).
    g = torch.Generator().manual_seed(7)
    exponent = (torch.arange(256).unsqueeze(1) - torch.randint(0, 41, (256, 64), generator=g)).clamp(0, 255)
    bits = (exponent << 23) | torch.randint(0, 1 << 23, (256, 64), generator=g)
    sign = torch.where(torch.rand(256, 64, generator=g) < 0.5, -1.0, 1.0)
    x = sign * bits.to(torch.int32).view(torch.float32)
    assert_same_bits(pack_on_device(x, fmt), pack_on_device_reference(x, fmt))


@needs_kernels
@pytest.mark.parametrize("fmt", FORMATS)
def test_kernels_take_strided_and_narrow_inputs(fmt: str) -> None:
    x = random_bits((6, 40, 48), seed=3)
    for view in (x.transpose(-1, -2), x[..., ::3], x[:, 1:, 5:37], x[:1].expand(4, 40, 48)):
        assert not view.is_contiguous()
        assert_same_bits(pack_on_device(view, fmt), pack_on_device_reference(view, fmt))
    for narrow in (x.to(torch.bfloat16), x.nan_to_num().to(torch.float16)):
        assert_same_bits(pack_on_device(narrow, fmt), pack_on_device_reference(narrow, fmt))
    empty = torch.empty(3, 0)
    assert pack_on_device(empty, fmt).shape == (3, 0)


def test_falls_back_to_the_reference_without_numba(monkeypatch: pytest.MonkeyPatch) -> None:
    x = random_bits((8, 40), seed=5)
    monkeypatch.setattr(device_packing, "packing_kernels", None)
    monkeypatch.setattr(bf16, "packing_kernels", None)
    for fmt in FORMATS:
        assert_same_bits(pack_on_device(x, fmt), pack_on_device_reference(x, fmt))
    assert_same_bits(round_bf16(x), round_bf16_reference(x))


@needs_kernels
@pytest.mark.parametrize("shape", [(1,), (3, 4, 19), (96, 1536)], ids=str)
def test_host_bf16_kernel_matches_torch_cast(shape: tuple[int, ...]) -> None:
    # round_bf16 backs quantize(x, "bf16"): nearest-even, denormals kept, every NaN -> 0x7FC00000.
    x = random_bits(shape, seed=11)
    assert_same_bits(round_bf16(x), round_bf16_reference(x))
    assert_same_bits(round_bf16(x.transpose(0, -1)), round_bf16_reference(x.transpose(0, -1)))
    specials = from_bits([0xFFC00001, 0x7F800001, 0x3F808000, 0x3F818000, 0x7F7FFFFF, 0x00000001])
    expected = [0x7FC00000, 0x7FC00000, 0x3F800000, 0x3F820000, 0x7F800000, 0]
    assert hex_bits(round_bf16(specials)) == expected
