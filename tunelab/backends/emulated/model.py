"""Emulated tt-transformers model (tt/model.py): embedding, decoders, final norm, LM head.

`teacher_forced` evaluates a window the tt-metal way (prefill P tokens, then D decode positions each fed the true
token) as one batched pass: the prefill rows run through every decoder with the *_PREFILL op groups, filling each
layer's quantised KV cache, then all D decode rows run together with the *_DECODE op groups, each attending to the
cache up to its own position. `teacher_forced_stepwise` runs the decode rows one at a time, as the device does.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import torch

from tunelab.backends.emulated.attention import Attention, Positions
from tunelab.backends.emulated.decoder import Decoder
from tunelab.backends.emulated.kv_cache import KVCache
from tunelab.backends.emulated.linear import Linear
from tunelab.backends.emulated.mlp import MLP
from tunelab.backends.emulated.ops import EmulatorOptions, Mode, linear, rms_norm, store
from tunelab.backends.emulated.rope import rope_tables
from tunelab.backends.emulated.weight_cache import DEFAULT_BUDGET_BYTES, WeightCache
from tunelab.errors import ConfigError
from tunelab.models.config import ModelConfig
from tunelab.models.weights import ModelWeights
from tunelab.numerics import SrcA, quantize
from tunelab.precision import (
    LM_HEAD_FIDELITY,
    MATMULS,
    DecoderPrecision,
    ModelPrecision,
    OpGroup,
    TensorGroup,
)

__all__ = ["EmulatedModel", "HiddenStates"]

# The LM head is not governed by the decoder configs: HiFi2 with a bf16 Dst, `lm_head_format` weights and logits.
LM_HEAD_KERNEL = LM_HEAD_FIDELITY.kernel
_MATMUL = {m.tensor: m for m in MATMULS}


class HiddenStates(NamedTuple):
    """The residual stream entering a decoder: prefill rows [P, dim] and decode rows [D, dim]."""

    prefill: torch.Tensor
    decode: torch.Tensor


class EmulatedModel:
    """A checkpoint whose forward pass emulates tt-transformers for any per-decoder `ModelPrecision`."""

    def __init__(
        self,
        config: ModelConfig,
        weights: ModelWeights,
        rotary_emb: torch.nn.Module,
        options: EmulatorOptions | None = None,
        device: str | torch.device = "cpu",
        cache_budget_bytes: int = DEFAULT_BUDGET_BYTES,
    ) -> None:
        self.config = config
        self.options = options or EmulatorOptions()
        self.device = torch.device(device)
        self.weights = weights
        self.cache = WeightCache(weights, cache_budget_bytes, self.device)
        self.rotary_emb = rotary_emb
        self.embedding = quantize(weights.embedding.to(self.device), "bf16")
        self.norm = quantize(weights.norm.to(self.device), "bf16")
        self.lm_head = SrcA(quantize(weights.lm_head.to(self.device), self.options.lm_head_format))

    def with_options(self, options: EmulatorOptions) -> EmulatedModel:
        """The same checkpoint emulated under other options, sharing this model's quantised-weight cache."""
        other = copy.copy(self)
        other.options = options
        if options.lm_head_format != self.options.lm_head_format:
            other.lm_head = SrcA(quantize(self.weights.lm_head.to(self.device), options.lm_head_format))
        return other

    def decoders(self, precision: ModelPrecision) -> list[Decoder]:
        """The decoder layers configured by `precision` (weights come from the quantisation cache)."""
        self._check_layers(precision)
        return [self._decoder(layer, decoder) for layer, decoder in enumerate(precision)]

    def teacher_forced(
        self,
        tokens: torch.Tensor,
        prefill_len: int,
        precision: ModelPrecision,
        *,
        start: int = 0,
        entering: HiddenStates | None = None,
        on_layer: Callable[[int, HiddenStates], None] | None = None,
    ) -> torch.Tensor:
        """Logits [D, vocab] of the D = len(tokens) - prefill_len decode positions, in one batched decode pass.

        Runs layer by layer (each decoder's prefill rows fill its KV cache, then its decode rows run), which equals
        prefilling every layer first. `entering` resumes at decoder `start` from the hidden states that entered it
        under a config with the same decoders 0..start-1; `on_layer(i, states)` sees the states entering each
        decoder i >= start, so a caller can keep them for such reuse.
        """
        if not 0 < prefill_len < len(tokens):
            raise ValueError(f"prefill_len must be in 1..{len(tokens) - 1}, got {prefill_len}")
        self._check_layers(precision)
        if (entering is None) != (start == 0):
            raise ValueError("give the hidden states entering decoder `start` exactly when start > 0")
        rope = self._rope(len(tokens))
        prefill = Positions.of(0, prefill_len, rope, prefill_len)
        decode = Positions.of(prefill_len, len(tokens) - prefill_len, rope, len(tokens))
        if entering is None:
            tokens = tokens.to(self.device)
            entering = HiddenStates(
                self.embedding[tokens[:prefill_len]], self.embedding[tokens[prefill_len:]]
            )
        x_prefill, x_decode = entering.prefill, entering.decode
        with torch.no_grad():
            for layer in range(start, self.config.n_layers):
                if on_layer is not None:
                    on_layer(layer, HiddenStates(x_prefill, x_decode))
                decoder, cache = (
                    self._decoder(layer, precision[layer]),
                    self._cache(precision[layer], len(tokens)),
                )
                x_prefill = decoder(x_prefill, "prefill", prefill, cache)
                x_decode = decoder(x_decode, "decode", decode, cache)
        return self._logits(x_decode)

    def teacher_forced_stepwise(
        self, tokens: torch.Tensor, prefill_len: int, precision: ModelPrecision
    ) -> torch.Tensor:
        """Same as `teacher_forced`, decoding one position at a time (slow; the device's own order)."""
        decoders, caches, rope = self._setup(tokens, prefill_len, precision)
        self._run(decoders, caches, rope, tokens[:prefill_len], "prefill", 0)
        steps = [
            self._logits(self._run(decoders, caches, rope, tokens[pos : pos + 1], "decode", pos))
            for pos in range(prefill_len, len(tokens))
        ]
        return torch.cat(steps)

    def _setup(
        self, tokens: torch.Tensor, prefill_len: int, precision: ModelPrecision
    ) -> tuple[list[Decoder], list[KVCache], tuple[torch.Tensor, torch.Tensor]]:
        if not 0 < prefill_len < len(tokens):
            raise ValueError(f"prefill_len must be in 1..{len(tokens) - 1}, got {prefill_len}")
        caches = [self._cache(d, len(tokens)) for d in precision]
        return self.decoders(precision), caches, self._rope(len(tokens))

    def _check_layers(self, precision: ModelPrecision) -> None:
        if precision.n_layers != self.config.n_layers:
            raise ConfigError(
                f"the config has {precision.n_layers} decoders but {self.config.name} has {self.config.n_layers} layers"
            )

    def _cache(self, decoder: DecoderPrecision, length: int) -> KVCache:
        c = self.config
        return KVCache(
            c.n_kv_heads, c.head_dim, length, decoder.precision(TensorGroup.KV_CACHE).value, self.device
        )

    def _rope(self, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = rope_tables(self.rotary_emb, length, self.config.head_dim)
        return cos.to(self.device), sin.to(self.device)

    @torch.no_grad()
    def _run(
        self,
        decoders: list[Decoder],
        caches: list[KVCache],
        rope: tuple[torch.Tensor, torch.Tensor],
        tokens: torch.Tensor,
        mode: Mode,
        start: int,
    ) -> torch.Tensor:
        x = self.embedding[tokens.to(self.device)]
        # Decode rows may read the whole window's cache (unwritten positions are zero and masked): sdpa picks
        # the keys per block of positions, the same for one decode step as for a batch of them.
        keys = start + len(tokens) if mode == "prefill" else len(rope[0])
        positions = Positions.of(start, len(tokens), rope, keys)
        for decoder, cache in zip(decoders, caches, strict=True):
            x = decoder(x, mode, positions, cache)
        return x

    @torch.no_grad()
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        h = rms_norm(x, self.norm, self.config.norm_eps)
        logits = linear(h, self.lm_head, LM_HEAD_KERNEL, self.options.accumulation)
        return store(logits, self.options.lm_head_format)

    def _decoder(self, layer: int, decoder: DecoderPrecision) -> Decoder:
        w, c, accumulation = self.weights.layers[layer], self.config, self.options.accumulation

        def linear(group: TensorGroup, *names: str) -> Linear:
            """The weight group's matmul at its op groups' fidelities (prefill, decode)."""
            m = _MATMUL[group]
            prefill, decode = decoder.fidelity(m.prefill).kernel, decoder.fidelity(m.decode).kernel
            return Linear(
                self.cache.get(layer, decoder.precision(group).value, *names), prefill, decode, accumulation
            )

        def bf16(tensor: torch.Tensor | None) -> torch.Tensor | None:
            return None if tensor is None else quantize(tensor.to(self.device), "bf16")

        attention = Attention(
            config=c,
            options=self.options,
            wqkv=linear(TensorGroup.WQKV, "wqkv"),
            wo=linear(TensorGroup.WO, "wo"),
            sdpa_prefill=decoder.fidelity(OpGroup.SDPA_PREFILL).kernel,
            sdpa_decode=decoder.fidelity(OpGroup.SDPA_DECODE).kernel,
            activation=decoder.activation,
            bqkv=bf16(w.bqkv),
            q_norm=bf16(w.q_norm),
            k_norm=bf16(w.k_norm),
        )
        mlp = MLP(
            options=self.options,
            w1_w3=linear(TensorGroup.FF1_FF3, "w1", "w3"),  # w1 and w3 share the FF1_FF3 config
            w2=linear(TensorGroup.FF2, "w2"),
            activation=decoder.activation,
        )
        return Decoder(
            bf16(w.attention_norm), bf16(w.ffn_norm), c.norm_eps, attention, mlp, decoder.activation
        )
