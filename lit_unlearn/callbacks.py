"""Callbacks that keep runs safe: the collapse guard (on by default), an always-fresh last.ckpt, and a stop at the end
of the current step, with a checkpoint, when a signal arrives. Checkpoint files themselves: :mod:`lit_unlearn.checkpoints`."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from lit_unlearn.core.errors import ConfigError
from lit_unlearn.runs import SIGNALS, RunInterrupted


class CollapseGuard(L.Callback):
    """Stops unlearning when it collapses, and puts back the last good adapter weights.

    It trips when

    - the training loss, or any trainable weight, is non-finite (checked after every step), or
    - after a validation, ``retain_metric`` (default ``val/retain/acc``) is below ``retain_floor`` (above it
      when ``higher_is_better`` is false, e.g. for ``val/retain/nll``). With ``relative: true`` the floor is a
      fraction of the metric's value at the start of fit (e.g. 0.9 = "keep 90% of retain accuracy").

    "Good" weights are the trainable weights at the start of fit and after every validation that passed the
    floor (a CPU copy: small for an adapter, the whole model for full-parameter training). On a trip it restores
    them, stops the trainer, prints why, and records the event on the module (``pl_module.collapse_events``), which
    ``metrics.json`` carries; the run then exits with code 3.

    The CLI always adds one (``--guard.*``), checking finiteness; the shipped unlearning configs add a retain floor.
    ``--guard.enabled false`` switches it off.
    """

    def __init__(self, retain_metric: str = "val/retain/acc", retain_floor: float | None = None,
                 higher_is_better: bool = True, relative: bool = False, check_finite: bool = True,
                 enabled: bool = True):
        """
        Args:
            retain_metric: logged metric to watch after each validation.
            retain_floor: the floor (absolute, or a fraction of the start value with ``relative``); null: no floor.
            higher_is_better: false for metrics such as NLL, where the guard trips above the threshold.
            relative: read ``retain_floor`` as a fraction of the metric's value when fit starts.
            check_finite: trip on a non-finite loss or weight.
            enabled: false switches the guard off entirely.
        """
        self.enabled = enabled
        self.retain_metric, self.retain_floor = retain_metric, retain_floor
        self.higher_is_better, self.relative, self.check_finite = higher_is_better, relative, check_finite
        self._good: dict[str, torch.Tensor] | None = None
        self._good_step = 0
        self._threshold: float | None = None
        self.tripped = False

    # ---- snapshots --------------------------------------------------------------------------------------------
    @staticmethod
    def _trainable(pl_module) -> dict[str, torch.nn.Parameter]:
        return {n: p for n, p in pl_module.named_parameters() if p.requires_grad}

    def _snapshot(self, trainer, pl_module) -> None:
        self._good = {n: p.detach().to("cpu", copy=True) for n, p in self._trainable(pl_module).items()}
        self._good_step = trainer.global_step

    def _restore(self, pl_module) -> None:
        with torch.no_grad():
            for n, p in self._trainable(pl_module).items():
                p.copy_(self._good[n].to(p.device))

    def _trip(self, trainer, pl_module, reason: str) -> None:
        self._restore(pl_module)
        self.tripped = True
        trainer.should_stop = True
        event = {"step": trainer.global_step, "reason": reason, "restored_step": self._good_step,
                 # what the collapsed model scored (the evaluation that tripped the floor), before the restore
                 "evaluation": {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}}
        events = getattr(pl_module, "collapse_events", None)
        if events is None:
            events = pl_module.collapse_events = []
        events.append(event)
        if trainer.is_global_zero:
            print(f"[lit_unlearn] CollapseGuard: {reason} at step {trainer.global_step}; "
                  f"restored the adapter weights of step {self._good_step} and stopped")

    # ---- hooks -----------------------------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        self.tripped = False
        if not self.enabled:
            self.tripped = True  # every later hook returns at once
            return
        self._snapshot(trainer, pl_module)
        self._threshold = self.retain_floor
        if self.retain_floor is not None and self.relative:
            start = getattr(pl_module, "last_eval", {})
            split, _, key = self.retain_metric.removeprefix("val/").partition("/")
            if split not in start or key not in start[split]:
                raise ConfigError(f"--guard.relative needs {self.retain_metric} evaluated before fit: keep "
                                  "--eval_before true (and a retain split), or set --guard.retain_floor null")
            self._threshold = self.retain_floor * start[split][key]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not self.check_finite or self.tripped:
            return
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        bad_loss = loss is not None and not torch.isfinite(loss.detach()).all()
        bad_weights = any(not torch.isfinite(p).all() for p in self._trainable(pl_module).values())
        # one rank's verdict is every rank's, so DDP processes stop together
        if trainer.strategy.reduce_boolean_decision(bool(bad_loss or bad_weights), all=False):
            what = "non-finite loss" if bad_loss else "non-finite adapter weights"
            self._trip(trainer, pl_module, what)

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.tripped or trainer.state.fn != "fit" or self._threshold is None:
            return
        value = trainer.callback_metrics.get(self.retain_metric)
        if value is None:  # a misspelled name would switch the floor off without a word
            logged = sorted(k for k in trainer.callback_metrics if k.startswith("val/") and not k.endswith("time_s"))
            raise ConfigError(f"--guard.retain_metric {self.retain_metric} is not a metric of this run, so the retain "
                              f"floor cannot be checked; it logs: {', '.join(logged) or 'no val/ metric'} (or set "
                              "--guard.retain_floor null)")
        value = float(value)
        below = value < self._threshold if self.higher_is_better else value > self._threshold
        if below or math.isnan(value):
            side = "below" if self.higher_is_better else "above"
            self._trip(trainer, pl_module, f"{self.retain_metric}={value:.4f} {side} the floor {self._threshold:.4f}")
        else:
            self._snapshot(trainer, pl_module)


class UnlearnCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` whose ``last.ckpt`` always holds the newest state.

    Lightning 2.6 refreshes ``last.ckpt`` only when a top-k checkpoint was saved in the same step, so with a
    ``monitor`` (e.g. ``val/gap``) it goes stale whenever the metric does not improve; ``--ckpt_path last``
    would then resume from an old state. Here it is rewritten at every checkpointing point. Top-k selection
    on ``monitor`` is unchanged.
    """

    def _refresh_last(self, trainer) -> None:
        if self.save_last and not self._should_skip_saving_checkpoint(trainer):
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer, pl_module) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)


class StopOnSignal(L.Callback):
    """Turns a SIGINT / SIGTERM noted by :data:`lit_unlearn.runs.SIGNALS` (or Lightning's own SIGTERM flag) into a
    stop at the end of the current training step, after writing ``last.ckpt`` for that step, by raising
    :class:`~lit_unlearn.runs.RunInterrupted` (the CLI records it and exits 130 / 143). During an evaluation the stop
    comes after the current batch (single process) or at the end of the evaluation (DDP: the ranks decide together),
    without a new checkpoint. The CLI adds it to every run."""

    @staticmethod
    def _signal(trainer) -> int | None:
        if SIGNALS.received is not None:
            return SIGNALS.received
        return 15 if getattr(trainer, "received_sigterm", False) else None

    def _agreed(self, trainer) -> int | None:
        """The signal, if any rank received one (a collective: call where every rank is)."""
        signum = self._signal(trainer)
        if trainer.world_size > 1:
            anyone = trainer.strategy.reduce_boolean_decision(signum is not None, all=False)
            signum = signum or (15 if anyone else None)
        return signum

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        signum = self._agreed(trainer)
        if signum is None:
            return
        ckpt = trainer.checkpoint_callback
        if isinstance(ckpt, ModelCheckpoint) and ckpt.save_last:
            # through the checkpoint callback, so last.ckpt is its own (its state names it) and a resume overwrites
            # it in place instead of starting a last-v1.ckpt beside it
            ckpt._save_last_checkpoint(trainer, ckpt._monitor_candidates(trainer))
            path = ckpt.last_model_path
        else:
            path = str(Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints" / "interrupted.ckpt")
            trainer.save_checkpoint(path)
        raise RunInterrupted(signum, trainer.global_step, path)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        signum = self._signal(trainer)
        if signum is not None and trainer.world_size == 1:
            raise RunInterrupted(signum, trainer.global_step, None)

    def on_validation_end(self, trainer, pl_module) -> None:
        signum = self._agreed(trainer)
        if signum is not None:
            raise RunInterrupted(signum, trainer.global_step, None)
