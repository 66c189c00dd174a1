"""Token scores for token-level unlearning (TNPO, docs/methods.md section 5): which answer tokens carry the forget
set's signal.

    d = mean_i g_forget(i) - mean_j g_retain(j)        (per-sample gradients of the rows' answer CE)
    score(x_t) = d^T grad l(x_t)                       (l(x_t): the NLL of answer token t)

``d^T grad l(x_t)`` is the directional derivative of l(x_t) along d, so every token of a batch is scored by two
forwards, the central difference (l_t(theta + eps d) - l_t(theta - eps d)) / (2 eps) with eps = 0.01 / |d|, instead
of one backward per token (tests/test_influence.py checks it against those backwards: within 1% of the largest
score, the limit the float32 rounding of the forwards sets; enough to rank tokens). ``select_tokens`` keeps each row's top tokens
and widens them by a window (+-3), within the answer. The mask is aligned with ``input_ids`` / ``labels`` (1 = a
selected token), the form ``TNPO`` reads from a batch's ``token_mask``.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn

from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.influence.gradients import per_sample_gradients, trainable_linears


def mean_gradient(model: nn.Module, batches, row_losses) -> Tensor:
    """(D,) mean per-sample gradient over the rows of ``batches`` (``row_losses(batch)`` -> (B,) losses)."""
    total, n = None, 0
    for batch in batches:
        g = per_sample_gradients(model, lambda b=batch: row_losses(b))
        total = g.sum(0) if total is None else total + g.sum(0)
        n += g.size(0)
    return total / max(1, n)


@contextmanager
def shifted(model: nn.Module, direction: Tensor, eps: float):
    """The trainable linear weights moved by ``eps * direction`` (in ``trainable_linears`` order) in the block."""
    linears = trainable_linears(model)
    saved, start = [], 0
    with torch.no_grad():
        for _, module in linears:
            n = module.weight.numel()
            saved.append(module.weight.detach().clone())
            module.weight.add_(eps * direction[start:start + n].view_as(module.weight).to(module.weight))
            start += n
    try:
        yield
    finally:
        with torch.no_grad():
            for (_, module), w in zip(linears, saved):
                module.weight.copy_(w)


@torch.no_grad()
def token_scores(model: nn.Module, token_nll, batch: dict, direction: Tensor, eps: float | None = None) -> Tensor:
    """(B, T) score of every position's token (aligned with ``input_ids``; 0 off the answer): d^T grad l(x_t) by a
    central difference. ``token_nll(batch)`` -> (B, T) NLL of the token each position predicts (position t
    predicts token t + 1, as :class:`~lit_unlearn.core.scoring.TokenStats` holds it)."""
    eps = eps if eps is not None else 1e-2 / max(float(direction.norm()), 1e-12)
    with shifted(model, direction, eps):
        plus = token_nll(batch).double()
    with shifted(model, direction, -eps):
        minus = token_nll(batch).double()
    per_position = (plus - minus) / (2 * eps)
    scores = torch.zeros_like(per_position)
    scores[:, 1:] = per_position[:, :-1]  # the score of token t + 1 sits at position t: align with input_ids
    return scores * (batch["labels"] != IGNORE)


def select_tokens(scores: Tensor, labels: Tensor, top: int = 5, window: int = 3) -> Tensor:
    """(B, T) long mask: each row's ``top`` highest-scoring answer tokens, each widened by ``window`` tokens either
    side, kept within the answer."""
    answer = labels != IGNORE
    masked = scores.masked_fill(~answer, float("-inf"))
    out = torch.zeros_like(labels, dtype=torch.long)
    for i in range(scores.size(0)):
        n = int(answer[i].sum())
        if n == 0:
            continue
        for t in masked[i].topk(min(top, n)).indices.tolist():
            out[i, max(0, t - window):t + window + 1] = 1
    return out * answer
