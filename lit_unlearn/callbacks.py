"""Callbacks and plugins that keep runs safe: atomic checkpoints, an always-fresh last.ckpt, the collapse guard."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.utilities.cloud_io import get_filesystem
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.plugins.io import TorchCheckpointIO


class AtomicCheckpointIO(TorchCheckpointIO):
    """Writes each checkpoint to ``<name>.tmp`` in the same directory, fsyncs it, then ``os.replace``s it.

    A kill during the write leaves the previous checkpoint intact and at most a stray ``.tmp`` file, never a
    truncated ``.ckpt``. Remote (fsspec) paths fall back to Lightning's writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path, storage_options=None) -> None:
        fs = get_filesystem(path)
        if type(fs).__name__ != "LocalFileSystem":
            return super().save_checkpoint(checkpoint, path, storage_options)
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        try:
            with open(tmp, "wb") as f:
                torch.save(checkpoint, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise


class CollapseGuard(L.Callback):
    """Stops unlearning when it collapses, and puts back the last good adapter weights.

    It trips when

    - the training loss, or any trainable weight, is non-finite (checked after every step), or
    - after a validation, ``retain_metric`` (default ``val/retain/acc``) is below ``retain_floor`` (above it
      when ``higher_is_better`` is false, e.g. for ``val/retain/nll``). With ``relative: true`` the floor is a
      fraction of the metric's value at the start of fit (e.g. 0.9 = "keep 90% of retain accuracy").

    "Good" weights are the trainable weights at the start of fit and after every validation that passed the
    floor. On a trip it restores them, stops the trainer, prints why, and records the event on the module
    (``pl_module.collapse_events``), which ``metrics.json`` carries.
    """

    def __init__(self, retain_metric: str = "val/retain/acc", retain_floor: float | None = None,
                 higher_is_better: bool = True, relative: bool = False, check_finite: bool = True):
        """
        Args:
            retain_metric: logged metric to watch after each validation.
            retain_floor: the floor (absolute, or a fraction of the start value with ``relative``); null: no floor.
            higher_is_better: false for metrics such as NLL, where the guard trips above the threshold.
            relative: read ``retain_floor`` as a fraction of the metric's value when fit starts.
            check_finite: trip on a non-finite loss or weight.
        """
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
        event = {"step": trainer.global_step, "reason": reason, "restored_step": self._good_step}
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
        self._snapshot(trainer, pl_module)
        self._threshold = self.retain_floor
        if self.retain_floor is not None and self.relative:
            start = getattr(pl_module, "last_eval", {})
            split, _, key = self.retain_metric.removeprefix("val/").partition("/")
            if split not in start or key not in start[split]:
                raise ValueError(f"CollapseGuard relative floor needs {self.retain_metric} evaluated before fit "
                                 "(keep --eval_before true)")
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
        if value is None:
            return
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
