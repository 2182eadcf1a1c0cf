"""load_model on tiny random-weight checkpoints of every architecture, HF and Meta format, and the cache."""

import base64
import json
import os
import warnings
import zlib

import pytest
import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    AutoModelForCausalLM,
    LlamaConfig,
    MistralConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen3Config,
)
from transformers.convert_slow_tokenizer import bytes_to_unicode

from tunelab.errors import TunelabError
from tunelab.models import CacheWarning, UnsupportedArchitecture, load_model
from tunelab.models import loader as loader_module

DIM, HEADS, KV_HEADS, HEAD_DIM, HIDDEN, VOCAB, LAYERS = 64, 4, 2, 16, 96, 300, 3
COMMON = dict(
    hidden_size=DIM,
    intermediate_size=HIDDEN,
    num_hidden_layers=LAYERS,
    num_attention_heads=HEADS,
    num_key_value_heads=KV_HEADS,
    vocab_size=VOCAB,
    max_position_embeddings=256,
    rms_norm_eps=1e-5,
    bos_token_id=1,
    eos_token_id=2,
    pad_token_id=0,
)
ARCHITECTURES = {
    "LlamaForCausalLM": (LlamaConfig, {}),
    "MistralForCausalLM": (MistralConfig, {"rope_theta": 1e6}),
    "Qwen2ForCausalLM": (Qwen2Config, {"tie_word_embeddings": True}),
    "Qwen3ForCausalLM": (Qwen3Config, {"head_dim": HEAD_DIM, "tie_word_embeddings": True}),
    "Phi3ForCausalLM": (Phi3Config, {}),
}


def meta_rows(n_heads, d=HEAD_DIM):
    """Meta row 2i <- HF row i, Meta row 2i+1 <- HF row i + d/2, per head (the documented map, written out)."""
    return [h * d + (j // 2 if j % 2 == 0 else j // 2 + d // 2) for h in range(n_heads) for j in range(d)]


def tiny_tokenizer():
    """A byte-level BPE (like Llama 3 / Qwen) over the 256 byte symbols plus a few merges."""
    chars = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "c"), ("a", "t"), ("Ġc", "at"), ("i", "n")]
    vocab = {c: i for i, c in enumerate(chars)}
    for a, b in merges:
        vocab[a + b] = len(vocab)
    backend = Tokenizer(models.BPE(vocab, merges))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )


TEXT = " the cat in the hat"


def tiny_model(architecture, **overrides):
    config_class, extra = ARCHITECTURES[architecture]
    torch.manual_seed(zlib.crc32(architecture.encode()))
    model = AutoModelForCausalLM.from_config(
        config_class(**(COMMON | extra | overrides)), dtype=torch.float32
    )
    with torch.no_grad():
        for param in model.parameters():  # norms and biases too, so that misplacing them shows
            param.normal_(0.0, 0.5)
    return model.eval()


def save_tiny(model, directory, **kwargs):
    model.save_pretrained(directory, **kwargs)
    tiny_tokenizer().save_pretrained(directory)
    return directory


IDS = torch.tensor([[5, 17, 42, 8, 99, 3, 250, 7]])


def logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.mark.parametrize("architecture", list(ARCHITECTURES))
def test_canonical_weights_match_hf(architecture, tmp_path):
    original = tiny_model(architecture)
    loaded = load_model(str(save_tiny(original, tmp_path / architecture)))
    config, w = loaded.config, loaded.weights
    assert (config.name, config.architecture, config.n_layers) == (architecture, architecture, LAYERS)
    assert (config.dim, config.n_heads, config.n_kv_heads, config.head_dim, config.hidden_dim) == (
        DIM, HEADS, KV_HEADS, HEAD_DIM, HIDDEN,
    )  # fmt: skip
    sd = original.state_dict()
    q_dim, kv_dim = HEADS * HEAD_DIM, KV_HEADS * HEAD_DIM
    assert len(w.layers) == LAYERS
    for i, layer in enumerate(w.layers):
        p = f"model.layers.{i}."
        if architecture == "Phi3ForCausalLM":
            q, k, v = sd[p + "self_attn.qkv_proj.weight"].split([q_dim, kv_dim, kv_dim])
            gate, up = sd[p + "mlp.gate_up_proj.weight"].split([HIDDEN, HIDDEN])
        else:
            q, k, v = (sd[p + f"self_attn.{n}_proj.weight"] for n in "qkv")
            gate, up = sd[p + "mlp.gate_proj.weight"], sd[p + "mlp.up_proj.weight"]
        assert layer.wqkv.shape == (DIM, q_dim + 2 * kv_dim)
        assert torch.equal(layer.wqkv[:, :q_dim], q.T[:, meta_rows(HEADS)])
        assert torch.equal(layer.wqkv[:, q_dim : q_dim + kv_dim], k.T[:, meta_rows(KV_HEADS)])
        assert torch.equal(layer.wqkv[:, q_dim + kv_dim :], v.T)
        assert torch.equal(layer.wo, sd[p + "self_attn.o_proj.weight"].T)
        assert torch.equal(layer.w1, gate.T) and torch.equal(layer.w3, up.T)
        assert torch.equal(layer.w2, sd[p + "mlp.down_proj.weight"].T)
        assert torch.equal(layer.attention_norm, sd[p + "input_layernorm.weight"])
        assert torch.equal(layer.ffn_norm, sd[p + "post_attention_layernorm.weight"])
        if architecture == "Qwen2ForCausalLM":
            bq, bk, bv = (sd[p + f"self_attn.{n}_proj.bias"] for n in "qkv")
            assert torch.equal(layer.bqkv, torch.cat([bq[meta_rows(HEADS)], bk[meta_rows(KV_HEADS)], bv]))
        else:
            assert layer.bqkv is None
        if architecture == "Qwen3ForCausalLM":
            assert torch.equal(layer.q_norm, sd[p + "self_attn.q_norm.weight"][meta_rows(1)])
            assert torch.equal(layer.k_norm, sd[p + "self_attn.k_norm.weight"][meta_rows(1)])
        else:
            assert layer.q_norm is None and layer.k_norm is None
    assert torch.equal(w.embedding, sd["model.embed_tokens.weight"])
    assert torch.equal(w.norm, sd["model.norm.weight"])
    assert torch.equal(w.lm_head, sd["lm_head.weight"].T)
    assert all(t.dtype == torch.float32 for t in (w.embedding, w.lm_head, w.layers[0].wqkv, w.layers[0].w2))
    # the canonical matrices are views of the reference model's tensors (no second copy)
    hf_layer = loaded.hf_model.model.layers[0]
    assert w.layers[0].wo.data_ptr() == hf_layer.self_attn.o_proj.weight.data_ptr()
    assert w.layers[0].w2.data_ptr() == hf_layer.mlp.down_proj.weight.data_ptr()
    if original.config.tie_word_embeddings:
        assert w.lm_head.data_ptr() == w.embedding.data_ptr()
    # the reference model is the original, in fp32 eval mode
    assert loaded.hf_model.dtype == torch.float32 and not loaded.hf_model.training
    torch.testing.assert_close(logits(loaded.hf_model), logits(original), rtol=0, atol=0)
    expected = tiny_tokenizer()(TEXT)["input_ids"]
    assert loaded.tokenizer(TEXT)["input_ids"] == expected and len(expected) < len(TEXT)  # merges applied


def test_n_layers_truncates_and_fingerprint_tracks_content(tmp_path):
    original = tiny_model("Qwen2ForCausalLM")
    directory = save_tiny(original, tmp_path / "qwen2")
    full = load_model(str(directory))
    again = load_model(str(directory))
    assert again.fingerprint == full.fingerprint

    two = load_model(str(directory), n_layers=2)
    assert two.config.n_layers == two.hf_config.num_hidden_layers == len(two.hf_model.model.layers) == 2
    assert len(two.weights.layers) == 2 and len(two.hf_config.layer_types) == 2
    assert torch.equal(two.weights.layers[1].wqkv, full.weights.layers[1].wqkv)
    assert two.fingerprint != full.fingerprint
    del original.model.layers[2]
    original.config.num_hidden_layers = 2
    torch.testing.assert_close(logits(two.hf_model), logits(original), rtol=0, atol=0)

    with pytest.raises(TunelabError, match="n_layers=4 but the model has 3 layers"):
        load_model(str(directory), n_layers=4)
    with pytest.raises(TunelabError, match="at least 1"):
        load_model(str(directory), n_layers=0)

    # one weight element changed -> another fingerprint
    path = directory / "model.safetensors"
    tensors = load_file(path)
    tensors["model.layers.2.mlp.down_proj.weight"][3, 5] += 1e-3
    save_file(tensors, path, metadata={"format": "pt"})
    assert load_model(str(directory)).fingerprint != full.fingerprint
    # ... and so does a tokenizer vocabulary change
    tensors["model.layers.2.mlp.down_proj.weight"][3, 5] -= 1e-3
    save_file(tensors, path, metadata={"format": "pt"})
    assert load_model(str(directory)).fingerprint == full.fingerprint
    tokenizer_json = json.loads((directory / "tokenizer.json").read_text())
    vocab = tokenizer_json["model"]["vocab"]
    vocab["0"], vocab["1"] = vocab["1"], vocab["0"]
    (directory / "tokenizer.json").write_text(json.dumps(tokenizer_json))
    assert load_model(str(directory)).fingerprint != full.fingerprint


def test_sharded_safetensors(tmp_path):
    original = tiny_model("LlamaForCausalLM")
    directory = save_tiny(original, tmp_path / "sharded", max_shard_size="40KB")
    assert len(list(directory.glob("model-*.safetensors"))) > 1
    assert (directory / "model.safetensors.index.json").is_file()
    loaded = load_model(str(directory))
    unsharded = load_model(str(save_tiny(original, tmp_path / "whole")))
    assert loaded.fingerprint == unsharded.fingerprint
    torch.testing.assert_close(logits(loaded.hf_model), logits(original), rtol=0, atol=0)


def test_hf_model_env_and_unsupported_features(tmp_path, monkeypatch):
    directory = save_tiny(tiny_model("MistralForCausalLM"), tmp_path / "Mistral-tiny")
    monkeypatch.setenv("HF_MODEL", str(directory))
    monkeypatch.setenv("LLAMA_DIR", str(tmp_path / "ignored-when-HF_MODEL-is-set"))
    loaded = load_model()
    assert loaded.config.name == "Mistral-tiny" and loaded.config.rope_theta == 1e6

    gpt2 = tmp_path / "gpt2"  # config only: the loader must refuse before looking for weights
    gpt2.mkdir()
    (gpt2 / "config.json").write_text(
        json.dumps({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"})
    )
    with pytest.raises(UnsupportedArchitecture) as info:
        load_model(str(gpt2))
    message = str(info.value)
    assert "\n" not in message and "GPT2LMHeadModel" in message
    assert all(
        a in message for a in ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM", "Phi3ForCausalLM"]
    )

    config = json.loads((directory / "config.json").read_text())
    config["rope_parameters"] = {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0}
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnsupportedArchitecture, match="unsupported RoPE scaling dynamic"):
        load_model(str(directory))


def test_extra_parameters_are_refused_not_dropped(tmp_path):
    directory = save_tiny(tiny_model("LlamaForCausalLM", attention_bias=True), tmp_path / "biased")
    with pytest.raises(TunelabError, match=r"has no place in tunelab's LlamaForCausalLM layout"):
        load_model(str(directory))


# ------------------------------------------------------------------------------------------------------------------
# Meta checkpoints

MERGES = [b"th", b"he", b" t", b"the", b" the", b"in", b"an", b"and", b" a", b"at", b"ca", b"cat", b" cat"]
SPECIAL = 20
META_VOCAB = 256 + len(MERGES) + SPECIAL
META_PARAMS = {
    "dim": DIM, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": KV_HEADS, "vocab_size": META_VOCAB,
    "multiple_of": 32, "norm_eps": 1e-5, "rope_theta": 500000.0, "use_scaled_rope": True,
}  # fmt: skip


def llama3_model(tied):
    rope = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
            "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}  # fmt: skip
    return tiny_model(
        "LlamaForCausalLM", vocab_size=META_VOCAB, intermediate_size=192, rope_parameters=rope,
        max_position_embeddings=131072, tie_word_embeddings=tied,
    )  # fmt: skip


def write_meta(model, directory, shards=1):
    """A Meta-format checkpoint of a HF Llama: Meta key names, Q/K rows in interleaved-pair order."""
    directory.mkdir()
    sd, meta = model.state_dict(), {}
    meta["tok_embeddings.weight"] = sd["model.embed_tokens.weight"]
    meta["norm.weight"] = sd["model.norm.weight"]
    if not model.config.tie_word_embeddings:
        meta["output.weight"] = sd["lm_head.weight"]
    for i in range(LAYERS):
        p, m = f"model.layers.{i}.", f"layers.{i}."
        meta[m + "attention.wq.weight"] = sd[p + "self_attn.q_proj.weight"][meta_rows(HEADS)]
        meta[m + "attention.wk.weight"] = sd[p + "self_attn.k_proj.weight"][meta_rows(KV_HEADS)]
        meta[m + "attention.wv.weight"] = sd[p + "self_attn.v_proj.weight"]
        meta[m + "attention.wo.weight"] = sd[p + "self_attn.o_proj.weight"]
        meta[m + "feed_forward.w1.weight"] = sd[p + "mlp.gate_proj.weight"]
        meta[m + "feed_forward.w2.weight"] = sd[p + "mlp.down_proj.weight"]
        meta[m + "feed_forward.w3.weight"] = sd[p + "mlp.up_proj.weight"]
        meta[m + "attention_norm.weight"] = sd[p + "input_layernorm.weight"]
        meta[m + "ffn_norm.weight"] = sd[p + "post_attention_layernorm.weight"]
    meta = {k: v.to(torch.bfloat16) for k, v in meta.items()}
    for s in range(shards):  # fairscale model parallelism: column-parallel rows, row-parallel columns
        shard = {}
        for key, t in meta.items():
            if t.dim() == 1:
                shard[key] = t.clone()
            elif key.endswith(("attention.wo.weight", "feed_forward.w2.weight")):
                shard[key] = t.chunk(shards, dim=1)[s].clone()
            else:  # wq wk wv w1 w3 output, and Llama 3's vocab-parallel embedding
                shard[key] = t.chunk(shards, dim=0)[s].clone()
        torch.save(shard, directory / f"consolidated.{s:02d}.pth")
    (directory / "params.json").write_text(json.dumps(META_PARAMS))
    ranks = [bytes([b]) for b in range(256)] + MERGES
    lines = [base64.b64encode(tok).decode() + f" {rank}" for rank, tok in enumerate(ranks)]
    (directory / "tokenizer.model").write_text("\n".join(lines) + "\n")
    return directory


def bf16_copy(model):
    """The HF model with the bf16-rounded weights a Meta checkpoint holds."""
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(param.to(torch.bfloat16).float())
    return model


@pytest.mark.parametrize(("shards", "tied"), [(1, False), (2, True)])
def test_meta_checkpoint_matches_hf(tmp_path, shards, tied):
    original = bf16_copy(llama3_model(tied))
    directory = write_meta(original, tmp_path / "Llama3.1-tiny", shards=shards)
    loaded = load_model(str(directory))
    cfg = loaded.hf_config
    assert (
        cfg.num_key_value_heads == KV_HEADS and cfg.intermediate_size == 192 and cfg.vocab_size == META_VOCAB
    )
    assert cfg.tie_word_embeddings is tied
    rope = cfg.rope_parameters
    assert (rope["rope_type"], rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]) == (
        "llama3",
        8.0,
        1.0,
        4.0,
    )
    assert (rope["rope_theta"], rope["original_max_position_embeddings"]) == (500000.0, 8192)
    assert loaded.config.name == "Llama3.1-tiny" and loaded.config.rope_theta == 500000.0
    ids = torch.tensor([[3, 70, 200, 12, 255, 260, 9]])
    torch.testing.assert_close(logits(loaded.hf_model, ids), logits(original, ids), rtol=1e-5, atol=1e-5)
    wq = loaded.weights.layers[1].wqkv[:, : HEADS * HEAD_DIM]
    meta_wq = torch.cat(
        [torch.load(p)["layers.1.attention.wq.weight"] for p in sorted(directory.glob("*.pth"))]
    )
    assert torch.equal(wq, meta_wq.float().T)  # canonical Q is Meta's wq, transposed

    tokenizer = loaded.tokenizer
    bos = 256 + len(MERGES)
    assert tokenizer.bos_token_id == bos and tokenizer.convert_ids_to_tokens(bos) == "<|begin_of_text|>"
    ids = tokenizer("the cat and a hat")["input_ids"]
    assert ids[:3] == [bos, 256 + MERGES.index(b"the"), 256 + MERGES.index(b" cat")]
    assert tokenizer.decode(ids, skip_special_tokens=True) == "the cat and a hat"


def test_meta_cache_hit_corruption_and_interruption(tmp_path, monkeypatch, cache_dir):
    directory = write_meta(bf16_copy(llama3_model(False)), tmp_path / "meta")
    first = load_model(str(directory))
    (entry,) = (cache_dir / "models").iterdir()
    assert {"config.json", "model.safetensors", "tokenizer.json", "tunelab_cache.json"} <= set(
        os.listdir(entry)
    )
    assert load_file(entry / "model.safetensors")["model.embed_tokens.weight"].dtype == torch.bfloat16

    def no_build(*args):
        raise AssertionError("cache miss: the checkpoint was converted again")

    with monkeypatch.context() as m:
        m.setattr(loader_module, "_build_meta", no_build)
        hit = load_model(str(directory))
    assert hit.fingerprint == first.fingerprint

    # a truncated file is detected, warned about and rebuilt
    data = (entry / "model.safetensors").read_bytes()
    (entry / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.warns(CacheWarning, match="model.safetensors has"):
        rebuilt = load_model(str(directory))
    assert rebuilt.fingerprint == first.fingerprint
    # so is a same-size change of content
    flipped = bytearray((entry / "model.safetensors").read_bytes())
    flipped[-100] ^= 0xFF
    (entry / "model.safetensors").write_bytes(bytes(flipped))
    with pytest.warns(CacheWarning, match="does not match its recorded SHA-256"):
        assert load_model(str(directory)).fingerprint == first.fingerprint

    # an interrupted conversion leaves no entry and no temporary directory behind
    def interrupted(src, out):
        (out / "model.safetensors").write_bytes(b"partial")
        raise KeyboardInterrupt

    os.utime(directory / "params.json")  # a changed source: a new key
    with monkeypatch.context() as m:
        m.setattr(loader_module, "_build_meta", interrupted)
        with pytest.raises(KeyboardInterrupt):
            load_model(str(directory))
    assert os.listdir(cache_dir / "models") == [entry.name]
    with warnings.catch_warnings():
        warnings.simplefilter("error", CacheWarning)
        assert load_model(str(directory)).fingerprint == first.fingerprint
    # the new entry replaced the stale one of the same source
    (new_entry,) = (cache_dir / "models").iterdir()
    assert new_entry.name != entry.name


def test_llama_dir_env(tmp_path, monkeypatch):
    directory = write_meta(bf16_copy(llama3_model(True)), tmp_path / "Llama3.2-tiny")
    monkeypatch.delenv("HF_MODEL", raising=False)
    monkeypatch.setenv("LLAMA_DIR", str(directory))
    loaded = load_model(n_layers=1)
    assert loaded.config.name == "Llama3.2-tiny" and len(loaded.weights.layers) == 1
    assert (
        loaded.hf_config.rope_parameters["factor"] == 32.0
    )  # Llama 3.2 uses factor 32 (HF's converter agrees)
    (directory / "tokenizer.model").write_bytes(b"\x0a\x0b not tiktoken")
    os.utime(directory / "params.json")
    with pytest.raises(TunelabError, match="SentencePiece"):
        load_model()
