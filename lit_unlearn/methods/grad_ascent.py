"""Gradient ascent and its retain-regularised variants (METHODS.md sections 1 and 2).

- ``GradAscent``:   L = -CE_f                                        (retain: none)
- ``GradDiff``:     L = -CE_f + retain_weight * CE_r                 (retain: nll; "gradient ascent descent", GD)
- ``GradAscentKL``: L = -CE_f + retain_weight * KL(p_ref || p_theta) on retain answer tokens (retain: kl)

CE is the mean token cross-entropy over answer tokens (HF ``.loss``); with per-row ``weight`` in the batch it is
mean_i(w_i * CE_i) instead. The KL reference is the adapter-disabled model.
"""

from __future__ import annotations

from torch import Tensor

from lit_unlearn.eval.metrics import TokenStats
from lit_unlearn.methods.base import Retain, UnlearningMethod


class GradAscent(UnlearningMethod):
    """L = -CE(forget answers)."""

    def __init__(self, *args, retain: Retain = "none", **kwargs):
        """
        Args:
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
        """
        super().__init__(*args, retain=retain, **kwargs)

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return -stats.weighted_ce(batch.get("weight"))


class GradDiff(GradAscent):
    """L = -CE_f + retain_weight * CE_r."""

    def __init__(self, *args, retain: Retain = "nll", **kwargs):
        """
        Args:
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
        """
        super().__init__(*args, retain=retain, **kwargs)


class GradAscentKL(GradAscent):
    """L = -CE_f + retain_weight * KL(p_ref || p_theta) on retain answer positions."""

    def __init__(self, *args, retain: Retain = "kl", **kwargs):
        """
        Args:
            retain: the retain term: none, nll (CE on retain answers) or kl (KL(p_ref || p_theta) on them).
        """
        super().__init__(*args, retain=retain, **kwargs)
