"""Time exact bf16-Dst accumulation (the fused kernels) against plain matmuls of the same shapes, side by side.

CPU (numba kernel): SmolLM2-135M MLP shapes, 1024 tokens, vs a plain fp32 torch matmul, with the weights
prepared once as SrcA (as the emulator holds them: their split is made on the first call and reused). Target:
the whole teacher-forced pass in exact mode <= 3x transformers' fp32 forward, i.e. roughly 2-3x per LoFi matmul.
CUDA (Triton kernel): Llama-3.1-8B MLP shapes, 1024 tokens, vs a cuBLAS bf16 matmul; also the fast path
(fp32 phase sum on TF32 tensor cores). --sweep adds Triton tile/rounding variants for tuning.

    python benchmarks/accumulate_speed.py [--device cuda] [--repeats N] [--sweep]
"""

import argparse
from collections.abc import Callable

import torch
from timing import median_seconds

from tunelab.numerics import SrcA, fidelity_matmul, quantize

# (name, M, K, N, phases, weight format): the performance preset's MLP (FF1/FF3 bfp4 LoFi, FF2 bfp8 HiFi2)
CPU_SHAPES = [
    ("FF1/FF3 LoFi bfp4", 1024, 576, 1536, 1, "bfp4"),
    ("FF2 LoFi bfp4", 1024, 1536, 576, 1, "bfp4"),
    ("FF1/FF3 HiFi2 bfp8", 1024, 576, 1536, 2, "bfp8"),
    ("FF2 HiFi2 bfp8", 1024, 1536, 576, 2, "bfp8"),
]
CUDA_SHAPES = [
    ("FF1/FF3 LoFi bfp4", 1024, 4096, 14336, 1, "bfp4"),
    ("FF2 HiFi2 bfp8", 1024, 14336, 4096, 2, "bfp8"),
]
SWEEP = [  # Triton variants: (label, keyword arguments of accumulate_triton.bf16_dst_matmul); larger tiles spill
    ("128x128 w8 s3 cvt", {"rounding": "cvt"}),
    ("128x128 w8 s3 magic", {"rounding": "magic"}),
    ("128x128 w8 s3 tf32 dot", {"config": {"DOT_TF32": 1}}),
    ("128x128 w8 s2", {"config": {"num_stages": 2}}),
    ("128x128 w8 s4", {"config": {"num_stages": 4}}),
    ("128x128 w8 s4 magic", {"rounding": "magic", "config": {"num_stages": 4}}),
    ("128x128 w8 s3 host split", {"split_in_kernel": False}),
    ("64x128 w4 s3", {"config": {"BLOCK_M": 64, "num_warps": 4}}),
    ("64x128 w4 s3 magic", {"rounding": "magic", "config": {"BLOCK_M": 64, "num_warps": 4}}),
    ("64x128 w4 s3 cvt", {"rounding": "cvt", "config": {"BLOCK_M": 64, "num_warps": 4}}),
    ("128x64 w4 s3", {"config": {"BLOCK_N": 64, "num_warps": 4}}),
]


def median_ms(fn: Callable[[], torch.Tensor], device: torch.device, repeats: int) -> float:
    """Median wall time of fn() in ms (see timing.median_seconds)."""
    return 1e3 * median_seconds(fn, device, repeats)


def operands(m: int, k: int, n: int, w_fmt: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16-valued activations and `w_fmt` weights as float32 tensors on `device`."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).bfloat16().float()
    return x.to(device), quantize(torch.randn(k, n, generator=g), w_fmt).to(device)


def header(baseline: str) -> str:
    columns = (f"{baseline:>11s}", f"{'fast':>9s}", f"{'exact':>9s}", f"{'fast/mm':>8s}", f"{'exact/mm':>9s}")
    return f"{'case':20s} {'M x K x N':>17s} " + " ".join(columns)


def row(name: str, shape: tuple[int, int, int], plain: float, fast: float, exact: float) -> str:
    times = f"{plain:9.3f}ms {fast:7.3f}ms {exact:7.3f}ms"
    return f"{name:20s} {'x'.join(map(str, shape)):>17s} {times} {fast / plain:7.2f}x {exact / plain:8.2f}x"


def modes(x: torch.Tensor, w: torch.Tensor | SrcA, phases: int) -> tuple[Callable, Callable]:
    """fidelity_matmul with a bf16 Dst in fast and in exact accumulation."""

    def fast() -> torch.Tensor:
        return fidelity_matmul(x, w, phases=phases, fp32_dest_acc=False)

    def exact() -> torch.Tensor:
        return fidelity_matmul(x, w, phases=phases, fp32_dest_acc=False, accumulation="exact")

    return fast, exact


def run_cpu(repeats: int) -> None:
    device = torch.device("cpu")
    print(f"CPU, {torch.get_num_threads()} threads, median of {repeats}; SrcA weights; exact = numba kernel")
    print(header("fp32 mm"))
    for name, m, k, n, phases, w_fmt in CPU_SHAPES:
        x, w = operands(m, k, n, w_fmt, device)
        fast, exact = modes(x, SrcA(w), phases)
        plain = median_ms(lambda x=x, w=w: x @ w, device, repeats)
        print(
            row(name, (m, k, n), plain, median_ms(fast, device, repeats), median_ms(exact, device, repeats))
        )


def run_cuda(device: torch.device, repeats: int, sweep: bool) -> None:
    from tunelab.numerics import accumulate_triton

    print(f"{torch.cuda.get_device_name(device)}, median of {repeats}; exact = Triton kernel on bf16 tensors")
    print(header("cuBLAS bf16"))
    for name, m, k, n, phases, w_fmt in CUDA_SHAPES:
        x, w = operands(m, k, n, w_fmt, device)
        xb, wb = x.bfloat16(), w.bfloat16()  # exact: the values are bf16
        fast, _ = modes(x, w, phases)  # the fast path on fp32 tensors (TF32 tensor cores)
        _, exact = modes(xb, wb, phases)  # the kernel reads bf16 tensors without a conversion
        plain = median_ms(lambda xb=xb, wb=wb: xb @ wb, device, repeats)
        print(
            row(name, (m, k, n), plain, median_ms(fast, device, repeats), median_ms(exact, device, repeats))
        )
        if sweep:
            default = exact()
            for label, kwargs in SWEEP:

                def variant(xb=xb, wb=wb, p=phases, kwargs=kwargs) -> torch.Tensor:
                    return accumulate_triton.bf16_dst_matmul(xb, wb, p, **kwargs)

                differ = (variant().view(torch.int32) != default.view(torch.int32)).double().mean().item()
                ms = median_ms(variant, device, repeats)
                print(
                    f"    {label:22s} {ms:7.3f}ms {ms / plain:6.2f}x  (differs from default in {differ:.1e})"
                )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sweep", action="store_true", help="CUDA: also time Triton tile/rounding variants")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda":
        run_cuda(device, args.repeats, args.sweep)
    else:
        run_cpu(args.repeats)


if __name__ == "__main__":
    main()
