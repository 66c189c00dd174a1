"""PDU, primal-dual unlearning (Entesari et al. 2025, "Constrained Entropic Unlearning: A Primal-Dual Framework for
Large Language Models", arXiv 2506.05314): flatten the model's distribution on the forget answers, subject to the
retain loss staying below a bound, with the constraint's multiplier learned by dual ascent.

    L_f = mean over answer positions of (max_v z_t[v] - mean_v z_t[v])^2          (the logit margin, flattened)
    L   = forget_weight * L_f + lambda * (CE_r - epsilon)
    after each training batch (once ``dual_warmup_epochs`` epochs have passed):
        lambda <- max(0, lambda + dual_step * (CE_r - epsilon))

Defaults from open-unlearning's recommended TOFU run (``community/methods/PDU/run.sh``: initial lambda 100, dual step
5, warm-up 5 epochs, a step-wise update, ``configs/trainer/PDU.yaml`` / ``src/trainer/unlearn/pdu.py``). Departures:

- epsilon is a loss magnitude, so it is set relative to the measured scale, not copied: ``epsilon = eps_scale x the
  retain NLL of the model before unlearning`` (measured over the first ``measure_rows`` retain rows before training;
  ``metrics.json`` records it under ``measured``), following the PDU README's advice of a bound "somewhat above" the
  starting model's retain loss; ``retain_eps`` gives an absolute bound instead;
- the margin is taken at the positions that predict answer tokens (open-unlearning's mask reads the unshifted labels,
  one position later: the end-of-answer position in, the last prompt position out);
- the multiplier is updated once per training batch (a micro-batch there; the same without gradient accumulation).

The multiplier's current value lives in ``measured["pdu_dual"]``, so checkpoints carry it and a resumed run goes on
with it; ``metrics.json`` records its final value.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import dataset_batches
from lit_unlearn.methods.base import UnlearningMethod, positive
from lit_unlearn.models.modes import eval_mode


class PDU(UnlearningMethod):
    """L = forget_weight * margin^2 + lambda * (CE_r - epsilon), lambda by dual ascent (module docstring)."""

    default_retain = "nll"

    def __init__(self, *args, dual_init: float = 100.0, dual_step: float = 5.0, dual_warmup_epochs: int = 5,
                 retain_eps: float | None = None, eps_scale: float = 1.5, measure_rows: int = 64, **kwargs):
        """
        Args:
            dual_init: the multiplier lambda at the start (>= 0; open-unlearning's alpha, 100 for TOFU).
            dual_step: the dual ascent step size (> 0).
            dual_warmup_epochs: epochs before lambda starts to move (>= 0).
            retain_eps: the retain-loss bound epsilon, absolute; null: ``eps_scale`` x the measured retain NLL.
            eps_scale: epsilon in units of the starting model's retain NLL (> 0).
            measure_rows: retain rows the starting retain NLL is measured on (>= 1).
        """
        super().__init__(*args, **kwargs)
        positive(dual_step=dual_step, eps_scale=eps_scale)
        if dual_init < 0 or dual_warmup_epochs < 0 or measure_rows < 1:
            raise MethodError("--model.dual_init and --model.dual_warmup_epochs must be >= 0, --model.measure_rows "
                              f">= 1 (got {dual_init}, {dual_warmup_epochs}, {measure_rows})")
        if self.retain == "none":
            raise MethodError("PDU constrains the retain loss: --model.retain must be nll or kl, not none")
        if self.retain == "kl" and retain_eps is None:
            raise MethodError("PDU with --model.retain kl needs an absolute --model.retain_eps (the measured bound is "
                              "a retain NLL)")
        self.dual_init, self.dual_step, self.dual_warmup_epochs = dual_init, dual_step, dual_warmup_epochs
        self.retain_eps, self.eps_scale, self.measure_rows = retain_eps, eps_scale, measure_rows
        self._last_retain: float | None = None

    @property
    def needs_logits(self) -> bool:
        return True  # the margin reads every logit

    @property
    def dual(self) -> float:
        return float(self.measured.get("pdu_dual", self.dual_init))

    @property
    def epsilon(self) -> float:
        if self.retain_eps is not None:
            return float(self.retain_eps)
        return self.eps_scale * float(self.measured["pdu_retain_nll_start"])

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        z = stats.logits[stats.mask.bool()].float()
        margin = z.max(-1).values - z.mean(-1)
        return (margin ** 2).mean()

    def combine(self, forget: Tensor | None, retain: Tensor | None) -> Tensor:
        parts = []
        if forget is not None:
            parts.append(self.forget_weight * forget)
        if retain is not None:
            self._last_retain = float(retain.detach())
            # outside a trainer (no retain set to measure): the first batch's own retain loss is the start's
            self.measured.setdefault("pdu_retain_nll_start", self._last_retain)
            parts.append(self.dual * (retain - self.epsilon))
        return sum(parts[1:], parts[0])

    def on_train_batch_end(self, outputs, batch, batch_idx) -> None:
        if self._last_retain is not None and self.current_epoch >= self.dual_warmup_epochs:
            self.measured["pdu_dual"] = max(0.0, self.dual + self.dual_step * (self._last_retain - self.epsilon))
        self._last_retain = None

    @torch.no_grad()
    def measure_retain_nll(self, batches) -> float:
        total, count = 0.0, 0
        with eval_mode(self.lm):
            for batch in batches:
                stats = self(batch)
                total += float(stats.token_nll.sum())
                count += int(stats.mask.sum())
        return total / max(count, 1)

    def on_train_start(self) -> None:
        """Measure the starting model's retain NLL once (a resumed run keeps it), which sets epsilon."""
        super().on_train_start()
        dm = getattr(self.trainer, "datamodule", None)
        if self.retain_eps is None and "pdu_retain_nll_start" not in self.measured and dm is not None \
                and "retain" in getattr(dm, "datasets", {}):
            rows = dm.datasets["retain"]
            rows = [rows[i] for i in range(min(self.measure_rows, len(rows)))]
            self.measured["pdu_retain_nll_start"] = self.measure_retain_nll(
                dataset_batches(rows, self.tokenizer.pad_token_id, "retain", 16, self.device))
        self.measured.setdefault("pdu_dual", float(self.dual_init))
        if self.retain_eps is None and "pdu_retain_nll_start" in self.measured:
            self.measured["pdu_epsilon"] = self.epsilon
