"""CE-U, cross-entropy unlearning (Yang et al. 2025, "CE-U: Cross Entropy Unlearning", arXiv 2503.01224): instead of
ascending on the answer token, descend towards the model's own distribution with the answer token removed.

At each answer position t with logits z_t and answer token y_t:

    q_t = softmax(sg(z_t) with z_t[y_t] set to -inf)            (what the model believes, minus the answer)
    L_f = mean over answer positions of  -sum_v q_t[v] log softmax(z_t)[v]

The first ``ignore_first`` answer tokens of each row are left out (open-unlearning's ``ignore_first_n_answer_tokens``
1, after the paper's training settings; ``configs/trainer/CEU.yaml``, ``src/trainer/unlearn/ceu.py``). The loss is
forget-only there (no retain term, no reference model); this project's default keeps that (``retain: none``). Its
gradient is bounded (a cross-entropy towards a fixed target), unlike gradient ascent's.
"""

from __future__ import annotations


import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod


def answer_positions(stats: TokenStats, skip_first: int = 0) -> Tensor:
    """(B, T) bool: the answer positions of each row, its first ``skip_first`` left out."""
    mask = stats.mask.bool()
    return mask & (mask.long().cumsum(-1) > skip_first)


class CEU(UnlearningMethod):
    """L_f = CE(z, softmax(sg(z) without the answer token)) (module docstring)."""

    default_retain = "none"

    def __init__(self, *args, ignore_first: int = 1, **kwargs):
        """
        Args:
            ignore_first: answer tokens at the start of each row left out of the loss (>= 0).
        """
        super().__init__(*args, **kwargs)
        if ignore_first < 0:
            raise MethodError(f"--model.ignore_first must be >= 0, got {ignore_first}")
        self.ignore_first = ignore_first

    @property
    def needs_logits(self) -> bool:
        return True  # the target is a distribution over the whole vocabulary

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        keep = answer_positions(stats, self.ignore_first)
        if not keep.any():
            return stats.logits.sum() * 0.0
        z = stats.logits[keep].float()
        target = z.detach().scatter(-1, stats.labels[keep].unsqueeze(-1), float("-inf")).softmax(-1)
        per_token = -(target * F.log_softmax(z, -1)).sum(-1)
        weight = batch.get("weight")
        if weight is not None:  # per-row weights act on each row's tokens
            per_token = per_token * weight.to(z.dtype)[:, None].expand_as(keep)[keep]
        return per_token.mean()



