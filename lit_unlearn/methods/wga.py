"""WGA, weighted gradient ascent (Wang et al. 2025, "Rethinking LLM Unlearning Objectives: A Gradient Perspective
and Go Beyond", arXiv 2502.19301): gradient ascent whose tokens weigh by the model's own (detached) probability of
them, so tokens the model already got wrong stop pulling.

    w_t = sg(p_t)^beta,      p_t = exp(-CE_t) the probability of answer token t
    L_f = -(sum_t w_t CE_t) / (number of answer tokens)          (tokens of the whole batch, flattened)
    L   = forget_weight * L_f + retain_weight * CE_r

Defaults from open-unlearning's ``configs/trainer/WGA.yaml`` (beta 1, gamma = forget_weight 1, alpha =
retain_weight 1, retain NLL; its loss ``src/trainer/utils.py`` compute_wga_loss). With per-row ``weight`` in the batch
(influence weights) each row's weighted sum is scaled by it before the mean.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod, positive


def weighted_ascent(stats: TokenStats, token_weight: Tensor, row_weight: Tensor | None) -> Tensor:
    """-(sum over answer tokens of w_t * CE_t) / (answer tokens), the batch flattened; ``row_weight`` scales rows."""
    terms = token_weight.detach() * stats.token_nll * stats.mask
    if row_weight is not None:
        terms = terms * row_weight.to(terms.dtype).unsqueeze(-1)
    return -terms.sum() / stats.mask.sum().clamp(min=1)


def token_prob(stats: TokenStats) -> Tensor:
    """(B, T) sg(p_t): the probability of each answer token, detached (0 off the answer)."""
    return torch.exp(-stats.token_nll.detach()) * stats.mask


class WGA(UnlearningMethod):
    """L_f = -mean_t sg(p_t)^beta CE_t (module docstring)."""

    default_retain = "nll"

    def __init__(self, *args, beta: float = 1.0, **kwargs):
        """
        Args:
            beta: exponent of the token probability in the weight (> 0; open-unlearning: 1).
        """
        super().__init__(*args, **kwargs)
        positive(beta=beta)
        self.beta = beta

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return weighted_ascent(stats, token_prob(stats) ** self.beta, batch.get("weight"))
