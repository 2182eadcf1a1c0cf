"""Time the device packer model (`pack_on_device`) and host bf16 rounding: torch reference vs numba CPU kernels,
side by side, against a plain bf16 cast of the same matrix (default 1024 x 1536 fp32, an activation's size).

Target: each fast pack within 3x the time of `x.to(torch.bfloat16)`. torch's cast uses all its threads and the
numba kernels one (see `packing_kernels`), so the cast is also timed on one thread; on a busy machine torch's
multi-threaded times inflate and that column is the stable comparison. The first call of each kernel (JIT
compile, or a load from numba's on-disk cache when one exists) is timed separately.

    python benchmarks/packing_speed.py [--rows R --cols C] [--repeats N]
"""

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from tunelab.numerics import pack_on_device, quantize
from tunelab.numerics.bf16 import round_bf16_reference
from tunelab.numerics.device_packing import pack_on_device_reference

FORMATS = ("bf16", "bfp8", "bfp4")
TARGET_RATIO = 3.0


def seconds(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def median_seconds(fn: Callable[[], torch.Tensor], repeats: int) -> float:
    """Median wall time of fn() over `repeats` runs after one warm-up."""
    fn()
    return statistics.median(seconds(fn) for _ in range(repeats))


def cast_on_one_thread(x: torch.Tensor, repeats: int) -> float:
    """Median time of the bf16 cast with torch limited to one thread (the numba kernels' budget)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return median_seconds(lambda: x.to(torch.bfloat16), repeats)
    finally:
        torch.set_num_threads(threads)


def first_calls(x: torch.Tensor) -> dict[str, float]:
    """Time each kernel's first call (bfp8 and bfp4 share one kernel)."""
    return {
        "pack bf16": seconds(lambda: pack_on_device(x, "bf16")),
        "pack bfp8 / bfp4": seconds(lambda: pack_on_device(x, "bfp8")),
        "quantize bf16": seconds(lambda: quantize(x, "bf16")),
    }


def reference_and_fast(x: torch.Tensor, repeats: int) -> dict[str, tuple[float, float]]:
    """Median seconds of (torch reference, numba path) for each pack format and for quantize(x, "bf16")."""
    cases = {
        f"pack {fmt}": (
            lambda fmt=fmt: pack_on_device_reference(x, fmt),
            lambda fmt=fmt: pack_on_device(x, fmt),
        )
        for fmt in FORMATS
    }
    cases["quantize bf16"] = (lambda: round_bf16_reference(x), lambda: quantize(x, "bf16"))
    return {
        name: (median_seconds(reference, max(3, repeats // 4)), median_seconds(fast, repeats))
        for name, (reference, fast) in cases.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024)
    parser.add_argument("--cols", type=int, default=1536)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    x = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(0))

    print(f"{args.rows} x {args.cols} fp32 on cpu, torch {torch.get_num_threads()} threads")
    for name, first in first_calls(x).items():
        print(f"  first call {name:17s} {first:7.3f} s")
    cast = median_seconds(lambda: x.to(torch.bfloat16), args.repeats)
    cast_1 = cast_on_one_thread(x, args.repeats)
    print(f"median of {args.repeats}; cast .to(bfloat16) {cast * 1e3:.3f} ms, 1 thread {cast_1 * 1e3:.3f} ms")
    print(
        f"  {'':14s} {'reference ms':>12s} {'fast ms':>8s} {'speed-up':>9s} {'/ cast':>7s} {'/ 1-thr cast':>12s}"
    )
    times = reference_and_fast(x, args.repeats)
    for name, (ref, fast) in times.items():
        print(f"  {name:14s} {ref * 1e3:12.3f} {fast * 1e3:8.3f} {ref / fast:8.1f}x", end="")
        print(f" {fast / cast:6.2f}x {fast / cast_1:11.2f}x")
    worst = max((name for name in times if name.startswith("pack")), key=lambda name: times[name][1])
    ratio = times[worst][1] / cast
    verdict = "met" if ratio < TARGET_RATIO else "NOT met"
    print(f"target: every pack < {TARGET_RATIO:g} x cast -> worst {worst} {ratio:.2f} x, {verdict}")


if __name__ == "__main__":
    main()
