"""Batched greedy generation: what a model answers to prompts, not only how it scores given answers.

Prompts are sorted by length and batched with left padding (so every row's next token comes from the same last
position; position ids count real tokens only), decoded greedily with the KV cache, and stopped at EOS or
``max_new_tokens``. A row that reaches EOS leaves the batch (its cache rows are dropped), so the rest decode at the
width of the rows still running, as one-by-one decoding would; the prompt's forward computes the LM head at the
last position only. The tokens every prompt of a call begins with (a chat template's system block) run once, and
their KV cache is repeated into each batch. Dropout is off during generation and every module's own train/eval mode
is restored afterwards. Models whose adapter prepends learned prompt positions (PEFT prompt learning) go through
``generate`` instead, which knows how to extend their inputs.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence

import torch

from lit_unlearn.models.modes import eval_mode


def _prompt_learning(lm) -> bool:
    config = getattr(lm, "active_peft_config", None)
    return bool(getattr(config, "is_prompt_learning", False))


def forward_names(lm) -> tuple[str, bool]:
    """The model's name for the KV-cache argument (``cache`` in recent transformers, ``past_key_values`` before)
    and whether its forward takes ``logits_to_keep``."""
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    params = inspect.signature(base.forward).parameters
    return ("cache" if "cache" in params else "past_key_values"), "logits_to_keep" in params


@torch.no_grad()
def _decode(lm, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_new_tokens: int,
            eos_token_id: int | None, head: tuple[object, int] | None = None) -> list[list[int]]:
    """Greedy continuation token ids of a left-padded batch; finished rows are dropped from the batch. ``head``:
    ``(cache, n)``, the KV cache of ``n`` tokens that precede every row (one row, repeated here), the rows holding
    the tokens after them."""
    cache_name, keep_logits = forward_names(lm)
    last = {"logits_to_keep": 1} if keep_logits else {}
    n = input_ids.size(0)
    out: list[list[int]] = [[] for _ in range(n)]
    alive = torch.arange(n, device=input_ids.device)
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    before = {}
    if head is not None:
        cache, width = copy.deepcopy(head[0]), head[1]
        cache.batch_repeat_interleave(n)
        attention_mask = torch.cat([attention_mask.new_ones(n, width), attention_mask], -1)
        position_ids = position_ids + width
        before = {cache_name: cache}
    step = lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=True,
              **before, **last)
    cache, mask = step.get(cache_name), attention_mask
    for t in range(max_new_tokens):
        token = step.logits[:, -1].argmax(-1)
        for row, tok in zip(alive.tolist(), token.tolist()):
            out[row].append(tok)
        running = token != eos_token_id if eos_token_id is not None else torch.ones_like(token, dtype=torch.bool)
        if t == max_new_tokens - 1 or not bool(running.any()):
            break
        if not bool(running.all()):
            keep = running.nonzero().squeeze(-1)
            cache.batch_select_indices(keep)
            alive, token, mask = alive[keep], token[keep], mask[keep]
        mask = torch.cat([mask, mask.new_ones(mask.size(0), 1)], dim=-1)
        step = lm(input_ids=token[:, None], attention_mask=mask, position_ids=mask.sum(-1, keepdim=True) - 1,
                  use_cache=True, **{cache_name: cache}, **last)
        cache = step.get(cache_name)
    return out


@torch.no_grad()
def greedy_generate(lm, tokenizer, prompts: Sequence[str], max_new_tokens: int = 32, batch_size: int = 16,
                    eos_token_id: int | None = None, share_head: bool = True) -> list[str]:
    """The greedy continuation of each prompt (special tokens dropped), in the order of ``prompts``; it stops at
    ``eos_token_id`` (default: the tokenizer's EOS) or after ``max_new_tokens`` tokens. ``share_head``: run the
    tokens all prompts begin with once (module docstring); False for an adapter that acts on the whole input
    (interventions at prompt positions), which must see every prompt whole."""
    device = next(lm.parameters()).device
    eos = tokenizer.eos_token_id if eos_token_id is None else eos_token_id
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    if not prompts:
        return out
    enc = [tokenizer(p)["input_ids"] for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    with eval_mode(lm):
        head, width = None, 0
        if share_head and not _prompt_learning(lm):
            width = common_head(enc)
            if width:
                ids = torch.tensor([enc[0][:width]], device=device)
                head = (lm(input_ids=ids, use_cache=True, **({"logits_to_keep": 1} if forward_names(lm)[1] else {}))
                        .get(forward_names(lm)[0]), width)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            rows = [enc[i][width:] for i in idx]
            w = max(len(r) for r in rows)
            input_ids = torch.full((len(rows), w), pad, dtype=torch.long)
            mask = torch.zeros((len(rows), w), dtype=torch.long)
            for j, r in enumerate(rows):  # left padding
                input_ids[j, w - len(r):], mask[j, w - len(r):] = torch.tensor(r), 1
            input_ids, mask = input_ids.to(device), mask.to(device)
            if _prompt_learning(lm):
                gen = lm.generate(input_ids=input_ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  do_sample=False, num_beams=1, use_cache=True, pad_token_id=tokenizer.pad_token_id,
                                  eos_token_id=eos)
                ids = [row.tolist() for row in gen[:, w:]]
            else:
                ids = _decode(lm, input_ids, mask, max_new_tokens, eos, head)
            for i, row in zip(idx, ids):
                out[i] = tokenizer.decode(row, skip_special_tokens=True)
    return out


def common_head(encoded: list[list[int]], least: int = 8) -> int:
    """How many leading tokens every prompt shares and leaves at least one token of its own after (a chat
    template's system block); 0 below ``least`` tokens (not worth a separate forward)."""
    first, n = encoded[0], min(len(e) for e in encoded) - 1
    for e in encoded[1:]:
        k = 0
        while k < n and e[k] == first[k]:
            k += 1
        n = k
    return n if n >= least else 0
