"""A tiny random model's search set-up (real loader, reference, emulator, SQLite), shared by the search tests."""

from __future__ import annotations

from pathlib import Path

import tiny_lm

from tunelab.evaluator import EvaluationSettings, emulated_evaluator

WINDOW = {"windows": 2, "window_len": 64, "prefill_len": 32}


def settings(model_dir: Path, **changes) -> EvaluationSettings:
    return EvaluationSettings(model=str(model_dir), mesh_device="N150", **{**WINDOW, **changes})


def setup(root: Path):
    """(model dir, settings, evaluator, reference dir) for the tiny Llama under `root`."""
    model_dir = tiny_lm.save(root / "tiny-llama")
    refs = root / "refs"
    s = settings(model_dir)
    evaluator, _ = emulated_evaluator(s, reference_dir=refs)
    return model_dir, s, evaluator, refs
