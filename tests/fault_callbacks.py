"""Callbacks that inject faults into a real run (not tests themselves): loaded by ``tests/test_faults.py`` through
``--trainer.callbacks+=fault_callbacks.<Name>``, so the run goes through the real CLI and signal handling."""

from __future__ import annotations

import os
import signal
import time

import lightning as L


class SignalAtStep(L.Callback):
    """Sends ``signum`` to this process when the training batch of optimizer step ``at_step`` starts: the signal
    arrives in the middle of a step, as a scheduler's SIGTERM or a Ctrl-C would."""

    def __init__(self, signum: int = 15, at_step: int = 2):
        self.signum, self.at_step = signum, at_step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.at_step:
            os.kill(os.getpid(), self.signum)


class SlowSteps(L.Callback):
    """Makes every training step take at least ``seconds`` (a fit that is still running when another starts); with
    ``$HOLD_UNTIL`` naming a file, the first step also waits (at most 300 s) until that file exists, so the fit is
    still running however slowly a second process starts on a loaded machine."""

    def __init__(self, seconds: float = 0.5):
        self.seconds = seconds

    def on_train_batch_end(self, trainer, *args):
        hold = os.environ.get("HOLD_UNTIL")
        deadline = time.time() + 300
        while hold and not os.path.exists(hold) and time.time() < deadline:
            time.sleep(0.1)
        time.sleep(self.seconds)


class DieAtStep(L.Callback):
    """Ends the process at once, like ``kill -9``, when optimizer step ``at_step`` has finished: no handler, no
    cleanup, nothing written that was not written before."""

    def __init__(self, at_step: int = 3):
        self.at_step = at_step

    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == self.at_step:
            os._exit(137)
