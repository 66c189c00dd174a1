"""Negative Preference Optimization (Zhang et al. 2024, arXiv 2404.05868) and SimNPO (Fan et al. 2024, arXiv 2410.07163).

NPO:    L_f = -(2/beta) mean_i w_i log sigma(beta * (NLL_seq,theta(i) - NLL_seq,ref(i))),  beta = 0.1
SimNPO: L_f = -(2/beta) mean_i w_i log sigma(beta * (NLL_seq,theta(i) / |y_i| - gamma)),   beta = 2.5, gamma = 0

NLL_seq is the **sum** of answer-token NLL of a row (so NPO's scale grows with answer length); SimNPO divides it by
the answer length |y| and needs no reference model. SimNPO follows docs/methods.md, ``beta * (NLL/|y| - gamma)``;
the paper's form ``beta*NLL/|y| - gamma`` is the same for the default gamma = 0. w_i are per-row weights (1 unless
the batch carries ``weight``). The NPO reference is the model before unlearning: the adapter disabled, or per-row
NLLs cached once (``reference: cached``).

Defaults follow open-unlearning (locuslab/open-unlearning), the field's reference implementation; each loss is
``forget_weight * L_f + retain_weight * CE_r``, its ``gamma * forget + alpha * retain``
(``src/trainer/unlearn/npo.py:31``, ``simnpo.py:30``):

- NPO: beta 0.1, forget weight 1, **retain NLL of weight 1** (``configs/trainer/NPO.yaml:6-9``): the default retain
  term is ``nll`` (NPO + GD); ``retain: none`` gives the pure loss of the NPO paper, ``kl`` NPO + KL.
- SimNPO: **beta 4.5, forget weight 0.125**, margin 0, retain NLL of weight 1 (``configs/trainer/SimNPO.yaml:6-10``;
  the SimNPO authors' TOFU forget10 recipe, OPTML-Group/Unlearn-Simple ``TOFU/README.md:31``; their forget05 recipe
  is 0.1375 / beta 2.5, ``TOFU/README.md:28``). The spec's beta 2.5 is that forget05 value.
- The originals train the full model at lr 1e-5 for 10 epochs with one epoch of linear warm-up
  (``configs/experiment/unlearn/tofu/default.yaml:44-47``); a LoRA run takes a higher lr (the TOFU mini recipe:
  docs/tofu.md).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from lit_unlearn.core.scoring import TokenStats, row_mean
from lit_unlearn.methods.base import UnlearningMethod, positive


class NPO(UnlearningMethod):
    """NPO with a selectable retain term (none / nll / kl)."""

    needs_reference = True
    default_retain = "nll"

    def __init__(self, *args, beta: float = 0.1, **kwargs):
        """
        Args:
            beta: NPO inverse temperature (> 0); as beta -> 0 the loss tends to gradient ascent on NLL_seq.
        """
        super().__init__(*args, **kwargs)
        positive(beta=beta)
        self.beta = beta

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        ref = self.reference_seq_nll(batch)
        return row_mean(-(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.seq_nll - ref)), batch.get("weight"))


class SimNPO(UnlearningMethod):
    """Reference-free NPO on the length-normalised answer NLL."""

    default_retain = "nll"

    def __init__(self, *args, beta: float = 4.5, gamma: float = 0.0, forget_weight: float = 0.125, **kwargs):
        """
        Args:
            beta: inverse temperature (> 0).
            gamma: reward margin subtracted from the normalised NLL.
            forget_weight: weight of the SimNPO term (open-unlearning's gamma, 0.125).
        """
        super().__init__(*args, forget_weight=forget_weight, **kwargs)
        positive(beta=beta)
        self.beta, self.gamma = beta, gamma

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        per_row = -(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.mean_nll - self.gamma))
        return row_mean(per_row, batch.get("weight"))

