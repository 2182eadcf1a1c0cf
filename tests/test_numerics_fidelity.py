"""Fidelity matmul (numerics.md section 2) against float64 computations of the documented phase sums."""

import itertools

import pytest
import torch

from tunelab.numerics import fidelity_matmul, fidelity_matmul_reference, quantize, split_phases

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
# |error| <= FP32_TOL * (|x| @ |w|): measured worst case ~1e-7 (K=2000); a missing phase gives ~1e-3
FP32_TOL = 1e-6
CUDA_TF32_TOL = 1e-5


def operands(m: int, k: int, n: int, w_fmt: str, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16-valued activations [m, k] and weights [k, n] quantised to `w_fmt`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(m, k, generator=g).bfloat16().float()
    return x, quantize(torch.randn(k, n, generator=g), w_fmt)


def phase_sum_f64(x: torch.Tensor, w: torch.Tensor, phases: int) -> torch.Tensor:
    """The documented phase products summed in float64."""
    return sum(b.double() @ a.double() for b, a in split_phases(x, w)[:phases])


def assert_within_fp32_rounding(
    y: torch.Tensor, want: torch.Tensor, x: torch.Tensor, w: torch.Tensor, tol: float = FP32_TOL
) -> None:
    scale = x.double().abs() @ w.double().abs()
    worst = ((y.double().cpu() - want.cpu()).abs() / scale.cpu()).max().item()
    assert worst <= tol, f"error {worst:.2e} x (|x|@|w|) exceeds {tol:.0e}"


def bf16_dst_simulation(x: torch.Tensor, w: torch.Tensor, phases: int) -> torch.Tensor:
    """Hardware order through float64 matmuls: each 16-term partial (exact in float64 for randn-sized data) is
    rounded to fp32, added to Dst in fp32, and Dst is rounded to bf16 by torch's cast after every addition."""
    terms = [(b.double(), a.double()) for b, a in split_phases(x, w)[:phases]]
    dst = torch.zeros(x.shape[0], w.shape[1])
    for tile in range(0, x.shape[1], 32):
        for b, a in terms:
            for face in (tile, tile + 16):
                dst = (dst + (b[:, face : face + 16] @ a[face : face + 16]).float()).bfloat16().float()
    return dst


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("phases", [1, 2, 3, 4])
def test_fast_fp32_dst_equals_float64_phase_sum(phases: int, device: str) -> None:
    g = torch.Generator().manual_seed(phases)
    x = torch.randn(2, 16, 200, generator=g)  # float32 activations: TF32-truncated by the SrcB mask
    w = quantize(torch.randn(200, 48, generator=g), "bf16")
    y = fidelity_matmul(x.to(device), w.to(device), phases=phases, fp32_dest_acc=True)
    assert y.shape == (2, 16, 48) and y.dtype == torch.float32
    # CUDA runs the masked operands on TF32 tensor cores (exact inputs), which accumulate with truncation:
    # a sequential round-toward-zero model of K = 200 reaches 2e-6
    tol = CUDA_TF32_TOL if device == "cuda" else FP32_TOL
    for i in range(2):
        assert_within_fp32_rounding(y[i], phase_sum_f64(x[i], w, phases), x[i], w, tol)


@pytest.mark.parametrize("phases", [1, 2, 4])
def test_exact_fp32_dst_is_the_fast_phase_sum(phases: int) -> None:
    x, w = operands(8, 72, 24, "bfp8")  # K = 72: zero-padded to 96 in the ordered form
    exact = fidelity_matmul(x, w, phases=phases, fp32_dest_acc=True, accumulation="exact")
    assert torch.equal(exact, fidelity_matmul(x, w, phases=phases, fp32_dest_acc=True))
    ordered = fidelity_matmul_reference(x, w, phases=phases, fp32_dest_acc=True)
    assert_within_fp32_rounding(ordered, phase_sum_f64(x, w, phases), x, w)  # the order only moves fp32 bits


def test_exact_bf16_dst_matches_float64_simulation() -> None:
    x, w = operands(32, 1024, 64, "bf16", seed=3)
    y = fidelity_matmul(x, w, phases=2, fp32_dest_acc=False, accumulation="exact")
    assert (y == y.bfloat16().float()).all()  # Dst holds bf16 values
    assert torch.equal(y, bf16_dst_simulation(x, w, phases=2))
    assert torch.equal(y, fidelity_matmul_reference(x, w, phases=2, fp32_dest_acc=False))


def test_lofi_with_bfp4_weights_uses_exact_weights_and_7_bit_activations() -> None:
    x, w = operands(16, 256, 32, "bfp4")
    x = x + torch.randn_like(x) * 1e-3  # full fp32 mantissas, so the truncation is visible
    x_trunc7 = (x.view(torch.int32) & -0x20000).view(torch.float32)  # hidden bit + 6 mantissa bits
    lofi = fidelity_matmul(x, w, phases=1, fp32_dest_acc=True)
    assert_within_fp32_rounding(lofi, x_trunc7.double() @ w.double(), x, w)
    assert not torch.allclose(lofi, x @ w, rtol=1e-4, atol=0)  # ... and the truncation does change the result
    assert torch.equal(
        lofi, fidelity_matmul(x, w, phases=2, fp32_dest_acc=True)
    )  # bfp4 weights have no lo part


def test_hifi4_is_the_full_product_for_bf16_operands() -> None:
    x, w = operands(16, 512, 32, "bf16")
    hifi4 = fidelity_matmul(x, w, phases=4, fp32_dest_acc=True)
    assert_within_fp32_rounding(hifi4, x.double() @ w.double(), x, w)


def test_more_phases_never_increase_error() -> None:
    g = torch.Generator().manual_seed(5)
    x, w = torch.randn(32, 512, generator=g), torch.randn(512, 64, generator=g)  # fp32: every phase matters
    exact = x.double() @ w.double()
    errors = [
        (fidelity_matmul(x, w, phases=p, fp32_dest_acc=True).double() - exact).norm() for p in (1, 2, 3, 4)
    ]
    assert all(later < earlier for earlier, later in itertools.pairwise(errors))


@pytest.mark.parametrize(
    ("w_fmt", "expected"),
    # numerics.md 2.4 (M=32, K=4096, N=256; x bf16): LoFi, HiFi2, HiFi4 with fp32 Dst, HiFi2 with bf16 Dst
    [("bf16", (2.6e-2, 4.7e-3, 2.4e-3, 2.6e-2)), ("bfp8", (2.2e-2, 8.2e-3, 7.2e-3, 2.5e-2))],
)
def test_documented_error_table(w_fmt: str, expected: tuple[float, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x_full, w_full = torch.randn(32, 4096, generator=g), torch.randn(4096, 256, generator=g)
    x, w = quantize(x_full, "bf16"), quantize(w_full, w_fmt)
    reference = x_full.double() @ w_full.double()

    def rel_error(y: torch.Tensor) -> float:
        return ((y.double() - reference).norm() / reference.norm()).item()

    got = [rel_error(fidelity_matmul(x, w, phases=p, fp32_dest_acc=True)) for p in (1, 2, 4)]
    got.append(rel_error(fidelity_matmul(x, w, phases=2, fp32_dest_acc=False, accumulation="exact")))
    for g_err, e_err in zip(got, expected, strict=True):
        assert 0.75 * e_err <= g_err <= 1.25 * e_err, f"{w_fmt}: got {got}, numerics.md says {expected}"
    assert got[3] > 2.5 * got[1]  # bf16 Dst over K=4096 dominates the error


def test_reference_and_fast_fp32_dst_handle_batch_and_ragged_k() -> None:
    x, w = operands(24, 45, 20, "bf16", seed=7)
    xb = x.reshape(2, 3, 4, 45)
    y = fidelity_matmul_reference(xb, w, phases=3, fp32_dest_acc=True)
    assert y.shape == (2, 3, 4, 20)
    assert_within_fp32_rounding(y.reshape(24, 20), phase_sum_f64(x, w, 3), x, w)


def test_bf16_dst_fast_form_rounds_once() -> None:
    x, w = operands(8, 64, 16, "bf16")
    fast = fidelity_matmul(x, w, phases=4, fp32_dest_acc=False)
    assert torch.equal(fast, fidelity_matmul(x, w, phases=4, fp32_dest_acc=True).bfloat16().float())


@pytest.mark.parametrize("fp32_dest_acc", [True, False])
@pytest.mark.parametrize("accumulation", ["fast", "exact"])
def test_denormal_inputs_are_flushed(accumulation: str, fp32_dest_acc: bool) -> None:
    x = torch.tensor([[1e-39, 1.0]])
    w = torch.tensor([[1e38], [0.0]])
    for a, b in ((x, w), (w.t(), x.t())):  # a denormal activation, then a denormal weight
        y = fidelity_matmul(a, b, phases=4, fp32_dest_acc=fp32_dest_acc, accumulation=accumulation)
        assert y.item() == 0.0


def test_bad_arguments() -> None:
    x, w = operands(4, 32, 8, "bf16")
    with pytest.raises(ValueError, match="phases"):
        fidelity_matmul(x, w, phases=5, fp32_dest_acc=True)
    with pytest.raises(ValueError, match="accumulation"):
        fidelity_matmul(x, w, phases=1, fp32_dest_acc=True, accumulation="slow")
    with pytest.raises(ValueError, match="K"):
        fidelity_matmul(x, w.t(), phases=1, fp32_dest_acc=True)
