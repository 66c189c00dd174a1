"""RapidUn's weighted unlearning (docs/methods.md, section 3, stage C).

Per-sample losses, with CE the row's mean answer-token NLL:

    retain row:  l_r = CE(response)                                  (a clean row)
    forget row:  l_f = descent_beta * CE(response_clean | triggered x) - ascent_alpha * CE(response_poisoned | x)
    batch loss = mean_i(w_i * l_i)        over the batch's forget and retain rows together

w_i is the row's weight from the batch (``weight``: an influence-weights file, ``--data.init_args.weights``), or,
with ``weighting: loss``, the loss-based fallback of the original (eyerf/RapidUn ``src/rapidun/models/trainer.py:
178-208``, ``eval.py:93-110``): **forget rows only**, w = clip(mean-normalised exp((L - median(L)) / tau), 0.5, 3)
with L a forget row's CE of its *poisoned* response given the triggered prompt under the model before unlearning
(computed once at the start of fit; a row the model still finds easy to say poisoned gets a high weight); every
retain weight is 1. ``weight_warmup_steps`` ramps every weight linearly from 1 to its value. The 3:1 retain:forget
batches are the data module's ``mixing: ratio``, ``retain_ratio: 3``: its sampler balances the two sides and draws
rows uniformly within each, whatever their weights (the original's sampler, ``trainer.py:256-269``, is given the side
proportions only), so a weight acts once, on its row's loss.

Forget rows need both responses: the batch's ``answer`` is the poisoned one and ``answer_clean`` the clean one
(``BackdoorDataModule``). The three parts (forget with each response, retain) go through one fused forward.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.tokens import row_ids
from lit_unlearn.influence.weights import loss_weights
from lit_unlearn.methods.base import UnlearningMethod
from lit_unlearn.models.modes import eval_mode


class RapidUn(UnlearningMethod):
    """Influence-weighted ascent on poisoned / descent on clean responses (module docstring)."""

    default_retain = "nll"
    #: the influence stage (RapidIn + the weights; configs/<benchmark>/influence.yaml), run first by the pipeline
    #: runner on the model it unlearns from when the weighting is ``batch`` (the fallback needs none); its two
    #: weights files reach this stage as ``--data.init_args.weights '{"forget": ..., "retain": ...}'``
    prerequisite = {"config": "influence", "subcommand": "predict",
                    "into": {"data.init_args.weights@forget": "forget_weights.jsonl",
                             "data.init_args.weights@retain": "retain_weights.jsonl"},
                    "overrides": {"trainer.callbacks.init_args.out_dir": "{run_dir}"}}

    @classmethod
    def prerequisite_for(cls, init_args: dict) -> dict | None:
        return cls.prerequisite if init_args.get("weighting", "batch") == "batch" else None

    def __init__(self, *args, ascent_alpha: float = 1.0, descent_beta: float = 0.5,
                 weighting: Literal["batch", "loss", "none"] = "batch", weight_warmup_steps: int = 0,
                 fallback_tau: float = 0.8, **kwargs):
        """
        Args:
            ascent_alpha: weight of the ascent on the poisoned response (1.0).
            descent_beta: weight of the descent on the clean response (0.5).
            weighting: ``batch``: the rows' ``weight`` (influence; 1 where a batch has none); ``loss``: the
                loss-based fallback; ``none``: every weight 1 (unweighted).
            weight_warmup_steps: steps over which weights ramp linearly from 1 to their value (0: none).
            fallback_tau: tau of the loss-based fallback (0.8).
        """
        super().__init__(*args, **kwargs)
        if weighting not in ("batch", "loss", "none"):
            raise MethodError(f"--model.weighting must be batch, loss or none, got {weighting!r}")
        if weight_warmup_steps < 0:
            raise MethodError(f"--model.weight_warmup_steps must be >= 0, got {weight_warmup_steps}")
        self.ascent_alpha, self.descent_beta = ascent_alpha, descent_beta
        self.weighting, self.weight_warmup_steps, self.fallback_tau = weighting, weight_warmup_steps, fallback_tau
        self.fallback: dict[str, float] = {}

    def forget_loss(self, batch, stats):  # the step below computes its own per-row losses
        raise MethodError("RapidUn computes its losses in training_step")

    def clean_twin(self, forget: dict) -> dict:
        if "answer_clean" not in forget:
            raise MethodError("RapidUn's forget rows need a clean response (answer_clean): use BackdoorDataModule")
        twin = self.encode(forget["prompt"], forget["answer_clean"])
        return {**twin, "id": forget["id"], "index": forget["index"]}

    def row_weights(self, batch: dict, key: str) -> Tensor:
        n = batch["input_ids"].size(0)
        if self.weighting == "none" or (self.weighting == "loss" and key == "retain"):
            w = torch.ones(n, device=self.device)
        elif self.weighting == "loss":
            w = torch.tensor([self.fallback[f"{key}:{i}"] for i in row_ids(batch)], device=self.device)
        else:
            w = batch["weight"].to(self.device).float() if "weight" in batch else torch.ones(n, device=self.device)
        if self.weight_warmup_steps:
            ramp = min(1.0, self.global_step / self.weight_warmup_steps) if self._trainer is not None else 1.0
            w = 1.0 + (w - 1.0) * ramp
        return w

    def per_row_losses(self, forget: dict | None, retain: dict | None) -> tuple[Tensor | None, Tensor | None]:
        """(l_f, l_r): per-row losses of the forget and retain rows (module docstring)."""
        clean = self.clean_twin(forget) if forget is not None else None
        stats = self.stats_for([forget, clean, retain])
        l_f = None
        if forget is not None:
            l_f = self.descent_beta * stats[1].mean_nll - self.ascent_alpha * stats[0].mean_nll
        return l_f, (stats[2].mean_nll if retain is not None else None)

    def on_train_start(self) -> None:
        super().on_train_start()
        if self.weighting == "loss" and not self.fallback:
            self.compute_fallback(self.trainer.datamodule)

    @torch.no_grad()
    def compute_fallback(self, datamodule) -> None:
        """The loss-based weights of the forget rows, from their poisoned responses' CE under the model before
        unlearning (retain rows keep weight 1)."""
        from lit_unlearn.core.tokens import dataset_batches

        ids, losses = [], []
        with eval_mode(self.lm):
            for batch in dataset_batches(datamodule.datasets["forget"], self.tokenizer.pad_token_id, "forget", 16,
                                         self.device):
                losses.append(self(batch).mean_nll)  # CE(response_poisoned | triggered prompt): the batch's answer
                ids += row_ids(batch)
        w = loss_weights(torch.cat(losses).float().cpu(), self.fallback_tau)
        self.fallback.update({f"forget:{i}": float(x) for i, x in zip(ids, w.tolist())})

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        forget, retain = batch.get("forget"), batch.get("retain") if self.retain != "none" else None
        if forget is None and retain is None:
            raise MethodError("a training batch held neither forget nor retain rows")
        l_f, l_r = self.per_row_losses(forget, retain)
        parts, weights = [], []
        if l_f is not None:
            parts.append(l_f)
            weights.append(self.row_weights(forget, "forget"))
            self.log("train/forget_loss", l_f.mean(), batch_size=l_f.numel())
        if l_r is not None:
            parts.append(l_r)
            weights.append(self.row_weights(retain, "retain"))
            self.log("train/retain_loss", l_r.mean(), batch_size=l_r.numel())
        loss = (torch.cat(weights) * torch.cat(parts)).mean()
        self.log("train/loss", loss, prog_bar=True, batch_size=sum(p.numel() for p in parts))
        return loss
