"""Plain supervised fine-tuning: the "learn" stage that makes the target model to unlearn from."""

from __future__ import annotations

from torch import Tensor

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod


class Finetune(UnlearningMethod):
    """L = CE(forget answers) + retain_weight * CE(retain answers): descend on everything (learn stage)."""

    default_retain = "nll"

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return stats.weighted_ce(batch.get("weight"))
