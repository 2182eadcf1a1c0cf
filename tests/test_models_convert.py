"""The HF -> Meta RoPE permutation of Q/K (tt-transformers' reverse_permute) and the canonical layout."""

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from tunelab.models import ModelConfig, hf_to_canonical, permute, reverse_permute, reverse_permute_1d

N_HEADS, N_KV, HEAD_DIM, DIM, SEQ = 4, 2, 16, 64, 11


def meta_rows(n_heads, d):
    """The index map written out: Meta row 2i <- HF row i, Meta row 2i+1 <- HF row i + d/2, per head."""
    return [h * d + (j // 2 if j % 2 == 0 else j // 2 + d // 2) for h in range(n_heads) for j in range(d)]


def test_reverse_permute_is_the_documented_index_map():
    w = torch.randn(N_HEADS * HEAD_DIM, DIM)
    assert torch.equal(reverse_permute(w, N_HEADS), w[meta_rows(N_HEADS, HEAD_DIM)])
    assert torch.equal(permute(reverse_permute(w, N_HEADS), N_HEADS), w)
    b = torch.randn(N_HEADS * HEAD_DIM)
    assert torch.equal(reverse_permute_1d(b, N_HEADS), b[meta_rows(N_HEADS, HEAD_DIM)])
    g = torch.randn(HEAD_DIM)
    assert torch.equal(reverse_permute_1d(g), g[meta_rows(1, HEAD_DIM)])


def meta_rope(x, positions, theta):
    """Meta / tt-transformers RoPE: rotate interleaved pairs (2i, 2i+1) by angle pos * inv_freq[i]."""
    d = x.shape[-1]
    inv_freq = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = positions[:, None].double() * inv_freq[None, :]  # [seq, d/2]
    cos, sin = angle.cos().float()[:, None, :], angle.sin().float()[:, None, :]
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def test_rope_in_meta_order_equals_hf_rope_after_unpermuting():
    torch.manual_seed(0)
    theta = 10000.0
    hf_cfg = LlamaConfig(
        hidden_size=DIM, num_attention_heads=N_HEADS, num_key_value_heads=N_KV, head_dim=HEAD_DIM
    )
    wq, wk = torch.randn(N_HEADS * HEAD_DIM, DIM), torch.randn(N_KV * HEAD_DIM, DIM)
    x = torch.randn(SEQ, DIM)
    positions = torch.arange(3, 3 + SEQ)

    # HF: nn.Linear, split heads, transformers' own rotate_half RoPE
    q = (x @ wq.T).view(1, SEQ, N_HEADS, HEAD_DIM).transpose(1, 2)
    k = (x @ wk.T).view(1, SEQ, N_KV, HEAD_DIM).transpose(1, 2)
    cos, sin = LlamaRotaryEmbedding(hf_cfg)(q, positions[None])
    q_hf, k_hf = apply_rotary_pos_emb(q, k, cos, sin)
    q_hf, k_hf = q_hf[0].transpose(0, 1), k_hf[0].transpose(0, 1)  # [seq, heads, d]

    # canonical: x @ wqkv ([in, out], Meta-ordered Q/K columns), then interleaved-pair RoPE
    config = ModelConfig(
        name="t", architecture="LlamaForCausalLM", dim=DIM, n_layers=1, n_heads=N_HEADS, n_kv_heads=N_KV,
        head_dim=HEAD_DIM, hidden_dim=8, vocab_size=5, norm_eps=1e-5, rope_theta=theta, tie_word_embeddings=True,
        qkv_bias=False, qk_norm=False, fused_checkpoint=False, max_position_embeddings=64,
    )  # fmt: skip
    p = "model.layers.0."
    sd = {
        p + "self_attn.q_proj.weight": wq,
        p + "self_attn.k_proj.weight": wk,
        p + "self_attn.v_proj.weight": torch.randn(N_KV * HEAD_DIM, DIM),
        p + "self_attn.o_proj.weight": torch.randn(DIM, N_HEADS * HEAD_DIM),
        p + "mlp.gate_proj.weight": torch.randn(8, DIM),
        p + "mlp.up_proj.weight": torch.randn(8, DIM),
        p + "mlp.down_proj.weight": torch.randn(DIM, 8),
        p + "input_layernorm.weight": torch.randn(DIM),
        p + "post_attention_layernorm.weight": torch.randn(DIM),
        "model.embed_tokens.weight": torch.randn(5, DIM),
        "model.norm.weight": torch.randn(DIM),
    }
    wqkv = hf_to_canonical(sd, config).layers[0].wqkv
    qkv = x @ wqkv
    q_meta = meta_rope(qkv[:, : N_HEADS * HEAD_DIM].view(SEQ, N_HEADS, HEAD_DIM), positions, theta)
    k_meta = meta_rope(
        qkv[:, N_HEADS * HEAD_DIM : (N_HEADS + N_KV) * HEAD_DIM].view(SEQ, N_KV, HEAD_DIM), positions, theta
    )

    order = meta_rows(1, HEAD_DIM)
    torch.testing.assert_close(q_meta, q_hf[..., order], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(k_meta, k_hf[..., order], rtol=1e-5, atol=1e-5)
    # and so attention scores are unchanged: the permutation is the same for Q and K within a head
    group = N_HEADS // N_KV
    scores_hf = torch.einsum("shd,thd->hst", q_hf, k_hf.repeat_interleave(group, dim=1))
    scores_meta = torch.einsum("shd,thd->hst", q_meta, k_meta.repeat_interleave(group, dim=1))
    torch.testing.assert_close(scores_meta, scores_hf, rtol=1e-4, atol=1e-4)
    # the wrong order (HF halves rotated as if interleaved) would not match
    q_plain = (x @ wq.T).view(SEQ, N_HEADS, HEAD_DIM)
    assert not torch.allclose(meta_rope(q_plain, positions, theta), q_hf, atol=1e-3)
