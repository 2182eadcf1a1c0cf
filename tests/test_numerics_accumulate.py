"""Fused exact bf16-Dst kernels (numba on CPU, Triton on CUDA) against `fidelity_matmul_reference`."""

import importlib.metadata
import importlib.util
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from tunelab.numerics import SrcA, accumulate_cpu, fidelity_matmul, fidelity_matmul_reference, quantize
from tunelab.numerics.accumulate_cpu import bf16_dst_matmul as cpu_kernel
from tunelab.numerics.fidelity import SRC_A_MASKS, SRC_B_MASKS

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = pytest.mark.skipif(not (torch.cuda.is_available() and HAS_TRITON), reason="needs CUDA and Triton")


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.cpu().contiguous().view(torch.int32)


def assert_same_bits(y: torch.Tensor, want: torch.Tensor) -> None:
    assert y.shape == want.shape and y.dtype == torch.float32
    differ = bits(y) != bits(want)
    assert not differ.any(), (
        f"{int(differ.sum())} of {y.numel()} outputs differ, e.g. {y[differ][:4]} vs {want[differ][:4]}"
    )


def operands(
    lead: tuple[int, ...], k: int, n: int, w_fmt: str, x_kind: str, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Activations [*lead, k] (bf16-valued, raw fp32 = TF32-truncated by SrcB, or bf16 spanning 2^+-30) and
    weights [k, n] in `w_fmt`."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(*lead, k, generator=g)
    if x_kind == "wide":  # products spread far beyond 2^37: the in-order float64 partial is the definition
        x = x * 2.0 ** torch.randint(-30, 31, x.shape, generator=g).float()
    if x_kind != "fp32":
        x = x.bfloat16().float()
    return x, quantize(torch.randn(k, n, generator=g), w_fmt)


def cpu_exact(x: torch.Tensor, w: torch.Tensor, phases: int) -> torch.Tensor:
    return fidelity_matmul(x, w, phases=phases, fp32_dest_acc=False, accumulation="exact")


def reference(x: torch.Tensor, w: torch.Tensor, phases: int) -> torch.Tensor:
    return fidelity_matmul_reference(x, w, phases=phases, fp32_dest_acc=False)


# ------------------------------------------------------------------------------------------------- CPU (numba)


@pytest.mark.parametrize(
    ("lead", "k", "n", "phases", "w_fmt", "x_kind"),
    [
        ((8,), 64, 16, 1, "bfp4", "bf16"),
        ((8,), 64, 16, 2, "bfp8", "bf16"),
        ((5,), 45, 70, 3, "bf16", "fp32"),  # K not a multiple of 32, N not a multiple of the panel width
        ((33,), 100, 130, 4, "bf16", "bf16"),  # more rows than one job
        ((2, 3, 7), 77, 65, 2, "bfp8", "fp32"),  # batch dims
        ((70,), 600, 200, 1, "bfp4", "wide"),
        ((40,), 300, 64, 4, "bf16", "wide"),
        ((1,), 16, 1, 4, "bfp8", "fp32"),
    ],
)
def test_cpu_kernel_matches_reference(
    lead: tuple[int, ...], k: int, n: int, phases: int, w_fmt: str, x_kind: str
) -> None:
    x, w = operands(lead, k, n, w_fmt, x_kind, seed=k + n + phases)
    y = cpu_exact(x, w, phases)
    assert y.shape == (*lead, n)
    assert_same_bits(y, reference(x, w, phases))
    assert torch.equal(y, y.bfloat16().float())  # Dst holds bf16 values


@pytest.mark.parametrize("phases", [1, 2, 3, 4])
def test_cpu_kernel_matches_reference_for_every_phase_count(phases: int) -> None:
    x, w = operands((48,), 160, 96, "bf16", "fp32", seed=phases)
    assert_same_bits(cpu_exact(x, w, phases), reference(x, w, phases))


def test_cpu_kernel_specials() -> None:
    """Denormal inputs flush, inf and NaN propagate (NaN canonical), large partials overflow to inf."""
    x = torch.zeros(6, 40)
    x[0, :2] = torch.tensor([1e-39, 1.0])  # a denormal activation
    x[1, 0], x[2, 0], x[3, :3] = float("inf"), float("nan"), torch.tensor([3e38, 3e38, -1.0])
    x[4, 20], x[5, 33] = -2.5, 1e-30
    w = torch.ones(40, 9)
    w[0, 0], w[1, 0], w[1, 1], w[2, 2], w[3, 3] = 1e38, 0.0, float("-inf"), 1e-39, 0.0
    w[:, 4] = -w[:, 5]
    for phases in (1, 4):
        assert_same_bits(cpu_exact(x, w, phases), reference(x, w, phases))
    y = cpu_exact(x, w, 4)
    assert y[0, 0] == 0.0 and y[1, 1].isnan() and y[3, 0] == float("inf")
    assert int(bits(y)[2, 0]) == 0x7FC00000


def test_cpu_kernel_fp32_path_threshold() -> None:
    """The fp32 path needs sum|b| * max|a| < 2^(24 + Lb + La). Here that is 2.2e7 > 2^24 (Lb = La = 0): the sum
    needs 25 bits, and the in-order fp32 chain ends on the other side of a bf16 rounding boundary than the exact
    sum, so only the float64 path gets it right. With the unit weights doubled (La = 1) the fp32 path runs."""
    b = [7616, 6976, 7872, 7552, 6208, 6912, 7488, 7104, 7040, 7040, 6976, 7168, 7552, 41, 1, 1]
    a = [208, 208, 216, 224, 216, 208, 232, 216, 224, 224, 240, 200, 200, 25, 1, 1]
    x, w = torch.tensor([b], dtype=torch.float32), torch.tensor(a, dtype=torch.float32)[:, None]
    chain = torch.zeros(())
    for p, q in zip(x[0], w[:, 0], strict=True):
        chain = chain + p * q
    exact = torch.tensor(float(sum(p * q for p, q in zip(b, a, strict=True))))
    assert chain.bfloat16() != exact.bfloat16()
    assert cpu_exact(x, w, 1).item() == exact.bfloat16().item()
    w18 = torch.where(w == 1, 2.0, w)
    for weights in (w, w18):
        assert_same_bits(cpu_exact(x, weights, 1), reference(x, weights, 1))


def test_cpu_kernel_empty_and_zero_k() -> None:
    w = quantize(torch.randn(32, 8), "bf16")
    assert cpu_exact(torch.zeros(0, 32), w, 2).shape == (0, 8)
    assert torch.equal(cpu_exact(torch.ones(3, 0), torch.ones(0, 5), 2), torch.zeros(3, 5))


def test_exact_dispatch_and_fp32_dst() -> None:
    """bf16 Dst takes the CPU kernel; with an fp32 Dst "exact" is the fast fp32 phase sum."""
    x, w = operands((2, 9), 96, 40, "bfp8", "bf16", seed=11)
    flat = x.reshape(-1, 96)
    assert torch.equal(cpu_exact(x, w, 2).reshape(-1, 40), cpu_kernel(flat, w, 2, SRC_B_MASKS, SRC_A_MASKS))
    exact32 = fidelity_matmul(x, w, phases=2, fp32_dest_acc=True, accumulation="exact")
    assert torch.equal(exact32, fidelity_matmul(x, w, phases=2, fp32_dest_acc=True))


@pytest.mark.parametrize(("sequence", "builds"), [((1, 2, 1, 4, 3), [1, 2]), ((2, 1, 2), [2]), ((4, 1), [4])])
def test_cpu_kernel_reuses_src_a_panels(
    sequence: tuple[int, ...], builds: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A SrcA splits its panels on first exact use and again only when LoFi's one part no longer serves; every
    call matches the per-call split of a plain tensor weight and the reference bit for bit."""
    x, w = operands((3, 50), 100, 130, "bfp8", "fp32", seed=9)
    per_call = {p: cpu_exact(x, w, p) for p in set(sequence)}
    made, split = [], accumulate_cpu.split_weights

    def counted_split(w: torch.Tensor, phases: int, masks: tuple[int, int]) -> accumulate_cpu.Panels:
        made.append(phases)
        return split(w, phases, masks)

    monkeypatch.setattr(accumulate_cpu, "split_weights", counted_split)
    weight = SrcA(w)
    for phases in sequence:
        y = cpu_exact(x, weight, phases)
        assert_same_bits(y, per_call[phases])
        assert_same_bits(y, reference(x, w, phases))
    assert made == builds


def test_cpu_kernel_panels_hold_tiny_weights_exactly() -> None:
    """Weights near the normal limit have denormal lo parts that bf16 could not hold; the panels' 16-bit halves
    of the masked bits keep them exact. Panels split for fewer phases are refused."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(20, 64, generator=g).bfloat16().float() * 2.0**100
    w = torch.randn(64, 70, generator=g) * 2.0**-124  # TF32 bits at biased exponents 1 and 2: lo below 2^-133
    for phases in (1, 2, 4):
        assert_same_bits(cpu_exact(x, SrcA(w), phases), reference(x, w, phases))
    panels = accumulate_cpu.split_weights(SrcA(w).all, 1, SRC_A_MASKS)
    assert_same_bits(cpu_kernel(x, panels, 1, SRC_B_MASKS, SRC_A_MASKS), reference(x, w, 1))
    with pytest.raises(ValueError, match="phases"):
        cpu_kernel(x, panels, 2, SRC_B_MASKS, SRC_A_MASKS)


# --------------------------------------------------------------------------------------------- CUDA (Triton)


def representable(m: int, k: int, n: int, bits_x: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Integer-valued operands scaled by a power of two per row (x) and per column (w): x has `bits_x`
    significant bits, w 8, so every 16-term partial of every phase is an integer below 2^24 (times the row and
    column scales) and no summation order or accumulator width can change it."""
    g = torch.Generator().manual_seed(seed)
    top = 2**bits_x - 1
    x = torch.randint(-top, top + 1, (m, k), generator=g) * 2.0 ** torch.randint(-20, 20, (m, 1), generator=g)
    w = torch.randint(-255, 256, (k, n), generator=g) * 2.0 ** torch.randint(-20, 20, (1, n), generator=g)
    return x, w


TRITON_VARIANTS = {  # keyword arguments of accumulate_triton.bf16_dst_matmul; every phase count for the default
    "bits": {},
    "cvt": {"rounding": "cvt"},
    "magic": {"rounding": "magic"},
    "tf32": {"config": {"DOT_TF32": 1}},
    "host-split": {"split_in_kernel": False},
    "64x128": {"config": {"BLOCK_M": 64, "num_warps": 4, "num_stages": 4}},
}
TRITON_CASES = [(p, "bits") for p in (1, 2, 3, 4)] + [(2, v) for v in TRITON_VARIANTS if v != "bits"]


@CUDA
@pytest.mark.parametrize(("phases", "variant"), TRITON_CASES)
def test_triton_kernel_is_exact_on_representable_inputs(phases: int, variant: str) -> None:
    """Checks the tile -> phase -> face order, the parts and the Dst rounding: nothing else can differ here."""
    from tunelab.numerics import accumulate_triton

    for m, k, n, bits_x in ((200, 333, 300, 8), (64, 96, 128, 11)):  # 11 bits: fp32 activations, parts path
        x, w = representable(m, k, n, bits_x, seed=phases + m)
        want = cpu_kernel(x, w, phases, SRC_B_MASKS, SRC_A_MASKS)
        for xd, wd in ((x, w), (x.bfloat16(), w.bfloat16())) if bits_x == 8 else ((x, w),):
            y = accumulate_triton.bf16_dst_matmul(xd.cuda(), wd.cuda(), phases, **TRITON_VARIANTS[variant])
            assert_same_bits(y, want)


def ulps_bf16(y: torch.Tensor, want: torch.Tensor) -> torch.Tensor:
    """|y - want| in bf16 ulps of the larger magnitude."""
    _, exponent = torch.frexp(torch.maximum(y.abs(), want.abs()).double())
    return (y.double() - want.double()).abs() / torch.ldexp(torch.ones_like(y.double()), exponent - 8)


@CUDA
@pytest.mark.parametrize(
    ("phases", "w_fmt", "rounding"),
    [(1, "bfp4", "bits"), (2, "bfp8", "bits"), (4, "bf16", "bits"), (2, "bfp8", "cvt"), (2, "bfp8", "magic")],
)
def test_triton_kernel_rarely_differs_on_random_data(phases: int, w_fmt: str, rounding: str) -> None:
    """Tensor-core partials may be an fp32 ulp off when a 16-term sum needs over 24 bits: rare, 1 bf16 ulp."""
    from tunelab.numerics import accumulate_triton

    x, w = operands((256,), 2048, 512, w_fmt, "bf16", seed=phases)
    want = cpu_kernel(x, w, phases, SRC_B_MASKS, SRC_A_MASKS)
    y = accumulate_triton.bf16_dst_matmul(x.cuda(), w.cuda(), phases, rounding=rounding).cpu()
    differ = bits(y) != bits(want)
    rate = differ.double().mean().item()
    print(f"phases={phases} {w_fmt} {rounding}: {rate:.2e} of outputs differ")
    assert rate < 1e-3, f"{rate:.2e} of outputs differ from the reference"
    if differ.any():
        assert ulps_bf16(y[differ], want[differ]).max().item() <= 1.0


@CUDA
def test_cuda_dispatch_batch_dims_and_specials() -> None:
    x, w = operands((2, 3, 7), 77, 65, "bfp8", "fp32", seed=5)
    x[0, 0, 0, :2] = torch.tensor([float("nan"), 1e-39])
    y = fidelity_matmul(x.cuda(), w.cuda(), phases=2, fp32_dest_acc=False, accumulation="exact")
    assert y.shape == (2, 3, 7, 65) and y.is_cuda
    want = reference(x, w, 2)
    assert int(bits(y)[0, 0, 0, 0]) == 0x7FC00000 and bits(y).eq(bits(want)).float().mean() > 0.999


# ------------------------------------------------------------------------------- Triton interpreter (no GPU)


def interpreter_works() -> bool:
    """Triton >= 3.9 (3.6's interpreter breaks on `range(0, K, 32)` under numpy 2) and no GPU (then the CUDA
    tests above run instead)."""
    if not HAS_TRITON or torch.cuda.is_available():
        return False
    major, minor = (int(part) for part in importlib.metadata.version("triton").split(".")[:2])
    return (major, minor) >= (3, 9)


@pytest.mark.skipif(not interpreter_works(), reason="needs Triton >= 3.9 and no GPU")
def test_triton_kernel_logic_in_interpreter() -> None:
    """The kernel's order, parts and "bits"/"magic" roundings under TRITON_INTERPRET=1 (its bf16 dots and casts
    are not faithful: TF32 dots, no "cvt"), in a subprocess: the flag is read at import."""
    script = textwrap.dedent(
        """
        import torch
        from tunelab.numerics import accumulate_triton, fidelity_matmul_reference
        from tests.test_numerics_accumulate import assert_same_bits, representable
        cfg = {"BLOCK_M": 32, "BLOCK_N": 32, "GROUP_M": 2, "DOT_TF32": 1}
        for phases, bits_x in ((1, 8), (2, 11), (4, 8)):
            x, w = representable(40, 70, 50, bits_x, seed=phases)
            want = fidelity_matmul_reference(x, w, phases=phases, fp32_dest_acc=False)
            for kwargs in ({}, {"split_in_kernel": False}, {"rounding": "magic"}):
                assert_same_bits(accumulate_triton.bf16_dst_matmul(x, w, phases, config=cfg, **kwargs), want)
            if bits_x == 8:
                assert_same_bits(accumulate_triton.bf16_dst_matmul(x.bfloat16(), w, phases, config=cfg), want)
        """
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    done = subprocess.run([sys.executable, "-c", script], env=env, cwd=root, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
