"""Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868) and SimNPO (Fan et al. 2024, arXiv 2410.07163).

NPO:    L_f = -(2/beta) mean_i log sigma(beta * (NLL_seq,theta(i) - NLL_seq,ref(i))),  beta = 0.1
SimNPO: L_f = -(2/beta) mean_i log sigma(beta * (NLL_seq,theta(i) / |y_i| - gamma)),   beta = 2.5, gamma = 0

NLL_seq is the **sum** of answer-token NLL of a row (so NPO's scale grows with answer length); SimNPO divides it by
the answer length |y| and needs no reference model. SimNPO follows METHODS.md, ``beta * (NLL/|y| - gamma)``; the
paper's form ``beta*NLL/|y| - gamma`` is the same for the default gamma = 0.
The NPO reference is the model before unlearning: the adapter disabled, or per-row NLLs cached once
(``reference: cached``). ``retain`` adds GD (nll) or KL (kl) on retain rows; the default is the pure loss.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.eval.metrics import TokenStats
from lit_unlearn.methods.base import Retain, UnlearningMethod


class NPO(UnlearningMethod):
    """NPO with a selectable retain term (none / nll / kl)."""

    needs_reference = True

    def __init__(self, *args, beta: float = 0.1, retain: Retain = "none", **kwargs):
        """
        Args:
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
            beta: NPO inverse temperature; as beta -> 0 the loss tends to gradient ascent on NLL_seq.
        """
        super().__init__(*args, retain=retain, **kwargs)
        self.beta = beta

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        ref = self.reference_seq_nll(batch)
        per_row = -(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.seq_nll - ref))
        if "weight" in batch:
            per_row = per_row * batch["weight"].to(per_row)
        return per_row.mean()


class SimNPO(UnlearningMethod):
    """Reference-free NPO on the length-normalised answer NLL."""

    def __init__(self, *args, beta: float = 2.5, gamma: float = 0.0, retain: Retain = "none", **kwargs):
        """
        Args:
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
            beta: inverse temperature.
            gamma: reward margin subtracted from the normalised NLL.
        """
        super().__init__(*args, retain=retain, **kwargs)
        self.beta, self.gamma = beta, gamma

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        per_row = -(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.mean_nll - self.gamma))
        if "weight" in batch:
            per_row = per_row * batch["weight"].to(per_row)
        return per_row.mean()
