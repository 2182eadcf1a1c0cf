"""Host conversion `quantize`: fast path vs the step-by-step reference, documented examples, API errors."""

from pathlib import Path

import numpy as np
import pytest
import torch

from tunelab.numerics import blockfloat, quantize
from tunelab.numerics.bits import int32_mask
from tunelab.numerics.blockfloat import (
    MANTISSA_BITS,
    from_blocks,
    quantize_bfp_blocks,
    quantize_bfp_reference,
    to_blocks,
)

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GOLDEN = Path(__file__).resolve().parent / "data" / "ttnn_golden.npz"
INF = float("inf")


def from_bits(bits: list[int]) -> torch.Tensor:
    """float32 tensor from unsigned 32-bit patterns."""
    return torch.tensor([int32_mask(b) for b in bits], dtype=torch.int32).view(torch.float32)


def bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def adversarial_blocks(n: int, mantissa_bits: int, seed: int) -> torch.Tensor:
    """[n, 16] blocks over every exponent range (tiny, denormal, huge) with ties (exact and 1 ulp above),
    saturating maxima, raw bit patterns (NaN payloads, inf, denormals) and special values."""
    g = torch.Generator().manual_seed(seed)
    block_exp = torch.randint(-149, 128, (n, 1), generator=g).float()
    spread = torch.randint(-30, 1, (n, 16), generator=g).float()
    x = torch.randn(n, 16, generator=g) * torch.exp2(block_exp + spread)
    raw = torch.randint(-(2**31), 2**31, (n, 16), generator=g, dtype=torch.int64).to(torch.int32)
    x = torch.where(torch.rand(n, 16, generator=g) < 0.1, raw.view(torch.float32), x)
    step = 2.0 ** (1 - mantissa_bits)  # one code step once 1.5 sets the block max
    ties = (torch.randint(0, 1 << mantissa_bits, (n, 16), generator=g) + 0.5) * step
    ties = torch.where(torch.rand(n, 16, generator=g) < 0.5, ties, torch.nextafter(ties, torch.tensor(INF)))
    ties[:, 0] = 1.5
    x = torch.where(torch.rand(n, 1, generator=g) < 0.2, ties * torch.exp2(block_exp.clamp(-100, 100)), x)
    specials = [0, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7F800001, 0x00000001, 0x807FFFFF]
    pool = torch.cat([from_bits(specials), torch.tensor([3.4028235e38, 1.1754944e-38, 255.9, 131.0, 3e38])])
    pick = torch.rand(n, 16, generator=g) < 0.05
    x[pick] = pool[torch.randint(0, len(pool), (int(pick.sum()),), generator=g)]
    return x


def random_tensors() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return [
        torch.randn(64, 256, generator=g),
        torch.randn(3, 5, 40, generator=g) * 1e-30,
        torch.randn(7, 45, generator=g) * 1e30,
        torch.randn(100, generator=g),
        torch.rand(33, 47, generator=g) - 0.5,
        torch.randn(2, 3, 17, 70, generator=g)
        * torch.exp2(torch.randint(-40, 40, (70,), generator=g).float()),
    ]


def reference(x: torch.Tensor, fmt: str) -> torch.Tensor:
    """The step-by-step reference on a tensor of any shape."""
    return from_blocks(quantize_bfp_reference(to_blocks(x), MANTISSA_BITS[fmt]), x.shape)


def assert_same_bits(got: torch.Tensor, want: torch.Tensor) -> None:
    got, want = got.cpu(), want.cpu()
    assert got.shape == want.shape and got.dtype == want.dtype == torch.float32
    bad = bits(got) != bits(want)
    assert not bad.any(), f"{int(bad.sum())} mismatches, first inputs at {bad.nonzero()[:5].tolist()}"


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["bfp8", "bfp4"])
def test_fast_path_matches_reference_on_random_data(fmt: str, device: str) -> None:
    for x in random_tensors():
        assert_same_bits(quantize(x.to(device), fmt), reference(x, fmt))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("fmt", ["bfp8", "bfp4"])
def test_fast_path_matches_reference_on_adversarial_blocks(fmt: str, device: str, monkeypatch) -> None:
    monkeypatch.setattr(blockfloat, "_CPU_CHUNK_BLOCKS", 1000)  # several chunks, special blocks in each
    x = adversarial_blocks(20_000, MANTISSA_BITS[fmt], seed=1)
    want = quantize_bfp_reference(x, MANTISSA_BITS[fmt])
    assert_same_bits(quantize_bfp_blocks(x.to(device), MANTISSA_BITS[fmt]), want)


def test_reference_matches_ttnn_golden() -> None:
    if not GOLDEN.exists():
        pytest.skip(f"no {GOLDEN.name}")
    with np.load(GOLDEN) as data:
        for i in range(len(data["kinds"])):
            x = torch.from_numpy(data[f"in_{i}"].copy())
            for fmt in ("bfp8", "bfp4"):
                assert_same_bits(reference(x, fmt), torch.from_numpy(data[f"{fmt}_{i}"].copy()))


@pytest.mark.parametrize(
    ("values", "fmt", "expected"),
    [
        ([100.0, 0.5, 2.5, 1.9999, 0.75], "bfp8", [100.0, 0.0, 2.0, 2.0, 1.0]),  # quantum 1, ties to even
        ([100.0, 16.0, 8.0, 24.0, 40.0], "bfp4", [96.0, 16.0, 0.0, 32.0, 32.0]),  # quantum 16
        ([255.9, 3.0, 1.0], "bfp8", [254.0, 4.0, 0.0]),  # saturation at code 127, never an exponent bump
        ([255.9], "bfp4", [224.0]),
        ([131.0], "bfp8", [132.0]),  # 65.5 -> 66, tie to even
        ([1.5, 2.0**-7 * (1 + 2.0**-23)], "bfp8", [1.5, 0.0]),  # alignment truncates first: a tie, not above
        ([1.0, 1e-40, -1e-39], "bfp8", [1.0, 0.0, 0.0]),  # denormals next to a normal
        ([1e-40, 5e-39], "bfp8", [0.0, 0.0]),  # a block of denormals only
        ([-1e-3, 1000.0, -0.0], "bfp8", [0.0, 1000.0, 0.0]),  # no -0 (checked bitwise)
        ([INF, 3e38, 1.0], "bfp4", [INF, INF, 0.0]),  # 3e38 normalises onto exponent 255 next to inf
        ([-INF, 2.0], "bfp8", [-INF, 0.0]),
    ],
)
def test_documented_examples(values: list[float], fmt: str, expected: list[float]) -> None:
    assert_same_bits(quantize(torch.tensor(values), fmt), torch.tensor(expected))


@pytest.mark.parametrize("fmt", ["bfp8", "bfp4"])
def test_quiet_nan_survives_and_signalling_nan_becomes_inf(fmt: str) -> None:
    y = quantize(from_bits([0x7FC00000, 0x7F800001, 0x3F800000]), fmt)
    assert torch.isnan(y[0]) and y[1] == INF and y[2] == 0.0


def test_blocks_are_16_wide_along_the_last_dim() -> None:
    x = torch.ones(2, 40)
    x[0, 16] = 2.0**20  # raises the shared exponent of columns 16..31 of row 0 only
    y = quantize(x, "bfp8")
    assert (
        (y[0, :16] == 1).all() and (y[0, 17:32] == 0).all() and (y[0, 32:] == 1).all() and (y[1] == 1).all()
    )
    assert quantize(x.t(), "bfp8").shape == (40, 2)  # non-contiguous input, last dim 2 (zero padded)


def test_bf16_rounds_to_nearest_even_and_keeps_denormals() -> None:
    x = from_bits([0x3F808000, 0x3F818000, 0x3F808001, 0x7F7FFFFF, 0x00012345, 0x80000000, 0x7FA00001])
    y = bits(quantize(x, "bf16")).tolist()
    expected = [0x3F800000, 0x3F820000, 0x3F810000, 0x7F800000, 0x00010000, 0x80000000, 0x7FC00000]
    assert [v & 0xFFFFFFFF for v in y] == expected


@pytest.mark.parametrize("fmt", ["bf16", "bfp8", "bfp4"])
def test_half_precision_inputs_are_widened_exactly(fmt: str) -> None:
    x = torch.randn(4, 48).to(torch.bfloat16)
    assert_same_bits(quantize(x, fmt), quantize(x.float(), fmt))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"'fp8'.*bf16, bfp8, bfp4"):
        quantize(torch.ones(4), "fp8")
    with pytest.raises(ValueError, match="rank"):
        quantize(torch.tensor(1.0), "bf16")
    with pytest.raises(TypeError, match="int32"):
        quantize(torch.ones(4, dtype=torch.int32), "bfp8")
