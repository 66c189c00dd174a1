"""Token-level NPO and GRUN's gated representation unlearning (docs/methods.md, sections 4 and 5).

- ``TNPO`` (token-level NPO): NPO per answer token, on a token mask the batch carries (``token_mask``, aligned with
  ``input_ids``/``labels``: 1 = a selected token):

      hard: L_f = -(2/beta) mean_{selected t} log sigma(beta * clamp(CE_theta,t - CE_ref,t, -20, 20))
      soft: the same mean with per-token weights, ``selected_weight`` (5.0) on selected and ``other_weight``
            (0.1) on the other answer tokens, normalised by the weights' sum

  A batch without ``token_mask`` selects every answer token (the per-token form of NPO). A row whose mask selects
  none of its answer tokens contributes nothing (hard) or only ``other_weight`` tokens (soft).
- ``GRUN``: a gated ``LoReFT`` intervention trained with a gate loss and one unlearning loss:

      L = loss_f + retain term + gate_weight * BCE(gate logits, 1 on forget rows, 0 on retain rows)
      grad_diff: -CE_f + 2 * CE_r;   idk: CE(forget prompts answered with a refusal) + CE_r;
      npo: 100 * NPO_f + CE_r  (reference: the model without the intervention)
      rmu (GRUN's WMDP variant, gated_rmu): MSE(h^(l)_f, c) + retain_weight * MSE(h^(l)_r, h^(l)_r without the
           intervention), c = steering * u / ||u|| (u ~ U[0, 1)^d from ``seed``, as RMU; steering 300), on the
           scored tokens after the intervened position (GRUN cuts each corpus text at 80%:
           ``LoReFT(position: fraction, fraction: 0.8)``, and scores the last 20%); gate_weight 100 there

  ``rmu_layer`` l, by the spec's "RMU-style loss at the last layer", defaults to the last intervened layer (the
  output of that decoder layer, after its edit). GRUN's code reads ``hidden_states[31]`` of a 32-layer model, the
  output of layer 30, which its layer-31 intervention cannot change: ``rmu_layer`` takes any layer index to run it
  that way. MSE is ``masked_mse`` of RMU (mean over hidden units and the selected tokens).

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
from lit_unlearn.methods.rmu import control_vector, decoder_layers, hidden_at, masked_mse


class TNPO(UnlearningMethod):
    """Token-level NPO on the batch's ``token_mask`` (module docstring)."""

    needs_reference = True
    default_retain = "none"

    def __init__(self, *args, beta: float = 0.1, weighting: Literal["hard", "soft"] = "hard",
                 selected_weight: float = 5.0, other_weight: float = 0.1, **kwargs):
        """
        Args:
            beta: NPO inverse temperature.
            weighting: ``hard`` (selected tokens only) or ``soft`` (per-token weights).
            selected_weight: soft weight of a selected token.
            other_weight: soft weight of any other answer token.
        """
        super().__init__(*args, **kwargs)
        if weighting not in ("hard", "soft"):
            raise MethodError(f"--model.weighting must be hard or soft, got {weighting!r}")
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
                 npo_weight: float = 100.0, beta: float = 0.1, steering: float = 300.0, rmu_layer: int | None = None,
                 **kwargs):
        """
        Args:
            loss: the unlearning loss under the gate: grad_diff (-CE_f + 2 CE_r), idk, npo or rmu (module docstring).
            gate_weight: gamma, the weight of the gate BCE (GRUN: 10; 100 in its WMDP setting).
            npo_weight: the weight of NPO_f in ``npo`` (GRUN: 100).
            beta: NPO's inverse temperature.
            steering: ``rmu``: the norm of the control vector (GRUN's WMDP setting: 300).
            rmu_layer: ``rmu``: the decoder layer whose output is steered (negative counts from the end); null: the
                last intervened layer.
        """
        if loss not in ("grad_diff", "idk", "npo", "rmu"):
            raise MethodError(f"--model.loss must be grad_diff, idk, npo or rmu, got {loss!r}")
        if loss == "rmu" and steering <= 0:
            raise MethodError(f"--model.steering must be > 0, got {steering}")
        if loss == "grad_diff":
            kwargs.setdefault("retain_weight", 2.0)
        super().__init__(*args, **kwargs)
        if self.retain == "none":
            raise MethodError("GRUN's gate needs retain rows (label 0): --model.retain must not be none")
        if self.adapter is not None and not self.adapter.gated:
            raise MethodError("GRUN needs a gated intervention: --model.adapter.init_args.gated true")
        self.loss, self.gate_weight, self.npo_weight, self.beta = loss, gate_weight, npo_weight, beta
        self.steering, self.rmu_layer = steering, rmu_layer
        self.control: Tensor | None = None
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
        index = max(edited) if self.rmu_layer is None else self.rmu_layer
        if not -depth <= index < depth:
            raise MethodError(f"--model.rmu_layer {index} is past the model's depth ({depth} layers, 0..{depth - 1})")
        index %= depth
        self._steered = (layers[index], layers[max(index, *edited)])
        return self._steered

    def rmu_losses(self, forget: dict, retain: dict) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``rmu``: (forget MSE to c, retain MSE to the un-intervened activations, gate logits, gate targets)."""
        capture, stop = self.steered_layers()
        if self.control is None:
            self.control = control_vector(self.lm.config.hidden_size, self.steering, self.seed)
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
        f_loss = masked_mse(h_f, self.control.to(h_f.device), m_f)
        r_loss = masked_mse(h_r, h0, m_r)
        return f_loss, r_loss, torch.cat([g_f, g_r]), torch.cat([t_f, t_r])

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
            loss = self.forget_weight * f_loss + self.retain_weight * r_loss
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
        loss = self.combine(self.forget_loss(forget, f_stats), self.retain_loss(retain, r_stats))
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
