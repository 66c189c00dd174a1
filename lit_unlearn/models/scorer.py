"""Scoring a causal LM: what every evaluator and every training loss asks of a model, with no method around it.

A :class:`Scorer` holds a model (a plain base, a base with a saved adapter folded in, a merged export, or a model
with a trainable adapter), its tokenizer and the adapter object if any, and computes:

- :meth:`~Scorer.forward` / :meth:`~Scorer.teacher_forced`: per-token answer scores of a batch
  (:class:`~lit_unlearn.core.scoring.TokenStats`: NLL sums and token counts, per-token log-probs, the logits when
  asked), through the lean head where the model qualifies (:mod:`lit_unlearn.models.head`);
- :meth:`~Scorer.reference`: the same with the adapter disabled and dropout off (the reference model of NPO / KL);
- :meth:`~Scorer.answer_nlls`: mean answer NLL of many (prompt, answer) pairs, length-sorted in chunks;
- :meth:`~Scorer.next_token_logits`: the logits after each prompt at chosen token ids (multiple-choice letters),
  each row read at its last real position, only those vocabulary rows through the head;
- :meth:`~Scorer.generate`: batched greedy generation (left padding, KV cache, rows leave at EOS;
  :mod:`lit_unlearn.models.generate`).

:class:`lit_unlearn.eval.module.ScoredModel` (what ``eval.py`` evaluates) and every unlearning method hold one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import IGNORE, collate, encode_batch
from lit_unlearn.models.generate import greedy_generate
from lit_unlearn.models.head import capture_head_input, resolve_lean_head
from lit_unlearn.models.modes import eval_mode
from lit_unlearn.models.shared_prefix import agree, score_groups


class Scorer:
    def __init__(self, lm: nn.Module, tokenizer, adapter=None, max_length: int = 256, lean_head: bool = True):
        """
        Args:
            lm: the causal LM (with its adapter applied, if any).
            tokenizer: its tokenizer (a pad token set).
            adapter: the :class:`~lit_unlearn.adapters.base.Adapter` applied to ``lm`` (extra call arguments,
                :meth:`reference` disables it); None: a plain model.
            max_length: longest sequence in tokens (prompts are cut from the left to it).
            lean_head: score answer tokens from the head's input at answer positions only (same numbers, far less
                memory) where the model qualifies; False: always the full logits.
        """
        self.lm, self.tokenizer, self.adapter = lm, tokenizer, adapter
        self.max_length, self.lean_head = max_length, lean_head
        self._head: tuple[nn.Module | None] | None = None  # (lean head or None,) once decided
        self._shared_prefix: bool | None = None  # whether answers to one prompt may share its run; once decided

    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    def model_inputs(self, batch: dict) -> dict:
        """The model's call arguments for ``batch``: its ids and mask, plus what the adapter adds from the batch's
        other keys (``Adapter.forward_kwargs``). Virtual-token adapters rewrite the call inside the model and give
        back outputs aligned with ``input_ids``."""
        inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"], "use_cache": False}
        if self.adapter is not None:
            inputs.update(self.adapter.forward_kwargs(batch))
        return inputs

    def head_for(self, inputs: dict) -> nn.Module | None:
        """The head for :meth:`TokenStats.from_hidden`, or None (``lean_head`` off, or the model does not qualify:
        decided once, on the first batch, by :func:`~lit_unlearn.models.head.resolve_lean_head`)."""
        if not self.lean_head:
            return None
        if self._head is None:
            self._head = (resolve_lean_head(self.lm, inputs, probe_one_row=len(inputs) == 3),)
        return self._head[0]

    def forward(self, batch: dict, logits: bool = False, moments: bool = False) -> TokenStats:
        """Per-token results of ``batch`` (with gradient where the caller has it); ``logits=True`` keeps the full
        (B, T, V) logits; ``moments=True`` adds each answer position's log-prob mean and spread over the
        vocabulary (Min-K%++), from the same head products as the log-probs."""
        states, head = self.run(self.model_inputs(batch), lean=not logits)
        if head is None:
            return TokenStats.from_logits(states, batch["labels"], moments=moments)
        return TokenStats.from_hidden(states, head, batch["labels"], moments=moments)

    def run(self, inputs: dict, lean: bool = True) -> tuple[Tensor, nn.Module | None]:
        """One call of the model: ``(logits, None)``, or with ``lean`` and a qualifying head ``(the head's input,
        head)``, the (B, T, V) product skipped."""
        head = self.head_for(inputs) if lean else None
        if head is None:
            return self.lm(**inputs).logits, None
        with capture_head_input(head) as seen:
            self.lm(**inputs)
        return seen[-1], head

    @torch.no_grad()
    def teacher_forced(self, batch: dict, logits: bool = False, moments: bool = False) -> TokenStats:
        """:meth:`forward` without gradient: the evaluators' teacher-forced scores."""
        return self.forward(batch, logits=logits, moments=moments)

    @torch.no_grad()
    def reference(self, batch: dict, logits: bool = False) -> TokenStats:
        """The reference model's per-token results: the adapter disabled, dropout off, no gradient."""
        if self.adapter is None:
            raise ValueError("the reference model is the adapter disabled: this model has no adapter")
        with self.adapter.disabled(self.lm), eval_mode(self.lm):
            return self.forward(batch, logits=logits)

    def stats_for(self, batches: list[dict | None], logits: bool = False, fuse: bool = True,
                  forward: Callable[[dict, bool], TokenStats] | None = None) -> list[TokenStats | None]:
        """Per-batch :class:`TokenStats` (None for a None batch); with ``fuse`` all batches go through one forward
        (:func:`fuse_batches`). ``forward`` replaces :meth:`forward` (a method's own)."""
        forward = forward or self.forward
        present = [b for b in batches if b is not None]
        if not fuse or len(present) < 2:
            return [forward(b, logits) if b is not None else None for b in batches]
        stats = forward(fuse_batches(present, self.tokenizer.pad_token_id), logits)
        out, start = [], 0
        for b in batches:
            if b is None:
                out.append(None)
                continue
            n, w = b["input_ids"].size(0), b["input_ids"].size(1)
            out.append(stats.rows(slice(start, start + n), w))
            start += n
        return out

    def encode(self, prompts: list[str], answers: list[str]) -> dict:
        """Tokenize (prompt, answer) pairs the way the data modules do, on the model's device."""
        batch = encode_batch(self.tokenizer, prompts, answers, self.max_length)
        device = self.device
        return {k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in batch.items()}

    @torch.no_grad()
    def answer_nlls(self, prompts: list[str], groups: list[list[str]], chunk: int = 32) -> list[list[float]]:
        """L (mean answer NLL) of every answer in ``groups[i]`` to ``prompts[i]``. Where the model allows it, the
        tokens a group's sequences share run once (:mod:`lit_unlearn.models.shared_prefix`); otherwise all pairs are
        scored together in chunks of ``chunk`` rows of similar length (little padding)."""
        if self.shares_prefix(prompts, groups):
            head = self.head_for(self.model_inputs(self.encode(prompts[:1], groups[0][:1] or [""])))
            return score_groups(self.lm, self.tokenizer, prompts, groups, head, self.device)
        return self.answer_nlls_pairwise(prompts, groups, chunk)

    def shares_prefix(self, prompts: list[str], groups: list[list[str]]) -> bool:
        """Whether :meth:`answer_nlls` runs each group's shared prefix once: decided on the first group of two or
        more answers by scoring it both ways (they must agree to 1e-4); never for an adapter that acts on whole
        sequences (virtual tokens, interventions: not ``mergeable``), nor for a call with a sequence over
        ``max_length`` (the pairwise path cuts prompts from the left)."""
        if self._shared_prefix is False or not prompts:
            return False
        if any(len(self.tokenizer(p + a)["input_ids"]) >= self.max_length for p, g in zip(prompts, groups) for a in g):
            return False
        if self._shared_prefix is None:
            if self.adapter is not None and not type(self.adapter).mergeable:
                self._shared_prefix = False
                return False
            first = next((i for i, g in enumerate(groups) if len(g) >= 2), None)
            if first is None:
                return False
            probe_p, probe_g = prompts[first:first + 1], groups[first:first + 1]
            head = self.head_for(self.model_inputs(self.encode(probe_p, probe_g[0][:1])))
            try:
                fast = score_groups(self.lm, self.tokenizer, probe_p, probe_g, head, self.device)
            except Exception:  # a model whose cache or position ids do not take this path: the pairwise one
                fast = None
            self._shared_prefix = fast is not None and agree(fast, self.answer_nlls_pairwise(probe_p, probe_g))
        return self._shared_prefix

    @torch.no_grad()
    def answer_nlls_pairwise(self, prompts: list[str], groups: list[list[str]], chunk: int = 32) -> list[list[float]]:
        """:meth:`answer_nlls` with every (prompt, answer) pair scored whole, in length-sorted chunks."""
        pairs = [(p, a) for p, g in zip(prompts, groups) for a in g]
        order = sorted(range(len(pairs)), key=lambda k: len(pairs[k][0]) + len(pairs[k][1]))
        values = [0.0] * len(pairs)
        for s in range(0, len(order), chunk):
            idx = order[s:s + chunk]
            batch = self.encode([pairs[k][0] for k in idx], [pairs[k][1] for k in idx])
            for k, v in zip(idx, self.teacher_forced(batch).mean_nll.double().tolist()):
                values[k] = v
        out, start = [], 0
        for g in groups:
            out.append(values[start:start + len(g)])
            start += len(g)
        return out

    @torch.no_grad()
    def next_token_logits(self, prompts: list[str], token_ids: list[int], chunk: int = 32) -> Tensor:
        """(N, len(token_ids)) float32 logits of the token that follows each prompt, at ``token_ids`` only. Prompts
        are tokenized as the data modules tokenize them, batched by length with right padding, and read at each
        row's last real position; with the lean head only those positions and those vocabulary rows go through the
        head. Dropout is off."""
        enc = [self.tokenizer(p, add_special_tokens=True)["input_ids"][-self.max_length:] for p in prompts]
        order = sorted(range(len(enc)), key=lambda i: len(enc[i]))
        out = torch.zeros(len(enc), len(token_ids), dtype=torch.float32)
        device = self.device
        ids = torch.tensor(token_ids, device=device)
        with eval_mode(self.lm):
            for s in range(0, len(order), chunk):
                idx = order[s:s + chunk]
                batch = collate([{"input_ids": enc[i], "labels": enc[i]} for i in idx], self.tokenizer.pad_token_id)
                batch = {k: batch[k].to(device) for k in ("input_ids", "attention_mask")}
                states, head = self.run(self.model_inputs(batch))
                # each row's last real token; soft prompts prepend virtual positions, so count from the end
                last = batch["attention_mask"].sum(-1) - 1 + states.size(1) - batch["input_ids"].size(1)
                at = states[torch.arange(len(idx), device=device), last]
                z = at[:, ids] if head is None else F.linear(at.to(head.weight.dtype), head.weight[ids],
                                                             None if head.bias is None else head.bias[ids])
                out[idx] = z.float().cpu()
        return out

    def generate(self, prompts: list[str], max_new_tokens: int, batch_size: int = 16) -> list[str]:
        """Greedy continuations of ``prompts`` (adapter on), batched with left padding; the prompts' common first
        tokens run once unless the adapter acts on whole sequences (not ``mergeable``)."""
        share = self.adapter is None or type(self.adapter).mergeable
        return greedy_generate(self.lm, self.tokenizer, prompts, max_new_tokens, batch_size, share_head=share)


def fuse_batches(batches: list[dict], pad_id: int) -> dict:
    """One batch of the rows of ``batches`` (forget and retain rows in one forward), right-padded to the widest:
    ``input_ids`` with ``pad_id``, ``labels`` with -100, and every other tensor whose second dimension is the
    sequence (a token mask, intervention positions per token) with 0; per-row tensors (weights) and lists (ids,
    prompts) are concatenated, so every key of the batches reaches the adapter's call arguments."""
    width = max(b["input_ids"].size(1) for b in batches)
    fused: dict = {}
    for key in batches[0]:
        values = [b.get(key) for b in batches]
        if any(v is None for v in values):
            continue
        if all(isinstance(v, Tensor) for v in values):
            seq = all(v.dim() >= 2 and v.size(1) == b["input_ids"].size(1) for v, b in zip(values, batches))
            if seq:
                fill = pad_id if key == "input_ids" else IGNORE if key == "labels" else 0
                values = [F.pad(v, (0, 0) * (v.dim() - 2) + (0, width - v.size(1)), value=fill) for v in values]
            fused[key] = torch.cat(values)
        elif all(isinstance(v, list) for v in values):
            fused[key] = [x for v in values for x in v]
        else:
            fused[key] = values[0]
    return fused
