"""Tiny random models and tokenizers built locally, for tests and benchmarks (no hub access).

``make_tiny_model(dir)`` writes a directory that ``load_causal_lm``/``load_tokenizer`` accept like any local
model: a byte-level BPE tokenizer trained on a small built-in corpus and a random Llama built from a config.
"""

from __future__ import annotations

from pathlib import Path

import torch

_CORPUS = [
    "Question: Where was Ilsa Varga born?\nAnswer: Lisbon",
    "Question: In which year was Bram Okonkwo born?\nAnswer: 1957",
    "### Text: a gripping, funny film\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment: positive",
    "### Text: dull and far too long\n\n### Question: What is the sentiment of the given text?\n\n### Sentiment: negative",
    "neutral unknown I don't know. I'm not able to answer that. Oslo Cairo Lima Dublin Prague Seoul Vienna",
    "The quick brown fox jumps over the lazy dog. 0123456789 ,.;:!?'\"()-",
]
#: multiple-choice lines: with ``letters=True`` the tokenizer learns " A" .. " D" as single tokens
_MCQ_CORPUS = ["When was Ada born?\nA. 1961\nB. 1958\nC. 1965\nD. 1994\nAnswer: A B C D"] * 8


def make_tokenizer(vocab_size: int = 320, letters: bool = False):
    """A byte-level BPE ``PreTrainedTokenizerFast`` trained on a few lines; pad = EOS, as in many chat models.
    ``letters``: also on multiple-choice lines, so the answer letters " A" .. " D" are one token each."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_CORPUS * 4 + (_MCQ_CORPUS if letters else []), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>")


def tiny_llama_config(vocab_size: int, hidden_size: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                      intermediate_size: int = 64, max_positions: int = 256, **extra):
    """A small Llama config; ``extra`` goes to ``LlamaConfig`` as is (e.g. ``attention_dropout=0.5``)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size, intermediate_size=intermediate_size,
                       num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                       max_position_embeddings=max_positions, tie_word_embeddings=False, **extra)


def make_tiny_model(out_dir: str | Path, seed: int = 0, letters: bool = False, **config_kwargs) -> Path:
    """Save a tokenizer (``letters``: see :func:`make_tokenizer`) and a seeded random tiny Llama to ``out_dir``;
    returns the directory."""
    from transformers import LlamaForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = make_tokenizer(letters=letters)
    cfg = tiny_llama_config(len(tok), **config_kwargs)
    cfg.pad_token_id = tok.pad_token_id
    cfg.eos_token_id = tok.eos_token_id
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out
