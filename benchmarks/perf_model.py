"""Leave-one-model-out cross-validation of the performance model on tt-transformers' PERF.md numbers.

Each model's rows are predicted by a fit on the other models' rows. Targets (decode tok/s/user): median absolute
error <= 5%, max <= 15%; the ordering bfp4 MLP > bfp8 MLP > bf16 MLP (FF1_FF3, the group tt-transformers' presets
vary) for Llama-3.1-8B on N150.

    python benchmarks/perf_model.py [--data CSV]
"""

import argparse
from pathlib import Path

from tunelab.models.shapes import model_shape
from tunelab.perf.calibration import cross_validate, fit, load_calibration, summary
from tunelab.perf.devices import device
from tunelab.perf.throughput import predict
from tunelab.precision import DecoderPrecision, ModelPrecision, Precision

TARGET_MEDIAN, TARGET_MAX = 5.0, 15.0


def mlp_ordering() -> dict[str, float]:
    """Modelled tok/s/user of Llama-3.1-8B on N150 with FF1_FF3 in each format (bf16 FF1_FF3 + FF2 does not fit)."""
    model, n150 = model_shape("meta-llama/Llama-3.1-8B"), device("N150")
    speeds = {}
    for fmt in (Precision.BFP4, Precision.BFP8, Precision.BF16):
        decoder = DecoderPrecision(ff1_ff3=fmt)
        speeds[fmt.value] = predict(model, ModelPrecision.uniform(decoder, model.n_layers), n150).tok_s_u
    return speeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, help="calibration CSV (default: the packaged PERF.md rows)")
    args = parser.parse_args()
    rows = load_calibration(args.data)
    held_out = cross_validate(rows)
    print(
        f"{'model':14s} {'device':6s} {'mode':11s} {'metric':8s} {'measured':>9s} {'predicted':>9s} {'err%':>6s}"
    )
    for e in held_out:
        print(
            f"{e.model:14s} {e.device:6s} {e.mode:11s} {e.metric:8s} {e.measured:9.1f} {e.predicted:9.1f} "
            f"{e.pct:+6.1f}"
        )
    print()
    for label, found in (("in-sample fit", fit(rows).errors), ("leave-one-model-out", held_out)):
        for metric, err in summary(found).items():
            print(
                f"{label:20s} {metric:8s} median {err['median_abs_pct']:5.2f}%  max {err['max_abs_pct']:5.2f}%"
                f"  ({err['rows']} rows)"
            )
    decode = summary(held_out)["tok_s_u"]
    met = decode["median_abs_pct"] <= TARGET_MEDIAN and decode["max_abs_pct"] <= TARGET_MAX
    print(
        f"target (decode, leave-one-model-out): median <= {TARGET_MEDIAN}%, max <= {TARGET_MAX}%: "
        f"{'met' if met else 'NOT met'}"
    )
    speeds = mlp_ordering()
    ordered = speeds["bfp4"] > speeds["bfp8"] > speeds["bf16"]
    listing = ", ".join(f"{k} {v:.1f}" for k, v in speeds.items())
    print(f"Llama-3.1-8B N150 MLP tok/s/user: {listing}: ordering {'holds' if ordered else 'VIOLATED'}")


if __name__ == "__main__":
    main()
