"""Emulator speed and memory, measured side by side in one run.

CPU: SmolLM2-135M teacher-forced 512 + 511 (performance preset, fast and exact accumulation) against a plain
transformers fp32 forward of the same 1024 tokens. The runs take turns, round after round, and each ratio is the
median over rounds of the per-round ratio, so a slow phase of a shared machine weighs on both sides alike. CUDA (when present): a random-weight Llama-3.1-8B-shaped model,
the same protocol, against transformers' bf16 forward.

    python benchmarks/emulator_speed.py [--skip-cpu] [--skip-cuda] [--layers N] [--repeats R]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from tunelab.backends.emulated import EmulatedModel, EmulatorOptions
from tunelab.model_presets import model_preset
from tunelab.models import ModelConfig, hf_to_canonical

WINDOW, PREFILL = 1024, 512
TARGETS = {"cpu fast": 1.5, "cpu exact": 3.0, "cuda exact": 3.0}
MODEL_CONFIGS = Path(__file__).resolve().parents[1] / "tunelab" / "models" / "data" / "model_configs.json"


def report(label: str, seconds: float, ratio: float) -> None:
    target = TARGETS.get(label)
    verdict = "" if target is None else f"  (target <= {target}: {'met' if ratio <= target else 'NOT met'})"
    print(f"  {label:<12} {seconds * 1000:10.1f} ms  {ratio:6.2f} x plain{verdict}")


def side_by_side(
    runs: dict[str, Callable[[], object]], device: torch.device, repeats: int
) -> dict[str, list]:
    """Seconds of each run per round, the runs taking turns within a round (after one warm-up round), so that
    a slow phase of a shared machine hits them alike."""

    def timed(fn: Callable[[], object]) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    for fn in runs.values():
        fn()
    times: dict[str, list] = {label: [] for label in runs}
    for _ in range(repeats):
        for label, fn in runs.items():
            times[label].append(timed(fn))
    return times


def emulated_runs(
    config: ModelConfig, weights, rotary_emb: torch.nn.Module, device: torch.device, tokens
) -> dict[str, Callable[[], object]]:
    """The performance preset's teacher-forced window, per accumulation mode."""
    precision = model_preset("performance", config.name, config.n_layers)
    # Room for every quantised weight, so the timings measure forwards, not re-quantisation after evictions;
    # both modes share one weight cache, as one process evaluating both would.
    fast = EmulatedModel(
        config, weights, rotary_emb, EmulatorOptions("fast"), device, cache_budget_bytes=96 * 1024**3
    )
    runs = {}
    for emulator in (fast, fast.with_options(EmulatorOptions("exact"))):
        label = emulator.options.accumulation
        runs[label] = lambda e=emulator: e.teacher_forced(tokens[: WINDOW - 1], PREFILL, precision)
    return runs


def print_results(times: dict[str, list], device_label: str) -> None:
    """Median time per run, and the median over rounds of each emulated run's ratio to the plain one."""
    plain = times.pop("plain")
    print(f"  {'plain':<12} {statistics.median(plain) * 1000:10.1f} ms")
    for label, seconds in times.items():
        ratios = [s / p for s, p in zip(seconds, plain, strict=True)]
        report(f"{device_label} {label}", statistics.median(seconds), statistics.median(ratios))


def print_profile(fn: Callable[[], object], device: torch.device) -> None:
    """The ops that take the most time in one call of `fn` (device time on CUDA, CPU time otherwise)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    sort_by = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort_by, row_limit=15, max_name_column_width=60))


def cpu_benchmark(layers: int | None, repeats: int, profile: bool) -> None:
    from tunelab.models import load_model

    loaded = load_model("smollm2-135m", n_layers=layers)
    tokens = torch.randint(0, loaded.config.vocab_size, (WINDOW,), generator=torch.Generator().manual_seed(0))
    device = torch.device("cpu")
    emulated = emulated_runs(loaded.config, loaded.weights, loaded.hf_model.model.rotary_emb, device, tokens)
    with torch.no_grad():
        times = side_by_side({"plain": lambda: loaded.hf_model(tokens[None]), **emulated}, device, repeats)
    print(f"CPU ({torch.get_num_threads()} threads), {loaded.config.name}, {loaded.config.n_layers} layers")
    print("  plain = transformers fp32 forward")
    print_results(times, "cpu")
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    print(f"  peak RSS {peak_gb:.2f} GB (target <= 3 GB: {'met' if peak_gb <= 3 else 'NOT met'})")
    if profile:
        for label, fn in emulated.items():
            print(f"profile, {label}:")
            print_profile(fn, device)


def cuda_benchmark(layers: int | None, repeats: int, profile: bool) -> None:
    from transformers import LlamaConfig, LlamaForCausalLM

    facts = json.loads(MODEL_CONFIGS.read_text())["meta-llama/Llama-3.1-8B"]
    fields = {
        k: v for k, v in facts.items() if not k.startswith("_") and k not in ("torch_dtype", "architectures")
    }
    if layers:
        fields["num_hidden_layers"] = layers
    hf_config = LlamaConfig(**fields, architectures=["LlamaForCausalLM"])
    device = torch.device("cuda")
    torch.manual_seed(0)
    with torch.device(device):
        hf = LlamaForCausalLM(hf_config).to(torch.bfloat16).eval()
    config = ModelConfig.from_hf(hf_config, "Llama-3.1-8B-Instruct")
    weights = hf_to_canonical(hf.state_dict(), config)
    tokens = torch.randint(0, config.vocab_size, (WINDOW,), device=device)
    emulated = emulated_runs(config, weights, hf.model.rotary_emb, device, tokens.cpu())
    with torch.no_grad():
        times = side_by_side({"plain": lambda: hf(tokens[None]), **emulated}, device, repeats)
    print(
        f"CUDA ({torch.cuda.get_device_name()}), Llama-3.1-8B shape, {config.n_layers} layers, random weights"
    )
    print("  plain = transformers bf16 forward")
    print_results(times, "cuda")
    print(f"  peak GPU memory {torch.cuda.max_memory_allocated() / 1024**3:.1f} GB")
    if profile:
        for label, fn in emulated.items():
            print(f"profile, {label}:")
            print_profile(fn, device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-cpu", action="store_true")
    parser.add_argument("--skip-cuda", action="store_true")
    parser.add_argument(
        "--layers", type=int, default=None, help="keep only the first N decoders (quick checks)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="rounds of plain / fast / exact runs")
    parser.add_argument(
        "--profile", action="store_true", help="also print the costliest ops of one pass per mode"
    )
    args = parser.parse_args()
    if not args.skip_cpu:
        cpu_benchmark(args.layers, args.repeats, args.profile)
    if not args.skip_cuda and torch.cuda.is_available():
        cuda_benchmark(args.layers, args.repeats, args.profile)


if __name__ == "__main__":
    main()
