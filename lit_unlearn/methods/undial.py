"""UNDIAL, unlearning via self-distillation on adjusted logits (Dong et al. 2025, "UNDIAL: Self-Distillation with
Adjusted Logits for Robust Unlearning in Large Language Models", arXiv 2402.10052): the model is distilled towards the
reference model (before unlearning) whose logit of the answer token is lowered by ``beta``.

At each answer position t of a forget row, with reference logits z^ref_t and answer token y_t:

    q_t = softmax(z^ref_t - beta * onehot(y_t))                  (the teacher; no gradient)
    L_f = mean over answer positions of  -sum_v q_t[v] log softmax(z_t)[v]
    L   = forget_weight * L_f + retain_weight * retain term

Defaults from open-unlearning's ``configs/trainer/UNDIAL.yaml``: beta 10 ("the strength of penalty for memorized
tokens"), gamma = forget_weight 1, alpha = retain_weight 0 (so no retain term: ``retain: none`` here), lr 1e-4; the
loss is its ``src/trainer/utils.py`` compute_undial_loss. Departure: that code averages over every position of the
sequence, prompt and padding included (where the teacher is the unadjusted reference); here the mean is over answer
positions, the tokens to forget, so prompt positions and padding do not dilute the loss with a batch's shape. The
teacher is the adapter-disabled model; with ``reference: cached`` each row's reference log-probabilities at its answer
positions are computed once (|answer| x V floats per row on the CPU).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod, positive


class UNDIAL(UnlearningMethod):
    """L_f = CE(z, softmax(z_ref - beta * onehot(y))) at answer positions (module docstring)."""

    default_retain = "none"
    needs_reference = True

    def __init__(self, *args, beta: float = 10.0, **kwargs):
        """
        Args:
            beta: how far the answer token's reference logit is lowered in the teacher (> 0).
        """
        super().__init__(*args, **kwargs)
        positive(beta=beta)
        self.beta = beta

    @property
    def needs_logits(self) -> bool:
        return True  # distillation over the whole vocabulary

    def teacher(self, batch: dict, stats: TokenStats):
        """(N, V) the teacher's distribution at the batch's N answer positions, in row order."""
        if self.reference == "cached":
            logq = self.reference_cache.lookup_rows(batch, self._reference_answer_logprobs).to(stats.logits.device)
        else:
            ref = self.reference_stats(batch, logits=True)
            logq = F.log_softmax(ref.logits.float(), -1)[ref.mask]
        y = stats.labels[stats.mask.bool()]
        return logq.scatter_add(-1, y.unsqueeze(-1), logq.new_full((len(y), 1), -self.beta)).softmax(-1)

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        mask = stats.mask.bool()
        z = stats.logits[mask].float()
        per_token = -(self.teacher(batch, stats) * F.log_softmax(z, -1)).sum(-1)
        weight = batch.get("weight")
        if weight is not None:
            per_token = per_token * weight.to(z.dtype)[:, None].expand_as(mask)[mask]
        return per_token.mean()
