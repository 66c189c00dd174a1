"""Gradient ascent and its retain-regularised variants (docs/methods.md, sections 1 and 2).

- ``GradAscent``:   L = -CE_f                                        (retain: none)
- ``GradDiff``:     L = -CE_f + retain_weight * CE_r                 (retain: nll; "gradient ascent descent", GD)
- ``GradAscentKL``: L = -CE_f + retain_weight * KL(p_ref || p_theta) on retain answer tokens (retain: kl)

CE is the mean token cross-entropy over answer tokens (HF ``.loss``); with per-row ``weight`` in the batch it is
mean_i(w_i * CE_i) instead. The KL reference is the adapter-disabled model. The three differ only in their default
retain term; any of them takes any ``retain``.
"""

from __future__ import annotations

from torch import Tensor

from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod


class GradAscent(UnlearningMethod):
    """L = -CE(forget answers)."""

    default_retain = "none"

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return -stats.weighted_ce(batch.get("weight"))


class GradDiff(GradAscent):
    """L = -CE_f + retain_weight * CE_r."""

    default_retain = "nll"


class GradAscentKL(GradAscent):
    """L = -CE_f + retain_weight * KL(p_ref || p_theta) on retain answer positions."""

    default_retain = "kl"
