"""Token-level NPO and GRUN's gated representation unlearning (docs/methods.md, sections 4 and 5).

- ``TNPO`` (token-level NPO): NPO per answer token, on a token mask the batch carries (``token_mask``, aligned with
  ``input_ids``/``labels``: 1 = a selected token):

      hard: L_f = -(2/beta) mean_{selected t} log sigma(beta * clamp(CE_theta,t - CE_ref,t, -20, 20))
      soft: the same mean with per-token weights, ``selected_weight`` (5.0) on selected and ``other_weight``
            (0.1) on the other answer tokens, normalised by the weights' sum

  A batch without ``token_mask`` selects every answer token (the per-token form of NPO). A row whose mask selects
  none of its answer tokens contributes nothing (hard) or only ``other_weight`` tokens (soft). The mean is over the
  selected tokens of the whole batch pooled, as the original.

  Defaults are the original's run (lluvecwonv/memorization_unlearn): beta 4.5 (the run named in
  ``TOFU/evaluate_all_checkpoints.sh:9``, ``..._tnpo_1e-05_forget10_epoch10_..._beta4.5_gamma0.0_...``), not NPO's 0.1:
  the per-token weight of the gradient is sigma(-beta * delta), which at beta 0.1 stays near 1 for any delta, so TNPO
  at 0.1 is gradient ascent on the selected tokens (docs/results/influence_and_reft.md: MU 0.000); at 4.5 a token's
  push fades once its NLL has risen by about a nat. **No retain term** (``retain: none``): that run's name also reads
  ``grad_diff_coeff1.0``, but the name is a template (``TOFU/config/forget.yaml:33``) and the ``tnpo`` loss branch
  discards the retain half of the batch (``TOFU/dataloader.py:227-276``); ``retain: nll`` adds one. The original
  trains the full model at lr 1e-5 for 10 epochs (``TOFU/config/forget.yaml:5,9,15``); the clamp at +-20 is the
  spec's (the original's ``tnpo_kl_loss`` of commit 95eb998 clamps there; its newest ``tnpo`` branch does not).
- ``GRUN``: a gated ``LoReFT`` intervention trained with a gate loss and one unlearning loss:

      L = loss_f + retain term + gate_weight * BCE(gate logits, 1 on forget rows, 0 on retain rows)
      grad_diff: -CE_f + 2 * CE_r;   idk: CE(forget prompts answered with a refusal) + CE_r;
      npo: 100 * NPO_f + CE_r  (reference: the model without the intervention)
      rmu (GRUN's WMDP variant, gated_rmu): MSE(h^(l)_f, c) + retain_weight * MSE(h^(l)_r, h^(l)_r without the
           intervention), c = s * u / ||u|| (u ~ U[0, 1)^d from ``seed``, as RMU), on the scored tokens after the
           intervened position (GRUN cuts each corpus text at 80%: ``LoReFT(position: fraction, fraction: 0.8)``,
           and scores the last 20%); gate_weight 100 there

  ``rmu_layer`` l defaults to -2, the output of the second-to-last decoder layer: GRUN reads ``hidden_states[31]`` of
  its 32-layer Llama (renjie3/GRUN ``pyreft/reft_trainer.py:478``), the output of layer 30, which only its layer-20
  and layer-25 edits can change (its layer-31 gate is trained by the gate loss alone). The norm s of c follows
  RMU's ``steering_scale`` (:mod:`lit_unlearn.methods.rmu`): by default ``corpus``, s = ``steering`` x the median
  token norm of the un-intervened model's h^(l) over the forget texts (measured once when training starts), and
  both MSE terms are then divided by s_0^2 / d, s_0 that measured norm, so they are in units of a typical
  activation's squared norm and the gate BCE (about 0.69 untrained) is on a comparable scale. GRUN's own steering
  300 (``cmd_wmdp.sh:11``) is an absolute number for Llama-3.1-8B's layer 30 (``steering_scale: absolute``,
  unnormalised MSE: the original): on SmolLM2 it made a forget MSE of about 1,200 against a gate loss of about 70
  (docs/results/influence_and_reft.md).

  ``gate_warmup_steps`` (GRUN's ``warm_up_gate_step``, ``reft_trainer.py:270-274``; off by default there too) ramps
  the weight of the unlearning and retain terms linearly from 0 to 1 over that many steps, the gate loss at full
  weight throughout, so the gate separates forget from retain before the edit is trained hard.

  The gate logits are those of every intervened position and layer of the step's forward(s). Every evaluated split
  also reports ``gate_mean``, the mean gate value of its rows (the ``gate`` evaluator): a gate that opens on retain
  rows is a failure.
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.core.tokens import IGNORE
from lit_unlearn.methods.base import UnlearningMethod
from lit_unlearn.methods.relabel import IDK
from lit_unlearn.methods.rmu import (Scale, check_steering, control_direction, decoder_layers, hidden_at, masked_mse,
                                     steered_tokens)
from lit_unlearn.models.modes import eval_mode


class TNPO(UnlearningMethod):
    """Token-level NPO on the batch's ``token_mask`` (module docstring)."""

    needs_reference = True
    default_retain = "none"
    #: its token selection, run first by the pipeline runner (lit_unlearn.pipelines.runner): ``predict`` with the
    #: benchmark's ``token_scores`` config on the model it unlearns from, writing ``token_masks.jsonl`` into its run
    #: folder, which reaches this stage as ``--data.init_args.token_masks '{"forget": <file>}'``
    prerequisite = {"config": "token_scores", "subcommand": "predict",
                    "into": {"data.init_args.token_masks@forget": "token_masks.jsonl"},
                    "overrides": {"trainer.callbacks.init_args.out_dir": "{run_dir}", "data.init_args.reference": None}}

    def __init__(self, *args, beta: float = 4.5, weighting: Literal["hard", "soft"] = "hard",
                 selected_weight: float = 5.0, other_weight: float = 0.1, **kwargs):
        """
        Args:
            beta: NPO inverse temperature (the original run's 4.5; module docstring).
            weighting: ``hard`` (selected tokens only) or ``soft`` (per-token weights).
            selected_weight: soft weight of a selected token.
            other_weight: soft weight of any other answer token.
        """
        super().__init__(*args, **kwargs)
        if weighting not in ("hard", "soft"):
            raise MethodError(f"--model.weighting must be hard or soft, got {weighting!r}")
        if not beta > 0:
            raise MethodError(f"--model.beta must be > 0, got {beta}")
        self.beta, self.weighting = beta, weighting
        self.selected_weight, self.other_weight = selected_weight, other_weight

    def token_weights(self, batch: dict, stats: TokenStats) -> Tensor:
        """(B, T) weight of each position of ``stats`` (position t scores token t + 1), 0 off the answer."""
        mask = batch.get("token_mask")
        if mask is None:
            selected = stats.mask.float()
        else:
            selected = F.pad(mask[:, 1:].float(), (0, 1)).to(stats.mask.device) * stats.mask
        if self.weighting == "hard":
            return selected
        return (selected * self.selected_weight + (1 - selected) * self.other_weight) * stats.mask

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        with torch.no_grad():
            ref = self.reference_stats(batch).token_nll
        delta = (stats.token_nll - ref).clamp(-20.0, 20.0)
        w = self.token_weights(batch, stats)
        per_token = -(2.0 / self.beta) * F.logsigmoid(self.beta * delta)
        return (per_token * w).sum() / w.sum().clamp(min=1e-8)


class GRUN(IDK):
    """Gated LoReFT unlearning (module docstring)."""

    needs_reference = True
    default_retain = "nll"
    adapter_types = ("LoReFT",)
    extra_evaluators: ClassVar[tuple[str, ...]] = ("gate",)

    def __init__(self, *args, loss: Literal["grad_diff", "idk", "npo", "rmu"] = "grad_diff", gate_weight: float = 10.0,
                 npo_weight: float = 100.0, beta: float = 0.1, retain_weight: float | None = None,
                 steering: float = 4.0, steering_scale: Scale = "corpus", rmu_layer: int = -2,
                 gate_warmup_steps: int = 0, **kwargs):
        """
        Args:
            loss: the unlearning loss under the gate: grad_diff (-CE_f + 2 CE_r), idk, npo or rmu (module docstring).
            gate_weight: gamma, the weight of the gate BCE (GRUN: 10; 100 in its WMDP setting).
            npo_weight: the weight of NPO_f in ``npo`` (GRUN: 100).
            beta: NPO's inverse temperature.
            retain_weight: weight of the retain term; null: GRUN's, 2 with grad_diff and 1 otherwise
                (renjie3/GRUN ``cmd_grun.sh:14-18``).
            steering: ``rmu``: the control vector's norm, a multiple of the measured activation norm (``corpus``) or
                the norm itself (``absolute``; GRUN's 300 for Llama-3.1-8B).
            steering_scale: ``rmu``: corpus or absolute (as RMU's; ``sample`` is RMU's alone).
            rmu_layer: ``rmu``: the decoder layer whose output is steered (negative counts from the end; GRUN: the
                second-to-last, -2).
            gate_warmup_steps: steps over which the unlearning and retain terms ramp from 0 to full weight (the
                gate loss always at full weight); 0: off (GRUN's default).
        """
        if loss not in ("grad_diff", "idk", "npo", "rmu"):
            raise MethodError(f"--model.loss must be grad_diff, idk, npo or rmu, got {loss!r}")
        if loss == "rmu":
            check_steering(steering, steering_scale)
            if steering_scale == "sample":
                raise MethodError("--model.steering_scale sample is RMU's alone; GRUN takes corpus or absolute")
        if gate_warmup_steps < 0:
            raise MethodError(f"--model.gate_warmup_steps must be >= 0, got {gate_warmup_steps}")
        if not beta > 0:
            raise MethodError(f"--model.beta must be > 0, got {beta}")
        retain_weight = (2.0 if loss == "grad_diff" else 1.0) if retain_weight is None else retain_weight
        super().__init__(*args, retain_weight=retain_weight, **kwargs)
        if self.retain == "none":
            raise MethodError("GRUN's gate needs retain rows (label 0): --model.retain must not be none")
        if self.adapter is not None and not self.adapter.gated:
            raise MethodError("GRUN needs a gated intervention: --model.adapter.init_args.gated true")
        self.loss, self.gate_weight, self.npo_weight, self.beta = loss, gate_weight, npo_weight, beta
        self.steering, self.steering_scale, self.rmu_layer = steering, steering_scale, rmu_layer
        self.gate_warmup_steps = gate_warmup_steps
        self._steered: tuple[nn.Module, nn.Module] | None = None

    def prepare_forget(self, batch: dict) -> dict:
        return super().prepare_forget(batch) if self.loss == "idk" else batch

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        if self.loss == "idk":
            return super().forget_loss(batch, stats)
        if self.loss == "grad_diff":
            return -stats.weighted_ce(batch.get("weight"))
        ref = self.reference_seq_nll(batch)
        per_row = -(2.0 / self.beta) * F.logsigmoid(self.beta * (stats.seq_nll - ref))
        return self.npo_weight * per_row.mean()

    def steered_layers(self) -> tuple[nn.Module, nn.Module]:
        """``rmu``: (the decoder layer whose output is steered, the layer after which a forward may stop: the later
        of it and the last intervened layer, so every gate of the forward is recorded); found once, on the first
        step (the model's layers do not change during a run)."""
        if self._steered is not None:
            return self._steered
        _, layers = decoder_layers(self.lm)
        edited = [int(i) for i in self.adapter.provider(self.lm).at]
        depth = len(layers)
        index = self.rmu_layer
        if not -depth <= index < depth:
            raise MethodError(f"--model.rmu_layer {index} is past the model's depth ({depth} layers, 0..{depth - 1})")
        index %= depth
        self._steered = (layers[index], layers[max(index, *edited)])
        return self._steered

    @torch.no_grad()
    def measure_scale(self, batches) -> None:
        """``rmu``: ``grun_activation_norm``, the median token norm of the un-intervened h^(l) over the steered tokens
        of ``batches`` (every real token but the first), and ``grun_control_norm``, the resolved ||c||."""
        capture, stop = self.steered_layers()
        norms = []
        for batch in batches:
            with self.adapter.disabled(self.lm), eval_mode(self.lm):
                h = hidden_at(self.lm, self.model_inputs(batch), capture, stop).float()
            norms.append(h.norm(dim=-1)[steered_tokens(batch)].cpu())
        median = float(torch.cat(norms).median())
        self.measured["grun_activation_norm"] = median
        self.measured["grun_control_norm"] = self.steering * (median if self.steering_scale == "corpus" else 1.0)

    def on_train_start(self) -> None:
        super().on_train_start()
        dm = getattr(self.trainer, "datamodule", None)
        if self.loss == "rmu" and "grun_activation_norm" not in self.measured and "forget" in getattr(dm, "datasets",
                                                                                                      {}):
            from lit_unlearn.core.tokens import dataset_batches

            self.measure_scale(dataset_batches(dm.datasets["forget"], self.tokenizer.pad_token_id, "forget", 16,
                                               self.device))

    def rmu_losses(self, forget: dict, retain: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``rmu``: (forget MSE to c, retain MSE to the un-intervened activations, gate logits, gate targets); with
        ``corpus`` scale both MSEs in units of s_0^2 / d (module docstring)."""
        capture, stop = self.steered_layers()
        if "grun_activation_norm" not in self.measured:  # outside a trainer: the first forget batch's own norm
            self.measure_scale([forget])
        control = self.measured["grun_control_norm"] * control_direction(self.lm.config.hidden_size, self.seed)
        with torch.no_grad(), self.adapter.disabled(self.lm):
            h0 = hidden_at(self.lm, self.model_inputs(retain), capture, stop)
        parts = []
        for rows, target in ((forget, 1.0), (retain, 0.0)):
            h = hidden_at(self.lm, self.model_inputs(rows), capture, stop)
            edited = self.adapter.edited_positions(self.lm)
            after = (edited.long().cumsum(-1) - edited.long()) > 0  # strictly after the (first) edited position
            mask = after & (rows["labels"] != IGNORE) & rows["attention_mask"].bool()
            logits = self.adapter.gate_logits(self.lm)[1]
            parts.append((h, mask, logits, torch.full_like(logits, target)))
        (h_f, m_f, g_f, t_f), (h_r, m_r, g_r, t_r) = parts
        unit = 1.0
        if self.steering_scale == "corpus":
            unit = self.measured["grun_activation_norm"] ** 2 / h_f.size(-1)
        f_loss = masked_mse(h_f, control.to(h_f.device), m_f) / unit
        r_loss = masked_mse(h_r, h0, m_r) / unit
        return f_loss, r_loss, torch.cat([g_f, g_r]), torch.cat([t_f, t_r])

    def warmup_factor(self, step: int) -> float:
        """The weight of the unlearning and retain terms at optimizer step ``step``: min(step / gate_warmup_steps, 1),
        1 without warm-up."""
        return min(1.0, step / self.gate_warmup_steps) if self.gate_warmup_steps else 1.0

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        forget = self.prepare_forget(batch["forget"]) if "forget" in batch else None
        retain = batch.get("retain")
        if forget is None or retain is None:
            raise MethodError("GRUN trains its gate on forget (1) and retain (0) rows: every batch needs both")
        n_f = forget["input_ids"].size(0)
        if self.loss == "rmu":
            f_loss, r_loss, logits, target = self.rmu_losses(forget, retain)
            self.log("train/forget_loss", f_loss, batch_size=n_f)
            self.log("train/retain_loss", r_loss, batch_size=retain["input_ids"].size(0))
            loss = self.warmup_factor(self.global_step) * (self.forget_weight * f_loss + self.retain_weight * r_loss)
            return self.add_gate_loss(loss, logits, target, n_f, retain["input_ids"].size(0))
        if self.fuse_forward:
            f_stats, r_stats = self.stats_for([forget, retain])
            rows, logits = self.adapter.gate_logits(self.lm)  # one forward, forget rows first
            target = (rows < n_f).float()
        else:  # two forwards: the gate records of each, read right after it
            f_stats = self(forget, logits=self.needs_logits)
            logits_f = self.adapter.gate_logits(self.lm)[1]
            r_stats = self(retain, logits=self.needs_logits)
            logits_r = self.adapter.gate_logits(self.lm)[1]
            logits = torch.cat([logits_f, logits_r])
            target = torch.cat([torch.ones_like(logits_f), torch.zeros_like(logits_r)])
        loss = self.warmup_factor(self.global_step) * self.combine(self.forget_loss(forget, f_stats), self.retain_loss(retain, r_stats))
        return self.add_gate_loss(loss, logits, target, n_f, retain["input_ids"].size(0))

    def add_gate_loss(self, loss: Tensor, logits: Tensor, target: Tensor, n_f: int, n_r: int) -> Tensor:
        """``loss + gate_weight * BCE(logits, target)``, logged with the mean gate on forget and retain rows."""
        gate = F.binary_cross_entropy_with_logits(logits.float(), target)
        loss = loss + self.gate_weight * gate
        self.log("train/loss", loss, prog_bar=True, batch_size=n_f + n_r)
        self.log("train/gate_bce", gate, batch_size=n_f)
        with torch.no_grad():
            g = torch.sigmoid(logits.float())
            self.log("train/gate_forget", g[target == 1].mean(), batch_size=n_f)
            self.log("train/gate_retain", g[target == 0].mean(), batch_size=n_r)
        return loss

    @torch.no_grad()
    def gate_values(self, batch: dict) -> Tensor:
        """(B,) mean gate value of each row of ``batch`` over its intervened positions and layers."""
        self.forward(batch)
        rows, logits = self.adapter.gate_logits(self.lm)
        n = batch["input_ids"].size(0)
        total = torch.zeros(n, device=logits.device).index_add_(0, rows.to(logits.device), torch.sigmoid(logits))
        count = torch.zeros(n, device=logits.device).index_add_(0, rows.to(logits.device), torch.ones_like(logits))
        return total / count.clamp(min=1)
