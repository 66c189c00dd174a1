"""Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868) and SimNPO (Fan et al. 2024, arXiv 2410.07163).

NPO:    L_f = -(2/beta) mean_i w_i log sigma(beta * (NLL_seq,theta(i) - NLL_seq,ref(i))),  beta = 0.1
SimNPO: L_f = -(2/beta) mean_i w_i log sigma(beta * (NLL_seq,theta(i) / |y_i| - gamma)),   beta = 2.5, gamma = 0

NLL_seq is the **sum** of answer-token NLL of a row (so NPO's scale grows with answer length); SimNPO divides it by
the answer length |y| and needs no reference model. SimNPO follows docs/methods.md, ``beta * (NLL/|y| - gamma)``;
the paper's form ``beta*NLL/|y| - gamma`` is the same for the default gamma = 0. w_i are per-row weights (1 unless
the batch carries ``weight``). The NPO reference is the model before unlearning: the adapter disabled, or per-row
NLLs cached once (``reference: cached``). The default retain term is none (the pure loss); nll gives NPO+GD and kl
NPO+KL.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.core.scoring import TokenStats, row_mean
from lit_unlearn.methods.base import UnlearningMethod


class NPO(UnlearningMethod):
    """NPO with a selectable retain term (none / nll / kl)."""

    needs_reference = True
    default_retain = "none"

    def __init__(self, *args, beta: float = 0.1, **kwargs):
        """
        Args:
            beta: NPO inverse temperature; as beta -> 0 the loss tends to gradient ascent on NLL_seq.
        """
        super().__init__(*args, **kwargs)
        self.beta = beta

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        ref = self.reference_seq_nll(batch)
        return row_mean(-(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.seq_nll - ref)), batch.get("weight"))


class SimNPO(UnlearningMethod):
    """Reference-free NPO on the length-normalised answer NLL."""

    default_retain = "none"

    def __init__(self, *args, beta: float = 2.5, gamma: float = 0.0, **kwargs):
        """
        Args:
            beta: inverse temperature.
            gamma: reward margin subtracted from the normalised NLL.
        """
        super().__init__(*args, **kwargs)
        self.beta, self.gamma = beta, gamma

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        per_row = -(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.mean_nll - self.gamma))
        return row_mean(per_row, batch.get("weight"))
