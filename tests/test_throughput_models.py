"""`tunelab perf predict` answers for every model in tt-transformers' README table on its listed hardware."""

import json
import sys

import pytest

from tunelab.cli import main

# tt-transformers README ("verified to work with the following models"): <org/name> and its Hardware column.
SEED_TABLE = {
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B": ("LoudBox", "QuietBox", "Galaxy"),
    "meta-llama/Llama-3.1-8B": ("n150", "p100", "p150"),
    "meta-llama/Llama-3.1-70B": ("LoudBox", "QuietBox", "Galaxy"),
    "meta-llama/Llama-3.2-1B": ("n150",),
    "meta-llama/Llama-3.2-3B": ("n150",),
    "meta-llama/Llama-3.2-11B-Vision": ("n300",),
    "meta-llama/Llama-3.2-90B-Vision": ("LoudBox", "QuietBox"),
    "mistralai/Mistral-7B-Instruct-v0.3": ("n150",),
    "Qwen/Qwen2.5-7B": ("n300",),
    "Qwen/Qwen2.5-Coder-32B": ("LoudBox", "QuietBox"),
    "Qwen/Qwen2.5-72B": ("LoudBox", "QuietBox"),
    "Qwen/Qwen3-32B": ("LoudBox", "QuietBox"),
}
CASES = [(model, hardware) for model, listed in SEED_TABLE.items() for hardware in listed]


def run(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    """`tunelab ...` in-process through the console entry point: (exit status, stdout, stderr)."""
    monkeypatch.setattr(sys, "argv", ["tunelab", *args])
    with pytest.raises(SystemExit) as done:
        main()
    out = capsys.readouterr()
    return done.value.code or 0, out.out, out.err


@pytest.mark.parametrize(("model", "hardware"), CASES)
@pytest.mark.parametrize("preset", ["performance", "accuracy"])
def test_predict_answers_for_the_seed_table(monkeypatch, capsys, model, hardware, preset):
    status, out, err = run(
        monkeypatch,
        capsys,
        "perf",
        "predict",
        "--model",
        model,
        "--mesh-device",
        hardware,
        "--preset",
        preset,
        "--json",
    )
    assert status == 0, err
    result = json.loads(out)
    assert result["kind"] == "modelled"
    assert 1 < result["tok_s_u"] < 200 and 10 < result["ttft_ms"] < 1000
    assert result["inputs"] == {
        "model": model,
        "device": hardware,
        "preset": preset,
        "config": None,
        "optimizations": None,
        "lm_head": "bfp8",
    }
