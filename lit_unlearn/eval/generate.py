"""Batched greedy generation: what a model answers to prompts, not only how it scores given answers.

Prompts are sorted by length and batched with left padding (so every row's next token comes from the same last
position), decoded greedily with the KV cache, and stopped at EOS or ``max_new_tokens``. Dropout is off during
generation and every module's own train/eval mode is restored afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lit_unlearn.models.modes import eval_mode


@torch.no_grad()
def greedy_generate(lm, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16) -> list[str]:
    """The greedy continuation of each prompt (special tokens dropped), in the order of ``prompts``."""
    device = next(lm.parameters()).device
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with eval_mode(lm):
            for start in range(0, len(order), batch_size):
                idx = order[start:start + batch_size]
                enc = tokenizer([prompts[i] for i in idx], return_tensors="pt", padding=True).to(device)
                gen = lm.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                                  pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
                for i, ids in zip(idx, gen[:, enc["input_ids"].size(1):]):
                    out[i] = tokenizer.decode(ids, skip_special_tokens=True)
    finally:
        tokenizer.padding_side = side
    return out
