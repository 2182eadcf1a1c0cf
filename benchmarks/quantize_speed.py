"""Time `quantize` against a plain bf16 cast of the same matrix (default 4096 x 14336 fp32), side by side.

Target: quantize(x, "bfp4") in under 10x the time of `x.to(torch.bfloat16)`.

    python benchmarks/quantize_speed.py [--device cuda] [--rows R --cols C] [--repeats N]
"""

import argparse
from collections.abc import Callable

import torch
from timing import median_seconds

from tunelab.numerics import quantize
from tunelab.numerics.blockfloat import MANTISSA_BITS, from_blocks, quantize_bfp_reference, to_blocks

TARGET_RATIO = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--cols", type=int, default=14336)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = torch.device(args.device)
    x = torch.randn(args.rows, args.cols, generator=torch.Generator().manual_seed(0)).to(device)

    cases: dict[str, Callable[[], torch.Tensor]] = {
        "cast .to(bfloat16)": lambda: x.to(torch.bfloat16),
        'quantize "bfp4"': lambda: quantize(x, "bfp4"),
        'quantize "bfp8"': lambda: quantize(x, "bfp8"),
        'quantize "bf16"': lambda: quantize(x, "bf16"),
        "reference bfp4": lambda: from_blocks(
            quantize_bfp_reference(to_blocks(x), MANTISSA_BITS["bfp4"]), x.shape
        ),
    }
    print(
        f"{args.rows} x {args.cols} fp32 on {device} ({torch.get_num_threads()} CPU threads), median of {args.repeats}"
    )
    # The reference is ~100x slower than the cast: one timed run is enough to place it.
    times = {
        name: median_seconds(fn, device, 1 if "reference" in name else args.repeats)
        for name, fn in cases.items()
    }
    cast = times["cast .to(bfloat16)"]
    for name, seconds in times.items():
        print(f"  {name:20s} {seconds * 1e3:9.1f} ms   {seconds / cast:6.2f} x cast")
    ratio = times['quantize "bfp4"'] / cast
    verdict = "met" if ratio < TARGET_RATIO else "NOT met"
    print(f"target: bfp4 < {TARGET_RATIO:g} x cast -> {ratio:.2f} x, {verdict}")


if __name__ == "__main__":
    main()
