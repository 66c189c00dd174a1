"""Plain supervised fine-tuning: the "learn" stage that makes the target model to unlearn from."""

from __future__ import annotations

from torch import Tensor

from lit_unlearn.eval.metrics import TokenStats
from lit_unlearn.methods.base import Retain, UnlearningMethod


class Finetune(UnlearningMethod):
    """L = CE(forget answers) + retain_weight * CE(retain answers): descend on everything (learn stage)."""

    def __init__(self, *args, retain: Retain = "nll", **kwargs):
        """
        Args:
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
        """
        super().__init__(*args, retain=retain, **kwargs)

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return stats.weighted_ce(batch.get("weight"))
