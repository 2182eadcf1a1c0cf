"""A tiny random Llama model and a byte-level BPE tokenizer built in-process (no downloads), for eval tests."""

from __future__ import annotations

import functools
from pathlib import Path
from types import SimpleNamespace

import torch

VOCAB = 320


@functools.cache
def tokenizer(bos: bool = False):
    """A byte-level BPE tokenizer trained on the built-in corpus; `bos` makes encode() prepend <s> like Llama."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from tunelab.eval.corpus import builtin_documents

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - 2,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(builtin_documents(), trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")


def hf_model(seed: int = 0, scale: float = 6.0):
    """A 2-layer LlamaForCausalLM (hidden 64) with weights scaled up so its predictions are not near-uniform."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        architectures=["LlamaForCausalLM"],
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.mul_(scale)
    return model


def loaded(seed: int = 0) -> SimpleNamespace:
    """What `tunelab.models.load_model` returns, for the tiny model (the fields the eval code uses)."""
    from tunelab.models import ModelConfig, fingerprint, hf_to_canonical

    model, tok = hf_model(seed), tokenizer()
    config = ModelConfig.from_hf(model.config, "tiny-llama")
    return SimpleNamespace(
        config=config,
        hf_config=model.config,
        hf_model=model,
        tokenizer=tok,
        weights=hf_to_canonical(model.state_dict(), config),
        fingerprint=fingerprint(model, tok, config),
        source="tiny-llama (in-process)",
    )


def save(directory: Path, seed: int = 0) -> Path:
    """The tiny model as a Hugging Face directory, loadable by `tunelab.models.load_model`."""
    directory.mkdir(parents=True, exist_ok=True)
    hf_model(seed).save_pretrained(directory)
    tokenizer().save_pretrained(directory)
    return directory
