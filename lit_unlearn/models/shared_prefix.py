"""Scoring several answers to one prompt with the prompt run once (TOFU's truth ratio: a paraphrased and five
perturbed answers per question).

For a group of (prompt, answer_k) pairs, tokenized as the data modules tokenize them (:func:`~lit_unlearn.core.tokens.
encode`), the tokens every sequence of the group shares up to the first answer token are the *shared prefix*. It
goes through the model once, with the KV cache kept; each answer's remaining tokens (from the prefix's last token,
whose hidden state predicts the first answer token) go through with that cache, repeated for each answer of the
group. The numbers are the same as scoring each pair whole, up to the rounding of other matrix shapes (checked:
:meth:`~lit_unlearn.models.scorer.Scorer.answer_nlls` compares both paths on its first group and uses this one only
when they agree to 1e-4).

Groups are batched: prefixes left-padded (explicit position ids, so a padded row keeps positions 0, 1, ...),
suffixes right-padded after them, one attention mask over both. The tokens every group's prefix begins with (a
chat template's system block) run once, in a batch of one, and their cache is repeated into each batch of groups.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import IGNORE, encode
from lit_unlearn.models.generate import common_head, forward_names
from lit_unlearn.models.head import capture_head_input


def split_group(seqs: list[dict]) -> int:
    """The number of leading tokens the encoded sequences of one group share and may run once: their common prefix,
    ending before the first answer token's predecessor (that token's hidden state scores the first answer token)."""
    starts = [next(i for i, t in enumerate(s["labels"]) if t != IGNORE) for s in seqs]
    first = seqs[0]["input_ids"]
    common = min(starts)
    for s in seqs[1:]:
        ids = s["input_ids"]
        k = 0
        while k < min(common, len(ids)) and ids[k] == first[k]:
            k += 1
        common = k
    return max(0, common - 1)


def _call(lm: nn.Module, head: nn.Module | None, inputs: dict):
    """The model's outputs, the head's matmul skipped where ``head`` is given (its input is returned instead)."""
    if head is None:
        out = lm(**inputs)
        return out, out.logits
    with capture_head_input(head) as seen:
        out = lm(**inputs)
    return out, seen[-1]


@torch.no_grad()
def score_groups(lm: nn.Module, tokenizer, prompts: list[str], groups: list[list[str]], head: nn.Module | None,
                 device: torch.device, groups_per_batch: int = 32, chunk: int = 32) -> list[list[float]]:
    """Mean answer NLL of every answer of ``groups[i]`` to ``prompts[i]`` (module docstring): the prefixes of up to
    ``groups_per_batch`` groups in one forward, then their answers' suffixes in length-sorted chunks of at most
    ``chunk`` rows of similar length (:func:`length_chunks`), each with the cache rows of its groups."""
    pad = tokenizer.pad_token_id
    cache_name, keep_logits = forward_names(lm)
    encoded = [[encode(tokenizer, p, a) for a in g] for p, g in zip(prompts, groups)]
    shared = [split_group(seqs) if seqs else 0 for seqs in encoded]
    out: list[list[float | None]] = [[None] * len(g) for g in groups]
    order = sorted((i for i in range(len(groups)) if groups[i]), key=lambda i: shared[i])
    last_only = {"logits_to_keep": 1} if keep_logits and head is None else {}
    # the tokens every group's prefix begins with (a chat template's system block): run once, repeated per batch
    top = common_head([encoded[i][0]["input_ids"][:shared[i]] for i in order]) if order else 0
    top_cache = None
    if top:
        top_ids = torch.tensor([encoded[order[0]][0]["input_ids"][:top]], device=device)
        top_cache = _call(lm, head, {"input_ids": top_ids, "use_cache": True, **last_only})[0].get(cache_name)
    for s in range(0, len(order), groups_per_batch):
        idx = order[s:s + groups_per_batch]
        width_p = max(shared[i] for i in idx) - top
        prefix_ids = torch.full((len(idx), width_p), pad, dtype=torch.long)
        prefix_mask = torch.zeros((len(idx), width_p), dtype=torch.long)
        for r, i in enumerate(idx):
            n = shared[i] - top
            if n:
                prefix_ids[r, width_p - n:] = torch.tensor(encoded[i][0]["input_ids"][top:shared[i]])
                prefix_mask[r, width_p - n:] = 1
        prefix_mask = torch.cat([prefix_mask.new_ones(len(idx), top), prefix_mask], 1)
        cache = None
        if top_cache is not None:
            cache = copy.deepcopy(top_cache)
            cache.batch_repeat_interleave(len(idx))
        if width_p:
            pos_p = (prefix_mask.cumsum(-1) - 1).clamp(min=0)[:, top:]
            prefix = {"input_ids": prefix_ids.to(device), "attention_mask": prefix_mask.to(device),
                      "position_ids": pos_p.to(device), "use_cache": True,
                      **({cache_name: cache} if cache is not None else {}), **last_only}
            cache = _call(lm, head, prefix)[0].get(cache_name)
        # every answer of these groups: (group row, group, answer), scored in chunks of similar suffix length
        answers = sorted(((r, i, k) for r, i in enumerate(idx) for k in range(len(encoded[i]))),
                         key=lambda t: len(encoded[t[1]][t[2]]["input_ids"]) - shared[t[1]])
        sizes = [len(encoded[i][k]["input_ids"]) - shared[i] for _, i, k in answers]
        spans = length_chunks(sizes, chunk)
        for c, end in spans:
            part = answers[c:end]
            rows = [(encoded[i][k]["input_ids"][shared[i]:], encoded[i][k]["labels"][shared[i]:], shared[i])
                    for _, i, k in part]
            width_s = max(len(ids) for ids, _, _ in rows)
            ids = torch.full((len(rows), width_s), pad, dtype=torch.long)
            labels = torch.full((len(rows), width_s), IGNORE, dtype=torch.long)
            mask = torch.zeros((len(rows), width_s), dtype=torch.long)
            positions = torch.zeros((len(rows), width_s), dtype=torch.long)
            for j, (sid, slab, start) in enumerate(rows):
                n = len(sid)
                ids[j, :n], labels[j, :n], mask[j, :n] = torch.tensor(sid), torch.tensor(slab), 1
                positions[j] = start + torch.arange(width_s)
            owner = [r for r, _, _ in part]
            part_cache = None
            if cache is not None:
                part_cache = copy.deepcopy(cache) if end < len(answers) else cache  # the last chunk takes it
                part_cache.batch_select_indices(torch.tensor(owner, device=device))
            inputs = {"input_ids": ids.to(device), "attention_mask": torch.cat([prefix_mask[owner], mask], 1).to(device),
                      "position_ids": positions.to(device), cache_name: part_cache, "use_cache": part_cache is not None}
            states = _call(lm, head, inputs)[1]
            labels = labels.to(device)
            stats = TokenStats.from_logits(states, labels) if head is None else TokenStats.from_hidden(states, head,
                                                                                                       labels)
            for (_, i, k), value in zip(part, stats.mean_nll.double().tolist()):
                out[i][k] = value
    return out


def length_chunks(sizes: list[int], most: int, slack: float = 1.15, tokens: int = 8) -> list[tuple[int, int]]:
    """``(start, end)`` spans over ``sizes`` (sorted ascending) of at most ``most`` rows each, a span ending before
    the first row longer than both ``slack`` x its first row and its first row + ``tokens``: every row of a span is
    padded to its longest, and on a CPU padded tokens cost what real ones do (TOFU's answers: 31% of the scored
    tokens were padding in spans of 32), while a few tokens more spare a call."""
    spans, start = [], 0
    for end in range(1, len(sizes) + 1):
        if end == len(sizes) or end - start == most or sizes[end] > max(slack * sizes[start], sizes[start] + tokens):
            spans.append((start, end))
            start = end
    return spans


def agree(a: list[list[float]], b: list[list[float]], tol: float = 1e-4) -> bool:
    return all(len(x) == len(y) and all(abs(u - v) <= tol * max(1.0, abs(v)) for u, v in zip(x, y))
               for x, y in zip(a, b))

