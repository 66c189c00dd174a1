"""SatImp (Yang et al. 2025, "Exploring Criteria of Loss Reweighting to Enhance LLM Unlearning", arXiv 2505.11953):
gradient ascent whose token weights combine saturation and importance, sg(p)^beta1 (1 - sg(p))^beta2, so tokens the
model is sure of (p near 1) and tokens already unlearned (p near 0) both weigh little.

    w_t = sg(p_t)^beta1 * (1 - sg(p_t))^beta2
    L_f = -(sum_t w_t CE_t) / (number of answer tokens)          (tokens of the whole batch, flattened)
    L   = forget_weight * L_f + retain_weight * CE_r

Defaults from open-unlearning's ``configs/trainer/SatImp.yaml``: beta1 5, beta2 1, gamma = forget_weight 0.1,
alpha = retain_weight 1, retain NLL (its Python class has gamma and alpha the other way round; the YAML is what runs,
and this project follows it); the loss is its ``src/trainer/utils.py`` compute_satimp_loss.
"""

from __future__ import annotations

from torch import Tensor

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod, positive
from lit_unlearn.methods.wga import token_prob, weighted_ascent


class SatImp(UnlearningMethod):
    """L_f = -mean_t sg(p_t)^beta1 (1 - sg(p_t))^beta2 CE_t (module docstring)."""

    default_retain = "nll"

    def __init__(self, *args, beta1: float = 5.0, beta2: float = 1.0, forget_weight: float = 0.1, **kwargs):
        """
        Args:
            beta1: exponent of p (the importance of tokens the model knows; > 0).
            beta2: exponent of 1 - p (the saturation of tokens already unlearned; > 0).
            forget_weight: weight of L_f (open-unlearning's gamma, 0.1).
        """
        super().__init__(*args, forget_weight=forget_weight, **kwargs)
        positive(beta1=beta1, beta2=beta2)
        self.beta1, self.beta2 = beta1, beta2

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        p = token_prob(stats)
        return weighted_ascent(stats, p ** self.beta1 * (1 - p) ** self.beta2, batch.get("weight"))
