"""The classification-unlearning methods of SPUL / PI-Prefix that are more than a loss (docs/methods.md, section 1).

- ``NegationLoRA``: fine-tune a LoRA on the forget rows (CE, their true labels), then evaluate and export the model
  with the adapter negated, theta_target - scale * delta (a task vector, Ilharco et al. 2023, arXiv 2212.04089).
  Checkpoints hold the trained (positive) adapter, so a resumed run goes on learning; every evaluation and the
  exported ``adapter/`` and ``merged/`` are the negated model.
- ``SPUL``: soft-prompt unlearning (Bhaila et al. 2024, arXiv 2406.12038):
  L = CE(forget rows relabelled with a random word of ``labels``) + alpha * CE_r + beta * KL(p_ref || p_theta) on
  retain label positions, p_ref = the model without the prompt (adapter disabled). Meant for ``SoftPrompt``.
- ``PIPrefix``: a prefix trained with CE on label tokens, then transformed once, K[l] <- pinv(K[l])^T and
  V[l] <- pinv(V[l])^T (``Prefix.transform_pinv``), and evaluated and exported transformed. Two training variants:
  ``forget_only`` (CE on the forget rows' true labels; no retain data, as the paper advertises) and ``relabel``
  (retain CE + forget rows relabelled with a random word of ``labels``). The export writes the transformed prefix
  to ``adapter/`` (its ``adapter_config.json`` records ``"transform": ["pinv"]``, and a second transformation is
  refused) and the trained one beside it, to ``adapter_trained/``. A checkpoint holds the trained prefix (a resumed
  fit goes on training it); evaluating a checkpoint outside fit (``eval.py --ckpt_path``) transforms it first.
  ``reading: trained`` evaluates and exports the trained prefix untransformed instead: what the original's inference
  scores, since it re-applies the pseudo-inverse to the saved, already inverted prefix (PreethiGuru/LLM-Unlearning
  ``pi_prefix.py:207-222`` saves the inverted prefix, ``inference_pi_prefix.py:119`` inverts it again, and
  pinv(pinv(K)^T)^T = K). Both readings of one run: its fit (``pinv``), then ``eval.py --ckpt_path
  <run>/checkpoints/last.ckpt --model.init_args.reading trained`` (the classification pipeline does both).

  The original's recipe (``pi_prefix.py:46-54,100-104``): 10 prefix positions, AdamW lr 5e-4, batch 8, 10 epochs of
  train_retain + relabelled train_forget (the ``relabel`` variant; tens of thousands of steps on SST-2), no schedule;
  dropout 0.1 on the prefix keys and values (``utils_pi.py:107``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from lit_unlearn.core.errors import MethodError
from lit_unlearn.core.scoring import TokenStats
from lit_unlearn.methods.base import UnlearningMethod
from lit_unlearn.methods.relabel import RandomLabel


class NegationLoRA(UnlearningMethod):
    """Learn the forget set with a LoRA (L = CE_f), then use the negated adapter (module docstring)."""

    default_retain = "none"
    adapter_types = ("LoRA",)

    def __init__(self, *args, negation_scale: float = 1.0, **kwargs):
        """
        Args:
            negation_scale: the negated model is theta - negation_scale * delta (> 0; task arithmetic's lambda).
        """
        super().__init__(*args, **kwargs)
        if not negation_scale > 0:
            raise MethodError(f"--model.negation_scale must be > 0, got {negation_scale}")
        self.negation_scale = negation_scale
        self._negation = None

    def forget_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        return stats.weighted_ce(batch.get("weight"))

    def _negate(self, on: bool) -> None:
        if on and self._negation is None:
            self._negation = self.adapter.negated(self.lm, self.negation_scale)
            self._negation.__enter__()
        elif not on and self._negation is not None:
            negation, self._negation = self._negation, None
            negation.__exit__(None, None, None)

    def on_validation_epoch_start(self) -> None:
        self._negate(True)
        super().on_validation_epoch_start()

    def on_validation_epoch_end(self) -> None:
        try:
            super().on_validation_epoch_end()
        finally:
            self._negate(False)

    on_test_epoch_start = on_validation_epoch_start
    on_test_epoch_end = on_validation_epoch_end

    def export_adapter(self, path) -> None:
        with self.adapter.negated(self.lm, self.negation_scale):
            super().export_adapter(path)

    def export_merged(self, path) -> None:
        with self.adapter.negated(self.lm, self.negation_scale):
            super().export_merged(path)  # folds in the negated weights; the merged model keeps them


class SPUL(RandomLabel):
    """L = CE(forget relabelled) + alpha * CE_r + beta * KL(p_no_prompt || p_prompt) on retain label positions."""

    needs_reference = True
    default_retain = "nll"

    def __init__(self, *args, alpha: float = 0.5, beta: float = 0.5, **kwargs):
        """
        Args:
            alpha: weight of the retain CE (SPUL: 0.5).
            beta: weight of the retain KL to the prompt-free model (SPUL: 0.5).
        """
        super().__init__(*args, **kwargs)
        if alpha < 0 or beta < 0:
            raise MethodError(f"--model.alpha and --model.beta must be >= 0, got {alpha}, {beta}")
        if self.retain != "nll":
            raise MethodError("SPUL's retain term is its own (alpha * CE + beta * KL); leave --model.retain unset")
        self.alpha, self.beta = alpha, beta

    @property
    def needs_logits(self) -> bool:
        return self.beta > 0

    def retain_loss(self, batch: dict, stats: TokenStats) -> Tensor:
        loss = self.alpha * stats.ce
        if self.beta > 0:
            loss = loss + self.beta * self.kl_to_reference(batch, stats)
        return loss


class PIPrefix(RandomLabel):
    """Train a prefix with CE on label tokens, transform it once with the pseudo-inverse (module docstring)."""

    default_retain = "none"
    adapter_types = ("Prefix",)
    #: the trained (untransformed) reading, evaluated by the pipeline runner after the stage in ``<stage>_trained``:
    #: the exported ``adapter_trained/`` stacked frozen on the target, no new adapter (what the original scores)
    follow_up = {"suffix": "_trained", "overrides": {"model.init_args.adapter": None,
                                                     "model.init_args.init_adapter": "{run_dir}/adapter_trained"}}

    def __init__(self, *args, variant: Literal["forget_only", "relabel"] = "forget_only",
                 reading: Literal["pinv", "trained"] = "pinv", **kwargs):
        """
        Args:
            variant: ``forget_only``: CE on the forget rows' true labels, no retain data; ``relabel``: CE on retain
                rows + forget rows relabelled with a random word of ``labels`` ({neutral, unknown}).
            reading: the prefix evaluated and exported: ``pinv`` (transformed once, the paper's) or ``trained``
                (untransformed: what the original's inference script effectively scores).
        """
        if variant not in ("forget_only", "relabel"):
            raise MethodError(f"--model.variant must be forget_only or relabel, got {variant!r}")
        if reading not in ("pinv", "trained"):
            raise MethodError(f"--model.reading must be pinv or trained, got {reading!r}")
        if variant == "relabel" and kwargs.get("retain") is None:
            kwargs["retain"] = "nll"
        super().__init__(*args, **kwargs)
        if variant == "forget_only" and self.retain != "none":
            raise MethodError("PIPrefix variant forget_only uses no retain data; set --model.retain none "
                              "or --model.variant relabel")
        self.variant, self.reading = variant, reading
        self._trained: dict[str, Tensor] | None = None

    def prepare_forget(self, batch: dict) -> dict:
        return batch if self.variant == "forget_only" else super().prepare_forget(batch)

    def on_train_end(self) -> None:
        """Transform the trained prefix, once (``reading: pinv``); keep the trained tensors for ``adapter_trained/``."""
        if self.reading == "pinv":
            self.transform_once()
            self.last_eval_at = None  # the loop's last evaluation saw the trained prefix: evaluate again

    def transform_once(self) -> None:
        provider = self.adapter.provider(self.lm)
        if "pinv" not in provider.transform:
            self._trained = {n: t.detach().clone() for n, t in provider.state_dict().items()}
            self.adapter.transform_pinv(self.lm)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        super().on_load_checkpoint(checkpoint)
        self._from_checkpoint = True

    def on_validation_epoch_start(self) -> None:
        # a checkpoint holds the trained prefix (it is written during training); evaluating a checkpoint outside fit
        # (eval.py --ckpt_path) evaluates the transformed prefix, as the run's own evaluation after fit does. The
        # evaluation before fit (a fresh prefix, no checkpoint) is not transformed.
        if self.reading == "pinv" and self.trainer.state.fn != "fit" and getattr(self, "_from_checkpoint", False):
            self.transform_once()
        super().on_validation_epoch_start()

    on_test_epoch_start = on_validation_epoch_start

    def export_adapter(self, path) -> None:
        super().export_adapter(path)
        if self._trained is not None:
            provider = self.adapter.provider(self.lm)
            transformed = {n: t.detach().clone() for n, t in provider.state_dict().items()}
            record = provider.transform
            with torch.no_grad():
                provider.load_state_dict(self._trained)
                provider.transform = []
                try:
                    self.adapter.save(self.lm, Path(path).parent / f"{Path(path).name}_trained")
                finally:
                    provider.load_state_dict(transformed)
                    provider.transform = record
