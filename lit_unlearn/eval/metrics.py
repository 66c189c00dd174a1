"""Answer-level metrics shared by in-loop validation and ``eval.py``.

For each row with answer tokens y_1..y_n given prompt x (teacher forcing):

- ``nll``   = mean over rows of L, with L = (1/n) sum_t -log p(y_t | x, y_<t)   (TOFU's normalised answer NLL)
- ``prob``  = mean over rows of exp(-L)                                          (TOFU "Probability")
- ``acc``   = answer tokens whose argmax equals the gold token / all answer tokens (micro average)
- ``exact`` = rows whose every answer token is argmax-correct / rows; for classification this is label accuracy
  (a prediction that is not the label word counts as wrong).

States are sums, reduced with ``sum`` across DDP ranks, so a sharded evaluation equals a single-process one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics import Metric

from lit_unlearn.data.tokenize import IGNORE
from lit_unlearn.models.head import answer_logprobs


@dataclass
class TokenStats:
    """Per-token results of one teacher-forced forward, aligned so position t predicts ``labels[:, t]``.

    ``labels`` (B, T) are the input labels shifted left by one (the last position gets -100); shifting the labels
    rather than slicing the logits avoids a copy of the whole (B, T, V) tensor. ``token_nll`` is 0 outside
    ``mask``. ``logits`` (B, T, V) are the model's own when the forward produced them (:meth:`from_logits`);
    the memory-lean path (:meth:`from_hidden`) has none and records ``hits`` (argmax == label) instead.
    """

    logits: Tensor | None
    labels: Tensor
    token_nll: Tensor
    mask: Tensor
    hits: Tensor | None = None

    @classmethod
    def from_logits(cls, logits: Tensor, labels: Tensor) -> "TokenStats":
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        mask = labels != IGNORE
        nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), labels.reshape(-1),
                              ignore_index=IGNORE, reduction="none").view_as(labels)
        return cls(logits, labels, nll * mask, mask)

    @classmethod
    def from_hidden(cls, hidden: Tensor, head, labels: Tensor) -> "TokenStats":
        """From the head's input (B, T, H): only answer positions go through ``head``, in chunks
        (:func:`lit_unlearn.models.head.answer_logprobs`); the same numbers as :meth:`from_logits` without logits."""
        labels = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        lp, hits = answer_logprobs(hidden, head, labels)
        return cls(None, labels, -lp, labels != IGNORE, hits)

    def rows(self, sl: slice, width: int) -> "TokenStats":
        """Rows ``sl``, first ``width`` positions (splitting a fused forward back into its batches)."""
        def cut(t):
            return None if t is None else t[sl, :width]
        return TokenStats(cut(self.logits), cut(self.labels), cut(self.token_nll), cut(self.mask), cut(self.hits))

    @property
    def n_tokens(self) -> Tensor:
        """(B,) answer tokens per row."""
        return self.mask.sum(-1)

    @property
    def seq_nll(self) -> Tensor:
        """(B,) NLL_seq: the **sum** of answer-token NLL per row (NPO's per-sequence quantity)."""
        return self.token_nll.sum(-1)

    @property
    def mean_nll(self) -> Tensor:
        """(B,) answer NLL divided by answer length (SimNPO, TOFU)."""
        return self.seq_nll / self.n_tokens.clamp(min=1)

    @property
    def ce(self) -> Tensor:
        """Scalar mean token cross-entropy over all answer tokens of the batch (HF ``.loss``)."""
        return self.token_nll.sum() / self.mask.sum().clamp(min=1)

    def weighted_ce(self, weight: Tensor | None) -> Tensor:
        """mean_i(w_i * CE_i) with per-row CE_i = ``mean_nll``; equals ``ce`` only when rows have equal lengths."""
        if weight is None:
            return self.ce
        return (weight.to(self.mean_nll) * self.mean_nll).mean()

    def correct(self) -> Tensor:
        """(B, T) bool: answer positions where argmax equals the gold token."""
        if self.hits is not None:
            return self.hits & self.mask
        return (self.logits.argmax(-1) == self.labels) & self.mask


class AnswerMetrics(Metric):
    """Accumulates nll / prob / acc / exact (module docstring) over batches of :class:`TokenStats`."""

    full_state_update = False

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        for name in ("nll_sum", "prob_sum", "rows", "exact_rows", "correct_tokens", "tokens"):
            self.add_state(name, default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, stats: TokenStats) -> None:
        keep = stats.n_tokens > 0
        mean_nll = stats.mean_nll.detach().double()[keep]
        correct = stats.correct()
        self.nll_sum += mean_nll.sum()
        self.prob_sum += torch.exp(-mean_nll).sum()
        self.rows += keep.sum()
        self.exact_rows += (correct.sum(-1) == stats.n_tokens)[keep].sum()
        self.correct_tokens += correct.sum()
        self.tokens += stats.mask.sum()

    def compute(self) -> dict[str, Tensor]:
        rows, tokens = self.rows.clamp(min=1), self.tokens.clamp(min=1)
        return {"nll": self.nll_sum / rows, "prob": self.prob_sum / rows,
                "acc": self.correct_tokens / tokens, "exact": self.exact_rows / rows}
