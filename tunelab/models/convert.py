"""Checkpoint conversions: a HF state dict into the canonical `ModelWeights`, a Meta checkpoint into HF Llama.

The one layout subtlety is the RoPE order of the Q/K projections, handled by `reverse_permute` (HF -> Meta) and
`permute` (Meta -> HF); see `reverse_permute` for the exact index map.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any

import torch

from tunelab.errors import TunelabError
from tunelab.models.config import ModelConfig
from tunelab.models.weights import LayerWeights, ModelWeights

__all__ = [
    "hf_to_canonical",
    "meta_checkpoint_to_hf",
    "meta_tokenizer",
    "permute",
    "reverse_permute",
    "reverse_permute_1d",
]


def reverse_permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """HF -> Meta RoPE order of a Q or K projection's output rows ([n_heads * head_dim, in], nn.Linear layout).

    HF rotates the two halves of each head (`rotate_half`: element i pairs with i + d/2); Meta and tt-transformers
    rotate interleaved pairs (2i, 2i+1). Within every head of size d the rows are reordered so that
    Meta row 2i <- HF row i and Meta row 2i+1 <- HF row i + d/2 (i < d/2), i.e. pair i = (HF i, HF i + d/2),
    rotated by the same angle pos * inv_freq[i] in both conventions. This is tt-transformers' `reverse_permute`
    (the inverse of HF's `convert_llama_weights_to_hf.permute`); the canonical WQKV holds the transpose of the
    result, so there it is the Q/K *columns* that are in Meta order. Biases and q/k-norm weights use
    `reverse_permute_1d`, the same map on a vector.
    """
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(1, 2).reshape(rows, cols)


def reverse_permute_1d(v: torch.Tensor, n_heads: int = 1) -> torch.Tensor:
    """`reverse_permute` of a vector: a Q/K bias ([n_heads * head_dim]) or a q/k-norm weight ([head_dim])."""
    return reverse_permute(v.reshape(-1, 1), n_heads).reshape(-1)


def permute(w: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Meta -> HF RoPE order (the inverse of `reverse_permute`): HF row i <- Meta row 2i, HF i + d/2 <- Meta 2i+1."""
    rows, cols = w.shape
    return w.reshape(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols)


# ------------------------------------------------------------------------------------------------------------------
# HF state dict -> canonical


def hf_to_canonical(state_dict: dict[str, torch.Tensor], config: ModelConfig) -> ModelWeights:
    """The canonical weights of a HF causal-LM state dict (keys `model.layers.N...`, `lm_head.weight`).

    Matrices are returned [in, out] as transposed *views* of the HF tensors wherever no reordering is needed
    (wo, w1, w2, w3, lm_head, and the split halves of Phi-3's gate_up_proj), so they share storage with the HF
    model; WQKV, its bias and the q/k-norm weights are new tensors. Norms and the embedding are the HF tensors
    themselves. A tied LM head is the embedding's transpose (same storage). Every tensor of the state dict must be
    used: a parameter tunelab does not emulate (an o_proj or MLP bias, say) is an error, not silently dropped.
    """
    sd = {key: t.detach() for key, t in state_dict.items() if not key.endswith("rotary_emb.inv_freq")}
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            raise TunelabError(f"{config.name}: checkpoint has no tensor {key}")
        used.add(key)
        return sd[key]

    def maybe(key: str) -> torch.Tensor | None:
        return take(key) if key in sd else None

    layers = []
    for i in range(config.n_layers):
        p = f"model.layers.{i}."
        if config.fused_checkpoint:
            q, k, v = take(p + "self_attn.qkv_proj.weight").split(
                [config.q_dim, config.kv_dim, config.kv_dim]
            )
            w1, w3 = take(p + "mlp.gate_up_proj.weight").split([config.hidden_dim, config.hidden_dim])
        else:
            q, k, v = (take(p + f"self_attn.{n}_proj.weight") for n in "qkv")
            w1, w3 = take(p + "mlp.gate_proj.weight"), take(p + "mlp.up_proj.weight")
        wqkv = torch.cat([reverse_permute(q, config.n_heads), reverse_permute(k, config.n_kv_heads), v])
        bqkv = q_norm = k_norm = None
        if config.qkv_bias:
            bq, bk, bv = (take(p + f"self_attn.{n}_proj.bias") for n in "qkv")
            bqkv = torch.cat(
                [reverse_permute_1d(bq, config.n_heads), reverse_permute_1d(bk, config.n_kv_heads), bv]
            )
        if config.qk_norm:
            q_norm = reverse_permute_1d(take(p + "self_attn.q_norm.weight"))
            k_norm = reverse_permute_1d(take(p + "self_attn.k_norm.weight"))
        layers.append(
            LayerWeights(
                attention_norm=take(p + "input_layernorm.weight"),
                wqkv=wqkv.t(),
                wo=take(p + "self_attn.o_proj.weight").t(),
                ffn_norm=take(p + "post_attention_layernorm.weight"),
                w1=w1.t(),
                w3=w3.t(),
                w2=take(p + "mlp.down_proj.weight").t(),
                bqkv=bqkv,
                q_norm=q_norm,
                k_norm=k_norm,
            )
        )
    embedding = take("model.embed_tokens.weight")
    lm_head = maybe("lm_head.weight")
    weights = ModelWeights(
        embedding=embedding,
        layers=layers,
        norm=take("model.norm.weight"),
        lm_head=(embedding if lm_head is None else lm_head).t(),
    )
    unused = sorted(set(sd) - used)
    if unused:
        raise TunelabError(
            f"{config.name}: checkpoint tensor {unused[0]} has no place in tunelab's {config.architecture} layout"
            + (f" (and {len(unused) - 1} more)" if len(unused) > 1 else "")
        )
    return weights


# ------------------------------------------------------------------------------------------------------------------
# Meta checkpoint (params.json + consolidated.*.pth + tokenizer.model) -> HF Llama

# Model-parallel split dims of Meta's fairscale layers: column-parallel outputs (dim 0), row-parallel inputs (dim 1).
_COLUMN_PARALLEL = (
    "attention.wq",
    "attention.wk",
    "attention.wv",
    "feed_forward.w1",
    "feed_forward.w3",
    "output",
)
_ROW_PARALLEL = ("attention.wo", "feed_forward.w2")


def _merge_shards(
    shards: list[dict[str, torch.Tensor]], params: dict[str, Any], where: str
) -> dict[str, torch.Tensor]:
    """One state dict from Meta's model-parallel shards (consolidated.00.pth, .01, ...)."""
    if len(shards) == 1:
        return shards[0]
    merged = {}
    for key in shards[0]:
        parts = [shard[key] for shard in shards]
        base = (
            key.removesuffix(".weight").split(".", 2)[-1]
            if key.startswith("layers.")
            else key.removesuffix(".weight")
        )
        if parts[0].dim() == 1 or key == "rope.freqs":  # norms (replicated)
            merged[key] = parts[0]
        elif base in _COLUMN_PARALLEL:
            merged[key] = torch.cat(parts, dim=0)
        elif base in _ROW_PARALLEL:
            merged[key] = torch.cat(parts, dim=1)
        elif base == "tok_embeddings":  # Llama 2 splits the embedding dim, Llama 3 the vocabulary
            merged[key] = torch.cat(parts, dim=1 if parts[0].shape[1] != params["dim"] else 0)
        else:
            raise TunelabError(f"{where}: cannot merge model-parallel shards of unknown tensor {key}")
    return merged


def _meta_rope(params: dict[str, Any], name: str) -> dict[str, Any]:
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(params.get("rope_theta", 10000.0))}
    if params.get("use_scaled_rope"):
        # Meta's llama3 scaling; the factor is 8 for Llama 3.1 and 32 for Llama 3.2 1B/3B (as HF's converter does)
        factor = params.get("rope_scaling_factor")
        if factor is None:
            small_32 = (params["dim"], params["n_layers"]) in {(2048, 16), (3072, 28)}
            factor = 32.0 if ("3.2" in name or small_32) else 8.0
        rope.update(
            rope_type="llama3",
            factor=float(factor),
            low_freq_factor=1.0,
            high_freq_factor=4.0,
            original_max_position_embeddings=8192,
        )
    return rope


def meta_checkpoint_to_hf(directory: Path, name: str) -> tuple[Any, dict[str, torch.Tensor]]:
    """(LlamaConfig, HF state dict) of a Meta checkpoint directory; Q/K rows go back to HF order with `permute`.

    Tensors keep the checkpoint's dtype (bf16 for Meta's releases). The LM head is tied when the checkpoint has no
    `output.weight` or it equals the embedding (Llama 3.2 1B/3B).
    """
    from transformers import LlamaConfig

    where = str(directory)
    try:
        params = json.loads((directory / "params.json").read_text())
    except (OSError, ValueError) as e:
        raise TunelabError(f"{where}/params.json: cannot read it ({e})") from None
    paths = sorted(directory.glob("consolidated.*.pth"))
    try:
        shards = [torch.load(p, map_location="cpu", weights_only=True, mmap=True) for p in paths]
    except Exception as e:
        raise TunelabError(
            f"{where}: cannot read {paths[0].name if paths else 'consolidated.*.pth'} ({e})"
        ) from None
    try:
        sd = _merge_shards(shards, params, where)
        dim, n_layers, n_heads = params["dim"], params["n_layers"], params["n_heads"]
    except KeyError as e:
        raise TunelabError(f"{where}: params.json or the checkpoint lacks {e}") from None
    n_kv_heads = params.get("n_kv_heads") or n_heads
    head_dim = dim // n_heads

    hf: dict[str, torch.Tensor] = {}
    try:
        embedding = sd["tok_embeddings.weight"]
        for i in range(n_layers):
            m, p = f"layers.{i}.", f"model.layers.{i}."
            wk = sd[m + "attention.wk.weight"]
            if wk.shape[0] != n_kv_heads * head_dim:
                raise TunelabError(
                    f"{where}: wk of layer {i} has {wk.shape[0]} rows, expected {n_kv_heads * head_dim} "
                    f"(key/value heads replicated across model-parallel shards are not supported)"
                )
            hf[p + "self_attn.q_proj.weight"] = permute(sd[m + "attention.wq.weight"], n_heads)
            hf[p + "self_attn.k_proj.weight"] = permute(wk, n_kv_heads)
            hf[p + "self_attn.v_proj.weight"] = sd[m + "attention.wv.weight"]
            hf[p + "self_attn.o_proj.weight"] = sd[m + "attention.wo.weight"]
            hf[p + "mlp.gate_proj.weight"] = sd[m + "feed_forward.w1.weight"]
            hf[p + "mlp.down_proj.weight"] = sd[m + "feed_forward.w2.weight"]
            hf[p + "mlp.up_proj.weight"] = sd[m + "feed_forward.w3.weight"]
            hf[p + "input_layernorm.weight"] = sd[m + "attention_norm.weight"]
            hf[p + "post_attention_layernorm.weight"] = sd[m + "ffn_norm.weight"]
        hf["model.embed_tokens.weight"] = embedding
        hf["model.norm.weight"] = sd["norm.weight"]
        hidden_dim = sd["layers.0.feed_forward.w1.weight"].shape[0]
    except KeyError as e:
        raise TunelabError(f"{where}: the checkpoint has no tensor {e}") from None
    output = sd.get("output.weight")
    tied = output is None or (output.shape == embedding.shape and torch.equal(output, embedding))
    if not tied:
        hf["lm_head.weight"] = output

    vocab_size = embedding.shape[0]
    rope = _meta_rope(params, name)
    max_pos = params.get("max_seq_len") or (
        131072 if rope["rope_type"] == "llama3" else 8192 if vocab_size >= 128000 else 4096
    )
    config = LlamaConfig(
        hidden_size=dim,
        intermediate_size=hidden_dim,
        num_hidden_layers=n_layers,
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv_heads,
        head_dim=head_dim,
        vocab_size=vocab_size,
        rms_norm_eps=float(params.get("norm_eps", 1e-5)),
        rope_parameters=rope,
        max_position_embeddings=max_pos,
        tie_word_embeddings=tied,
        hidden_act="silu",
        attention_bias=False,
        mlp_bias=False,
    )
    config.architectures = ["LlamaForCausalLM"]
    return config, hf


# Llama 3.x special tokens (ids base_vocab + 0, 1, ...); the rest are reserved placeholders.
_LLAMA3_SPECIAL = [
    "<|begin_of_text|>",
    "<|end_of_text|>",
    "<|reserved_special_token_0|>",
    "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>",
    "<|step_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|eot_id|>",
    "<|python_tag|>",
]
_TIKTOKEN_LINE = re.compile(rb"^[A-Za-z0-9+/=]+ \d+$")


def _read_tiktoken(path: Path) -> dict[bytes, int] | None:
    """A tiktoken BPE file's {token bytes: rank}, or None if the file is not in that format (SentencePiece)."""
    data = path.read_bytes()
    first = data.split(b"\n", 1)[0].strip()
    if not _TIKTOKEN_LINE.match(first):
        return None
    try:
        return {
            base64.b64decode(tok): int(rank)
            for tok, rank in (line.split() for line in data.splitlines() if line)
        }
    except ValueError:
        return None


def meta_tokenizer(path: Path, vocab_size: int) -> Any:
    """The HF tokenizer of a Meta `tokenizer.model`: Llama 3 tiktoken BPE, or (Llama 2) SentencePiece.

    The tiktoken file is parsed here and converted with transformers' own `TikTokenConverter` (Llama 3 split
    pattern, byte-level BPE); the ids past the BPE ranks up to `vocab_size` are Llama 3's special tokens, and
    every encoding starts with <|begin_of_text|>, as Meta's tokenizer does with bos=True.
    """
    from tokenizers import processors
    from transformers import PreTrainedTokenizerFast
    from transformers.convert_slow_tokenizer import TikTokenConverter

    try:
        ranks = _read_tiktoken(path)
    except OSError as e:
        raise TunelabError(f"{path}: cannot read the tokenizer ({e})") from None
    if ranks is None:
        return _sentencepiece_tokenizer(path)
    n_special = vocab_size - len(ranks)
    if n_special < 2:
        raise TunelabError(
            f"{path}: {len(ranks)} BPE tokens leave no room for special tokens in vocab {vocab_size}"
        )
    special = _LLAMA3_SPECIAL[:n_special]
    special += [f"<|reserved_special_token_{i}|>" for i in range(2, 2 + n_special - len(special))]

    class _Converter(TikTokenConverter):
        @staticmethod
        def load_tiktoken_bpe(tiktoken_url: str) -> dict[bytes, int]:
            return ranks

    backend = _Converter(vocab_file=str(path), extra_special_tokens=special).converted()
    bos = special[0]
    backend.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{bos} $A", pair=f"{bos}:0 $A:0 {bos}:1 $B:1", special_tokens=[(bos, len(ranks))]
            ),
        ]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=special[1])


def _sentencepiece_tokenizer(path: Path) -> Any:
    """Llama 2's SentencePiece tokenizer.model, through transformers (needs the sentencepiece package)."""
    try:
        import sentencepiece  # noqa: F401
    except ImportError:
        raise TunelabError(
            f"{path} is a SentencePiece tokenizer; converting it needs the sentencepiece package "
            f"(pip install sentencepiece protobuf)"
        ) from None
    from transformers import LlamaTokenizer

    try:
        return LlamaTokenizer.from_pretrained(str(path.parent))
    except Exception as e:
        raise TunelabError(
            f"{path}: cannot convert the SentencePiece tokenizer ({str(e).splitlines()[0]})"
        ) from None
